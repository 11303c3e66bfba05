"""Rendering of the synthetic benchmark's media: a sentence, a PNG and a WAV from an item's facets.

Each modality shows only some facets (:data:`FACETS` says which), so no single modality knows
everything about an item:

======== ======== ============= ==================================================
facet    values   shown in      how
======== ======== ============= ==================================================
genre    8        text, audio   a phrase; tempo, timbre, envelope and drums
style    6        text, image   a phrase; the kind of shape drawn
mood     5        audio         pitch register and scale (major, minor, dissonant...)
topic    8        text          a phrase
palette  6        image         the hue family of the shapes
======== ======== ============= ==================================================

Every renderer takes the item's full facet row and its own :class:`numpy.random.Generator`, and
first passes the facets it shows through :func:`shown_values`, which replaces each with a random
value with probability ``noise``; the same corruption applies to every modality.
"""

from __future__ import annotations

import colorsys
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import soundfile
from PIL import Image, ImageDraw

GENRE, STYLE, MOOD, TOPIC, PALETTE = range(5)

# Phrases per facet value. Text never names a mood or a colour (test_synth checks it).
GENRE_PHRASES: dict[str, tuple[str, ...]] = {
    "jazz": (
        "jazz",
        "a swinging jazz tune",
        "bebop-flavoured jazz",
        "jazz improvisation with a walking bass",
    ),
    "rock": ("rock", "a guitar-driven rock track", "garage rock", "a classic rock anthem"),
    "electronic": ("electronic music", "synth-heavy electronica", "a club-ready electronic cut", "techno"),
    "classical": ("classical music", "a chamber piece", "an orchestral work", "a sonata for strings"),
    "folk": ("folk", "an acoustic folk song", "fingerpicked folk guitar", "traditional folk music"),
    "hiphop": ("hip-hop", "a boom-bap hip-hop beat", "rap over a sampled loop", "a hip-hop instrumental"),
    "ambient": ("ambient music", "an ambient soundscape", "slowly drifting drones", "minimal ambient pads"),
    "metal": ("metal", "a heavy metal track", "thrash metal riffs", "doom metal with pounding drums"),
}
STYLE_PHRASES: dict[str, tuple[str, ...]] = {
    "round": ("round shapes", "circles and discs", "bubble-like forms", "rings and round blobs"),
    "blocky": ("square blocks", "a grid of boxes", "boxy tiles", "rectangular blocks"),
    "angular": ("sharp triangles", "angular shards", "pointed wedge shapes", "jagged pyramids"),
    "striped": ("bold stripes", "parallel bands", "straight ruled lines", "a striped pattern"),
    "dotted": ("tiny dots", "scattered specks", "a pointillist spray of points", "a field of small dots"),
    "wavy": ("wavy lines", "rippling curves", "undulating ribbons", "sinuous waves"),
}
TOPIC_PHRASES: dict[str, tuple[str, ...]] = {
    "travel": ("travel", "a journey across distant countries", "backpacking trips", "road trips and trains"),
    "cooking": ("cooking", "recipes for a family dinner", "baking bread at home", "street food and spices"),
    "sports": ("sports", "a football match", "training for a marathon", "the last minutes of a final"),
    "science": ("science", "experiments in a physics lab", "how cells divide", "telescopes and planets"),
    "history": ("history", "ancient empires", "a medieval castle siege", "letters from the last century"),
    "nature": ("nature", "forests and mountains", "wild animals in their habitat", "a walk along the coast"),
    "urban": ("city life", "crowded subway platforms", "rooftops and skylines", "night shifts downtown"),
    "technology": ("technology", "building a robot", "the history of computers", "smartphones and apps"),
}
MOOD_NAMES: tuple[str, ...] = ("bright", "melancholic", "tense", "serene", "dreamy")
PALETTE_HUES: dict[str, float] = {
    "red": 0.0,
    "amber": 40.0,
    "green": 120.0,
    "teal": 175.0,
    "blue": 225.0,
    "violet": 280.0,
}


@dataclass(frozen=True)
class Facet:
    """One latent facet: its value names and the modalities that show it."""

    name: str
    values: tuple[str, ...]
    modalities: tuple[str, ...]

    @property
    def cardinality(self) -> int:
        """How many values the facet takes."""
        return len(self.values)


FACETS: tuple[Facet, ...] = (
    Facet("genre", tuple(GENRE_PHRASES), ("text", "audio")),
    Facet("style", tuple(STYLE_PHRASES), ("text", "image")),
    Facet("mood", MOOD_NAMES, ("audio",)),
    Facet("topic", tuple(TOPIC_PHRASES), ("text",)),
    Facet("palette", tuple(PALETTE_HUES), ("image",)),
)
CARDINALITIES: np.ndarray = np.array([facet.cardinality for facet in FACETS], dtype=np.int64)


def shown_values(
    facets: np.ndarray, which: tuple[int, ...], rng: np.random.Generator, noise: float
) -> list[int]:
    """The values of facets ``which`` as a modality shows them: each random with probability ``noise``."""
    chosen = np.asarray(which)
    true = facets[chosen]
    corrupt = rng.random(len(chosen)) < noise
    random = rng.integers(0, CARDINALITIES[chosen])
    return [int(v) for v in np.where(corrupt, random, true)]


# ---------------------------------------------------------------------------------------------- text

_INTROS = (
    "New upload.",
    "Fresh from the catalogue.",
    "A short clip from an independent creator.",
    "Just released.",
    "Another episode in the series.",
    "From the archive.",
    "Here is a new one.",
)
_OUTROS = (
    "Thanks for stopping by.",
    "Part of a longer series.",
    "Comments are open.",
    "Recorded in one take.",
    "Share it with a friend.",
    "More next week.",
)
_ADJECTIVES = ("new", "short", "original", "homemade", "little", "recent", "independent", "experimental")
_SOUND_TEMPLATES = (
    "The soundtrack is {}.",
    "You will hear {}.",
    "Musically it is {}.",
    "It comes with {} in the background.",
    "This {adj} piece is set to {}.",
)
_VISUAL_TEMPLATES = (
    "The artwork shows {}.",
    "Visually it features {}.",
    "The cover is made of {}.",
    "Expect {} on screen.",
    "The {adj} thumbnail is full of {}.",
)
_TOPIC_TEMPLATES = (
    "It is about {}.",
    "The story covers {}.",
    "This {adj} video is all about {}.",
    "The theme is {}.",
    "Topic: {}.",
)
_TEXT_PARTS = (
    (GENRE, GENRE_PHRASES, _SOUND_TEMPLATES),
    (STYLE, STYLE_PHRASES, _VISUAL_TEMPLATES),
    (TOPIC, TOPIC_PHRASES, _TOPIC_TEMPLATES),
)


def _pick(options: tuple[str, ...], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def render_text(facets: np.ndarray, rng: np.random.Generator, noise: float) -> str:
    """A short description that names genre, style and topic in varied words (never mood or palette)."""
    values = shown_values(facets, tuple(part[0] for part in _TEXT_PARTS), rng, noise)
    sentences = []
    for value, (facet, phrases, templates) in zip(values, _TEXT_PARTS, strict=True):
        phrase = _pick(phrases[FACETS[facet].values[value]], rng)
        sentences.append(_pick(templates, rng).format(phrase, adj=_pick(_ADJECTIVES, rng)))
    order = rng.permutation(len(sentences))
    parts = [sentences[k] for k in order]
    if rng.random() < 0.6:
        parts.insert(0, _pick(_INTROS, rng))
    if rng.random() < 0.4:
        parts.append(_pick(_OUTROS, rng))
    return " ".join(part[0].upper() + part[1:] for part in parts)


# --------------------------------------------------------------------------------------------- image

_Colour = Callable[[], tuple[int, int, int]]


def _centres(rng: np.random.Generator, size: int, low: int, high: int) -> np.ndarray:
    count = int(rng.integers(low, high + 1))
    return rng.uniform(0, size, (count, 2))


def _paint_round(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, colour: _Colour) -> None:
    for x, y in _centres(rng, size, 3, 8):
        r = rng.uniform(0.08, 0.22) * size
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour())


def _paint_blocky(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, colour: _Colour) -> None:
    for x, y in _centres(rng, size, 3, 8):
        r = rng.uniform(0.08, 0.22) * size
        draw.rectangle((x - r, y - r, x + r, y + r), fill=colour())


def _paint_angular(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, colour: _Colour) -> None:
    for x, y in _centres(rng, size, 3, 8):
        r = rng.uniform(0.1, 0.28) * size
        angles = rng.uniform(0, 2 * np.pi) + np.array([0.0, 2.09, 4.19]) + rng.normal(0, 0.15, 3)
        draw.polygon([(x + r * np.cos(a), y + r * np.sin(a)) for a in angles], fill=colour())


def _paint_striped(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, colour: _Colour) -> None:
    angle = rng.uniform(0, np.pi)
    along = np.array([np.cos(angle), np.sin(angle)]) * 2 * size
    normal = np.array([-np.sin(angle), np.cos(angle)])
    spacing = rng.uniform(0.12, 0.25) * size
    width = max(1, int(spacing * rng.uniform(0.3, 0.6)))
    centre = np.array([size / 2, size / 2]) + rng.uniform(-spacing, spacing, 2)
    for offset in np.arange(-size, size, spacing):
        middle = centre + offset * normal
        start, end = middle - along, middle + along
        draw.line((start[0], start[1], end[0], end[1]), fill=colour(), width=width)


def _paint_dotted(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, colour: _Colour) -> None:
    for x, y in _centres(rng, size, 25, 70):
        r = max(1.0, rng.uniform(0.015, 0.04) * size)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour())


def _paint_wavy(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, colour: _Colour) -> None:
    xs = np.linspace(-2, size + 2, 48)
    width = max(2, size // 20)
    for _, y0 in _centres(rng, size, 3, 6):
        amplitude = rng.uniform(0.05, 0.15) * size
        wavelength = rng.uniform(0.3, 0.8) * size
        ys = y0 + amplitude * np.sin(2 * np.pi * xs / wavelength + rng.uniform(0, 2 * np.pi))
        draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=colour(), width=width)


# Indexed by the style facet's value: the order of STYLE_PHRASES.
_PAINTERS: tuple[Callable[[ImageDraw.ImageDraw, np.random.Generator, int, _Colour], None], ...] = (
    _paint_round,
    _paint_blocky,
    _paint_angular,
    _paint_striped,
    _paint_dotted,
    _paint_wavy,
)


def _rgb(hue_degrees: float, saturation: float, value: float) -> tuple[int, int, int]:
    red, green, blue = colorsys.hsv_to_rgb((hue_degrees % 360.0) / 360.0, saturation, value)
    return int(red * 255), int(green * 255), int(blue * 255)


def render_image(facets: np.ndarray, rng: np.random.Generator, noise: float, size: int) -> bytes:
    """A ``size`` x ``size`` RGB PNG: shapes of the item's style in hues of its palette, plus noise."""
    style, palette = shown_values(facets, (STYLE, PALETTE), rng, noise)
    hue = PALETTE_HUES[FACETS[PALETTE].values[palette]]
    background = _rgb(rng.uniform(0, 360), rng.uniform(0.0, 0.15), rng.uniform(0.15, 0.9))

    def colour() -> tuple[int, int, int]:
        return _rgb(hue + rng.normal(0, 10), rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))

    image = Image.new("RGB", (size, size), background)
    _PAINTERS[style](ImageDraw.Draw(image), rng, size, colour)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, rng.uniform(3, 10), (size, size, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------- audio


@dataclass(frozen=True)
class _GenreSound:
    """How a genre sounds: notes per second, harmonics, note envelope, drum pattern, effects."""

    note_rate: float
    harmonics: tuple[float, ...]
    envelope: str  # sustain | gate | swell | pluck
    drums: tuple[str, ...] = ()  # cycled over note onsets: kick | snare | hat | rest
    distortion: float = 0.0
    vibrato: float = 0.0
    wind: float = 0.0  # level of a low-passed noise bed under the notes


@dataclass(frozen=True)
class _MoodSound:
    """How a mood sounds: the MIDI note the register starts at and the scale's intervals."""

    base_midi: int
    scale: tuple[int, ...]


def _decaying(count: int, power: float, odd_only: bool = False) -> tuple[float, ...]:
    return tuple(0.0 if odd_only and k % 2 == 0 else 1.0 / k**power for k in range(1, count + 1))


# Indexed by the genre facet's value: the order of GENRE_PHRASES. Percussion, envelope and noise
# bed differ in every pair, since pitch-independent cues are what keeps genre apart from mood.
_GENRE_SOUNDS: tuple[_GenreSound, ...] = (
    _GenreSound(3.5, _decaying(5, 2.0, odd_only=True), "sustain", ("hat", "rest", "hat")),  # jazz
    _GenreSound(4.0, _decaying(9, 1.0, odd_only=True), "sustain", ("kick", "snare")),  # rock
    _GenreSound(8.0, _decaying(10, 1.0), "gate", ("kick", "hat", "hat", "hat")),  # electronic
    _GenreSound(2.0, _decaying(8, 1.5), "swell", vibrato=0.006),  # classical: bowed strings
    _GenreSound(3.0, _decaying(8, 1.0), "pluck"),  # folk: plucked strings
    _GenreSound(2.5, (1.0, 0.3), "sustain", ("kick", "rest", "snare", "rest")),  # hiphop: sine bass
    _GenreSound(0.8, (1.0, 0.5, 0.0, 0.25), "swell", wind=0.3),  # ambient: slow pads over wind
    _GenreSound(
        6.0, _decaying(10, 1.0), "sustain", ("kick", "snare", "kick", "hat"), distortion=4.0
    ),  # metal
)
# Indexed by the mood facet's value: the order of MOOD_NAMES.
_MOOD_SOUNDS: tuple[_MoodSound, ...] = (
    _MoodSound(70, (0, 2, 4, 5, 7, 9, 11)),  # bright: high, major
    _MoodSound(52, (0, 2, 3, 5, 7, 8, 10)),  # melancholic: low-middle, natural minor
    _MoodSound(61, (0, 1, 6, 7, 11)),  # tense: middle, semitones and tritones
    _MoodSound(43, (0, 2, 4, 7, 9)),  # serene: low, major pentatonic
    _MoodSound(79, (0, 2, 4, 6, 8, 10)),  # dreamy: very high, whole-tone
)


def _envelope(kind: str, position: np.ndarray) -> np.ndarray:
    """Amplitude over a note; ``position`` runs from 0 to 1 within each note."""
    if kind == "gate":
        return np.clip(position / 0.02, 0, 1) * np.clip((0.5 - position) / 0.02, 0, 1)
    if kind == "swell":
        return np.sin(np.pi * position)
    if kind == "pluck":
        return np.exp(-6.0 * position) * np.clip(position / 0.005, 0, 1)
    return np.clip(position / 0.05, 0, 1) * (1 - 0.3 * position) * np.clip((1 - position) / 0.05, 0, 1)


def _noise_burst(kind: str, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One 60 ms percussive hit: low thump (kick), middle noise (snare) or high hiss (hat)."""
    length = int(0.06 * sample_rate)
    time = np.arange(length) / sample_rate
    hit = rng.normal(0, 1, length) * np.exp(-time / 0.012)
    if kind == "kick":
        return np.sin(2 * np.pi * 55 * time) * np.exp(-time / 0.03) + np.convolve(
            hit, np.ones(24) / 6, "same"
        )
    if kind == "hat":
        return np.diff(hit, prepend=0.0)
    return np.convolve(hit, np.ones(3) / 3, mode="same")


def _drums(
    pattern: tuple[str, ...], length: int, period: int, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """Percussion on the note onsets, cycling through ``pattern``."""
    track = np.zeros(length + int(0.06 * sample_rate))
    # Sorted, not set order: a set of strings iterates in hash order, which changes per process,
    # and the bursts draw from ``rng`` in this order.
    hits = {kind: _noise_burst(kind, sample_rate, rng) for kind in sorted(set(pattern) - {"rest"})}
    for beat, onset in enumerate(range(0, length, period)):
        kind = pattern[beat % len(pattern)]
        if kind != "rest":
            track[onset : onset + len(hits[kind])] += hits[kind]
    return track[:length]


def render_audio(facets: np.ndarray, rng: np.random.Generator, noise: float, sample_rate: int) -> bytes:
    """A mono 16-bit WAV of 1-3 s: a melody in the mood's register and scale, played the genre's way."""
    genre, mood = shown_values(facets, (GENRE, MOOD), rng, noise)
    sound, tonality = _GENRE_SOUNDS[genre], _MOOD_SOUNDS[mood]
    length = round(rng.uniform(1.0, 3.0) * sample_rate)
    period = max(1, int(sample_rate / (sound.note_rate * rng.uniform(0.9, 1.1))))
    n_notes = -(-length // period)
    scale = np.asarray(tonality.scale)
    root = tonality.base_midi + int(rng.integers(-2, 3))
    midi = root + scale[rng.integers(0, len(scale), n_notes)]
    samples = np.arange(length)
    frequency = 440.0 * 2.0 ** ((midi[samples // period] - 69) / 12.0)
    if sound.vibrato:
        frequency = frequency * (1 + sound.vibrato * np.sin(2 * np.pi * 5.5 * samples / sample_rate))
    phase = 2 * np.pi * np.cumsum(frequency) / sample_rate
    tone = np.zeros(length)
    for k, amplitude in enumerate(sound.harmonics, start=1):
        if amplitude:
            # Harmonics above Nyquist would alias into a different spectrum; leave them out.
            tone += amplitude * np.sin(k * phase) * (k * frequency < 0.45 * sample_rate)
    tone *= _envelope(sound.envelope, (samples % period) / period)
    if sound.distortion:
        tone = np.tanh(sound.distortion * tone) / np.tanh(sound.distortion)
    tone /= max(float(np.abs(tone).max()), 1e-9)
    mix = tone
    if sound.drums:
        mix = mix + 0.8 * _drums(sound.drums, length, period, sample_rate, rng)
    if sound.wind:
        wind = np.convolve(rng.normal(0, 1, length), np.ones(32) / 32, mode="same")
        mix = mix + sound.wind * wind / max(float(np.abs(wind).max()), 1e-9)
    mix += rng.normal(0, rng.uniform(0.01, 0.05), length)
    mix *= rng.uniform(0.4, 0.9) / max(float(np.abs(mix).max()), 1e-9)
    buffer = io.BytesIO()
    soundfile.write(buffer, (mix * 32767).astype(np.int16), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
