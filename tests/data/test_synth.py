"""The synthetic benchmark: identical bytes per seed, decodable media, clean splits, facets where designed."""

from __future__ import annotations

import datetime as dt
import io
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import soundfile
import torch
import torchaudio
from PIL import Image

from raymm.config import MissingRates, SynthConfig
from raymm.data import synth
from raymm.data.dataset import load_dataset
from raymm.data.schema import EVENT_KINDS
from raymm.data.synth import synthesize
from raymm.data.synth_media import FACETS
from raymm.errors import ConfigError
from tests.probes import ridge_probe_accuracy

SEED = 7
MISSING = 0.3
FACET_NAMES = [facet.name for facet in FACETS]
INTERACTION_TABLES = ("train", "validation", "test", "cold_start", "stream")


def _tiny_config(**overrides: object) -> SynthConfig:
    missing = MissingRates(text=MISSING, image=MISSING, audio=MISSING)
    return SynthConfig.model_validate({"size": "tiny", "missing": missing, **overrides})


def _parquet_bytes(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.glob("*.parquet"))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny dataset (30% of each modality missing) shared by this module's tests."""
    path = tmp_path_factory.mktemp("synth") / "tiny"
    synthesize(_tiny_config(), str(path), SEED, progress=False)
    return path


# ------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_parquet_bytes_and_another_seed_differs(tiny: Path, tmp_path: Path) -> None:
    synthesize(_tiny_config(), str(tmp_path / "again"), SEED, progress=False)
    synthesize(_tiny_config(), str(tmp_path / "other"), SEED + 1, progress=False)
    expected = _parquet_bytes(tiny)
    assert set(expected) == {
        f"{name}.parquet"
        for name in (
            "items",
            "train",
            "validation",
            "test",
            "cold_items",
            "cold_start",
            "stream",
            "facets",
            "oracle_users",
        )
    }
    assert _parquet_bytes(tmp_path / "again") == expected
    assert (tmp_path / "again" / "dataset.json").read_bytes() == (tiny / "dataset.json").read_bytes()
    other = _parquet_bytes(tmp_path / "other")
    assert other["items.parquet"] != expected["items.parquet"]
    assert other["train.parquet"] != expected["train.parquet"]


def test_audio_is_identical_across_processes_with_other_hash_seeds() -> None:
    """Rendering must not depend on PYTHONHASHSEED (set iteration order of strings does)."""
    import hashlib
    import os
    import subprocess
    import sys

    from raymm.data.synth_media import _GENRE_SOUNDS

    # A genre whose sound has two or more kinds of drum hit: each kind draws its burst from rng.
    genre = next(i for i, sound in enumerate(_GENRE_SOUNDS) if len(set(sound.drums) - {"rest"}) > 1)
    script = (
        "import hashlib, numpy as np\n"
        "from raymm.data.synth import _rng, _ITEM_STREAM\n"
        "from raymm.data.synth_media import render_audio\n"
        f"audio = render_audio(np.array([{genre}, 0, 1, 0, 0]), _rng(0, _ITEM_STREAM, 7, 2), 0.0, 16000)\n"
        "print(hashlib.sha256(audio).hexdigest())\n"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": str(hash_seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for hash_seed in range(8)
    }
    assert len(digests) == 1, digests
    assert len(next(iter(digests))) == len(hashlib.sha256().hexdigest())


def test_config_seed_overrides_the_seed_argument(tmp_path: Path) -> None:
    small = {"n_items": 30, "n_users": 8, "events_per_user": 5}
    synthesize(_tiny_config(seed=3, **small), str(tmp_path / "a"), 999, progress=False)
    synthesize(_tiny_config(**small), str(tmp_path / "b"), 3, progress=False)
    assert _parquet_bytes(tmp_path / "a") == _parquet_bytes(tmp_path / "b")


def test_chunked_items_writing_gives_the_same_tables(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Force the large-catalogue path (items.parquet written chunk by chunk) with small chunks.
    monkeypatch.setattr(synth, "_IN_MEMORY_ITEMS_BYTES", 0)
    monkeypatch.setattr(synth, "CHUNK_ITEMS", 64)
    manifest = synthesize(_tiny_config(), str(tmp_path / "chunked"), SEED, progress=False)
    chunked = pq.ParquetFile(tmp_path / "chunked" / "items.parquet")
    assert chunked.metadata.num_row_groups == 4
    assert chunked.read().equals(pq.read_table(tiny / "items.parquet"))
    expected = {k: v for k, v in _parquet_bytes(tiny).items() if k != "items.parquet"}
    assert {k: v for k, v in _parquet_bytes(tmp_path / "chunked").items() if k != "items.parquet"} == expected
    assert manifest["counts"]["items"] == 240
    assert load_dataset(str(tmp_path / "chunked")).manifest["counts"] == manifest["counts"]


def test_negative_seed_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="-1"):
        synthesize(_tiny_config(), str(tmp_path / "x"), -1, progress=False)


# ------------------------------------------------------------------------------------------- media


def test_media_decode_at_the_configured_size_and_rate(tiny: Path) -> None:
    items = pq.read_table(tiny / "items.parquet")
    images = [b for b in items.column("image").to_pylist() if b is not None]
    clips = [b for b in items.column("audio").to_pylist() if b is not None]
    assert images and clips
    for blob in images:
        with Image.open(io.BytesIO(blob)) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (64, 64)
    for blob in clips:
        info = soundfile.info(io.BytesIO(blob))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 1.0 <= info.duration <= 3.0
    for text in items.column("text").drop_null().to_pylist():
        assert re.fullmatch(r"[A-Z][^.]*\.( [A-Z][^.]*\.)+", text), text


def test_missing_modalities_are_null_at_about_the_configured_rate(tiny: Path) -> None:
    items = pq.read_table(tiny / "items.parquet")
    manifest = load_dataset(str(tiny), tables=()).manifest
    for modality in ("text", "image", "audio"):
        column = items.column(modality)
        assert 0.2 <= column.null_count / len(column) <= 0.4, modality  # 240 items: +-3.3 sd
        assert manifest["missing"][modality] == column.null_count
        assert pc.min(pc.binary_length(column.drop_null())).as_py() > 0


def test_text_never_names_a_mood_or_a_palette(tiny: Path) -> None:
    words = {
        w
        for t in pq.read_table(tiny / "items.parquet").column("text").drop_null().to_pylist()
        for w in re.findall(r"[a-z]+", t.lower())
    }
    hidden = set(FACETS[FACET_NAMES.index("mood")].values) | set(FACETS[FACET_NAMES.index("palette")].values)
    assert words.isdisjoint(hidden)


def test_tags_name_the_true_genre_style_and_creator(tiny: Path) -> None:
    items = pq.read_table(tiny / "items.parquet")
    facets = pq.read_table(tiny / "facets.parquet")
    assert items.column("item_id").equals(facets.column("item_id"))
    genre_values, style_values = FACETS[0].values, FACETS[1].values
    present = 0
    for tags, genre, style, creator in zip(
        items.column("tags").to_pylist(),
        facets.column("genre").to_pylist(),
        facets.column("style").to_pylist(),
        facets.column("creator").to_pylist(),
        strict=True,
    ):
        assert tags is None or tags, "an item without tags has null, not []"
        allowed = {f"genre/{genre_values[genre]}", f"style/{style_values[style]}", f"creator/c{creator:05d}"}
        assert set(tags or []) <= allowed
        present += len(tags or [])
    assert 0.7 <= present / (3 * items.num_rows) <= 0.9


# ------------------------------------------------------------------------------------ interactions


def test_splits_keep_cold_items_out_of_training_and_time_in_order(tiny: Path) -> None:
    dataset = load_dataset(str(tiny))
    tables = dataset.tables
    cold = set(tables["cold_items"].column("item_id").to_pylist())
    assert len(cold) == round(0.1 * 240)
    all_items = set(dataset.items.column("item_id").to_pylist())
    for name in ("train", "validation", "test"):
        assert cold.isdisjoint(tables[name].column("item_id").to_pylist()), name
    assert tables["cold_start"].num_rows > 0
    assert set(tables["cold_start"].column("item_id").to_pylist()) <= cold

    def ts(name: str) -> np.ndarray:
        return tables[name].column("ts").cast(pa.int64()).to_numpy()

    for name in INTERACTION_TABLES:
        assert tables[name].num_rows > 0, name
        assert np.all(np.diff(ts(name)) >= 0), f"{name} is not time-ordered"
        assert set(tables[name].column("item_id").to_pylist()) <= all_items
        assert set(tables[name].column("event").to_pylist()) <= set(EVENT_KINDS)
    assert ts("train").max() < ts("validation").min()
    assert ts("validation").max() < ts("test").min()
    assert max(ts("test").max(), ts("cold_start").max()) < ts("stream").min()
    assert cold & set(tables["stream"].column("item_id").to_pylist())
    event_ids = pa.concat_arrays([tables[n].column("event_id").combine_chunks() for n in INTERACTION_TABLES])
    assert event_ids.null_count == 0 and len(pc.unique(event_ids)) == len(event_ids)


def test_cold_items_are_created_after_training_and_used_only_later(tiny: Path) -> None:
    dataset = load_dataset(str(tiny))
    validation_from = dt.datetime.fromisoformat(dataset.manifest["splits"]["validation_from"])
    created = dict(
        zip(
            dataset.items.column("item_id").to_pylist(),
            dataset.items.column("created_at").to_pylist(),
            strict=True,
        )
    )
    cold = dataset.tables["cold_items"].column("item_id").to_pylist()
    assert all(created[item] >= validation_from for item in cold)
    for name in ("cold_start", "stream"):
        table = dataset.tables[name]
        for item, when in zip(
            table.column("item_id").to_pylist(), table.column("ts").to_pylist(), strict=True
        ):
            assert when >= created[item]


def test_event_kinds_follow_affinity(tiny: Path) -> None:
    dataset = load_dataset(str(tiny))
    events = pa.concat_tables([dataset.tables[name] for name in INTERACTION_TABLES])
    kinds = events.column("event").to_numpy(zero_copy_only=False)
    assert set(kinds) == set(EVENT_KINDS)
    facets = dataset.tables["facets"]
    values = np.stack([facets.column(name).to_numpy() for name in FACET_NAMES], axis=1)
    rows = values[pc.index_in(events.column("item_id"), facets.column("item_id")).to_numpy()]
    users = pc.index_in(events.column("user_id"), pc.unique(events.column("user_id"))).to_numpy()
    # How typical an event's item is of its user: summed over facets, the share of the user's
    # events whose item has the same value. The user's taste is what makes a value common.
    typicality = np.zeros(len(kinds))
    for f, facet in enumerate(FACETS):
        counts = np.zeros((users.max() + 1, facet.cardinality))
        np.add.at(counts, (users, rows[:, f]), 1.0)
        typicality += counts[users, rows[:, f]] / counts.sum(axis=1)[users]
    high = np.isin(kinds, ["play", "like", "purchase"])
    middle = np.isin(kinds, ["view", "click"])
    skip = kinds == "skip"
    assert typicality[high].mean() > typicality[middle].mean() > typicality[skip].mean()


def test_manifest_describes_the_design(tiny: Path) -> None:
    manifest = load_dataset(str(tiny), tables=()).manifest
    assert (manifest["name"], manifest["source"], manifest["seed"]) == ("synthetic", "raymm data synth", SEED)
    design = manifest["facets"]
    assert {name: design[name]["cardinality"] for name in FACET_NAMES} == {
        "genre": 8,
        "style": 6,
        "mood": 5,
        "topic": 8,
        "palette": 6,
    }
    assert design["mood"]["modalities"] == ["audio"] and design["palette"]["modalities"] == ["image"]
    assert set(manifest["splits"]) >= {"validation_from", "test_from", "stream_from"}


# ------------------------------------------------------------------------------------ facet probes

PROBE_ITEMS = 600


@pytest.fixture(scope="module")
def probe_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, np.ndarray], pa.Table]:
    """Features of 600 items with every modality present, and their true facets."""
    path = tmp_path_factory.mktemp("synth") / "probe"
    config = SynthConfig(
        size="tiny",
        n_items=PROBE_ITEMS,
        n_users=10,
        events_per_user=5,
        missing=MissingRates(text=0.0, image=0.0, audio=0.0),
    )
    synthesize(config, str(path), 11, progress=False)
    items = pq.read_table(path / "items.parquet")
    features = {
        "audio": _audio_features(items.column("audio").to_pylist()),
        "image": _image_features(items.column("image").to_pylist()),
        "text": _text_features(items.column("text").to_pylist()),
    }
    return features, pq.read_table(path / "facets.parquet")


def _audio_features(clips: list[bytes]) -> np.ndarray:
    """Mean and standard deviation over frames of each clip's log-mel spectrogram."""
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=512, hop_length=256, n_mels=48)
    rows = []
    for clip in clips:
        wave, _ = soundfile.read(io.BytesIO(clip), dtype="float32")
        log_mel = torch.log(mel(torch.from_numpy(wave)) + 1e-6)
        rows.append(torch.cat([log_mel.mean(dim=1), log_mel.std(dim=1)]).numpy())
    return np.stack(rows)


def _image_features(images: list[bytes]) -> np.ndarray:
    """A hue histogram (weighted by saturation and value) and the image shrunk to 8x8 pixels."""
    rows = []
    for blob in images:
        with Image.open(io.BytesIO(blob)) as image:
            hsv = np.asarray(image.convert("HSV"), dtype=np.float64) / 255
            small = np.asarray(image.resize((8, 8), Image.Resampling.BILINEAR), dtype=np.float64) / 255
        weight = (hsv[..., 1] * hsv[..., 2]).ravel()
        hue, _ = np.histogram(hsv[..., 0].ravel(), bins=18, range=(0, 1), weights=weight)
        rows.append(np.concatenate([hue / weight.size, small.ravel()]))
    return np.stack(rows)


def _text_features(texts: list[str]) -> np.ndarray:
    """Binary bag of words."""
    tokens = [set(re.findall(r"[a-z]+", text.lower())) for text in texts]
    vocabulary = {word: k for k, word in enumerate(sorted(set().union(*tokens)))}
    features = np.zeros((len(texts), len(vocabulary)))
    for row, words in enumerate(tokens):
        features[row, [vocabulary[w] for w in words]] = 1.0
    return features


PROBES = [
    ("audio", "genre", True),
    ("audio", "mood", True),
    ("audio", "style", False),
    ("audio", "topic", False),
    ("audio", "palette", False),
    ("image", "palette", True),
    ("image", "genre", False),
    ("image", "mood", False),
    ("image", "topic", False),
    ("text", "genre", True),
    ("text", "style", True),
    ("text", "topic", True),
    ("text", "mood", False),
    ("text", "palette", False),
]


@pytest.mark.parametrize(("modality", "facet", "visible"), PROBES)
def test_a_linear_probe_reads_a_facet_only_from_the_modalities_that_show_it(
    probe_data: tuple[dict[str, np.ndarray], pa.Table], modality: str, facet: str, visible: bool
) -> None:
    features, facets = probe_data
    labels = facets.column(facet).to_numpy().astype(np.int64)
    # Items of one creator share facets, so with a creator's items on both sides a probe could guess
    # a hidden facet from the creator's visible ones: hidden facets are probed on held-out creators.
    group = np.arange(len(labels)) if visible else facets.column("creator").to_numpy()
    train = group % 3 != 0
    accuracy = ridge_probe_accuracy(features[modality], labels, train)
    majority = np.bincount(labels[~train]).max() / np.sum(~train)
    chance = max(1.0 / FACETS[FACET_NAMES.index(facet)].cardinality, majority)
    if visible:
        assert accuracy > chance + 0.25, f"{facet} from {modality}: {accuracy:.3f}, chance {chance:.3f}"
    else:
        assert accuracy < chance + 0.15, f"{facet} from {modality}: {accuracy:.3f}, chance {chance:.3f}"


def test_users_favour_facet_values_and_every_facet_is_someones_main_taste(tiny: Path) -> None:
    dataset = load_dataset(str(tiny))
    warm = pa.concat_tables([dataset.tables[name] for name in ("train", "validation", "test")])
    warm = warm.filter(pc.not_equal(warm.column("event"), "skip"))
    facets = dataset.tables["facets"]
    values = np.stack([facets.column(name).to_numpy() for name in FACET_NAMES], axis=1)
    rows = pc.index_in(warm.column("item_id"), facets.column("item_id")).to_numpy()
    users = pc.index_in(warm.column("user_id"), pc.unique(warm.column("user_id"))).to_numpy()
    main_facets, lifts = [], []
    for user in np.unique(users):
        chosen = values[rows[users == user]]
        # Lift of the user's most over-represented value of each facet over its catalogue share.
        lift = [
            np.max(
                np.bincount(chosen[:, f], minlength=facet.cardinality) / len(chosen)
                - np.bincount(values[:, f], minlength=facet.cardinality) / len(values)
            )
            for f, facet in enumerate(FACETS)
        ]
        main_facets.append(int(np.argmax(lift)))
        lifts.append(max(lift))
    assert np.median(lifts) > 0.3
    assert np.all(np.bincount(main_facets, minlength=len(FACETS)) >= 0.08 * len(main_facets))


def test_worker_processes_give_byte_identical_datasets(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 4 item chunks and 3 user blocks, so 2 workers share both the rendering and the sampling.
    monkeypatch.setattr(synth, "CHUNK_ITEMS", 64)
    monkeypatch.setattr(synth, "_BLOCK_CELLS", 240 * 40)
    synthesize(_tiny_config(workers=2), str(tmp_path / "two"), SEED, progress=False)
    synthesize(_tiny_config(workers=1), str(tmp_path / "one"), SEED, progress=False)
    assert _parquet_bytes(tmp_path / "two") == _parquet_bytes(tmp_path / "one")
    # The blocks' size sets the users' random streams, the chunks' size nothing: items match the fixture.
    assert (tmp_path / "two" / "items.parquet").read_bytes() == (tiny / "items.parquet").read_bytes()
