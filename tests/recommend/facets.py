"""Facet encoders: the test double of a real encoder for the facet dataset (tests/fixtures.py).

The session's model was trained on features that are noisy one-hots of the facets each modality
shows (text: genre, style, topic; image: style, palette; audio: genre, mood), not on the output of
a real encoder. :class:`FacetEncoder` makes the same one-hots, without the noise, from raw
content: text by finding the synthetic benchmark's own phrases in it (so a sentence written by
:func:`raymm.data.synth_media.render_text` reads back as its facets), image and audio from a
small JSON "facet card" (``{"style": "round", "palette": "red"}``) standing in for the media.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from raymm.data.synth_media import FACETS, GENRE_PHRASES, STYLE_PHRASES, TOPIC_PHRASES
from raymm.features.base import BatchEncoder, InputDecodeError
from tests.fixtures import SHOWN

FACET_VALUES = {facet.name: facet.values for facet in FACETS}
PHRASES = {"genre": GENRE_PHRASES, "style": STYLE_PHRASES, "topic": TOPIC_PHRASES}


def facet_card(**values: str) -> bytes:
    """The stand-in for an image or a clip that shows these facet values."""
    return json.dumps(values).encode()


def read_text_facets(text: str) -> dict[str, str]:
    """The genre, style and topic a text names: per facet the value with the longest phrase found
    in it ("the history of computers" is technology, not history)."""
    lowered = text.lower()
    found = {}
    for facet, phrases in PHRASES.items():
        matches = [(len(p), value) for value, options in phrases.items() for p in options if p in lowered]
        if matches:
            found[facet] = max(matches)[1]
    return found


class FacetEncoder(BatchEncoder):
    """One-hots of the facets ``modality`` shows, in the facet dataset's column layout."""

    pooling = "one_hot"

    def __init__(self, modality: str) -> None:
        self.modality = modality
        self.facets = SHOWN[modality]
        self.dim = sum(len(FACET_VALUES[f]) for f in self.facets)
        self.encoder_id = f"facets:{modality}"
        self.revision = "facets-v1"

    def decode(self, value: Any) -> dict[str, str]:
        if self.modality == "text":
            if not isinstance(value, str) or not value.strip():
                raise InputDecodeError(f"text: expected a non-blank string, got {value!r}")
            return read_text_facets(value)
        try:
            card = json.loads(value)
        except (TypeError, ValueError) as exc:
            raise InputDecodeError(f"{self.modality}: not a facet card: {exc}") from exc
        return {f: card[f] for f in self.facets if f in card}

    def embed(self, decoded: list[dict[str, str]]) -> np.ndarray:
        out = np.zeros((len(decoded), self.dim), dtype=np.float32)
        for row, values in enumerate(decoded):
            offset = 0
            for facet in self.facets:
                if facet in values:
                    out[row, offset + FACET_VALUES[facet].index(values[facet])] = 1.0
                offset += len(FACET_VALUES[facet])
        return out
