"""Shared fixtures: small generated tables, written by the tests themselves."""

from __future__ import annotations

import datetime as dt
import io
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from raymm.config import RaymmConfig

# No test may reach a model hub: models come from PyPI packages or are built by the test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Ray Train's controller polls its workers every 2 s; a worker's report, the end of a run and a
# failed worker are seen only then, and raymm's rank 0 waits for the previous epoch's report to be
# taken before it writes the next checkpoint. At 0.25 s a tiny run's epochs follow each other
# 0.25 s apart instead of up to 2 s. The driver passes the variable on to the controller and the
# workers (Ray Train's ENV_VARS_TO_PROPAGATE); the Ray nodes a test starts inherit it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")

EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: int = 16) -> bytes:
    """A small valid PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def wav_bytes(freq: float = 440.0, seconds: float = 0.5, rate: int = 16000) -> bytes:
    """A small valid mono WAV of a sine tone."""
    import soundfile

    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    soundfile.write(buffer, 0.3 * np.sin(2 * np.pi * freq * t), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def make_items(n: int = 6) -> pa.Table:
    """n items with text, a PNG, a WAV and tags; item 1 has no image, item 2 no audio."""
    return pa.table(
        {
            "item_id": [f"i{k}" for k in range(n)],
            "text": [f"item number {k}" for k in range(n)],
            "image": [None if k == 1 else png_bytes((40 * k % 255, 80, 120)) for k in range(n)],
            "audio": [None if k == 2 else wav_bytes(220.0 * (k + 1)) for k in range(n)],
            "tags": [[f"genre/g{k % 2}"] for k in range(n)],
            "created_at": pa.array([EPOCH] * n, pa.timestamp("ms", tz="UTC")),
        }
    )


def make_interactions(n: int = 40, n_items: int = 6, start_hour: int = 0) -> pa.Table:
    """n time-ordered interactions of 4 users over n_items items, one per hour."""
    return pa.table(
        {
            "user_id": [f"u{k % 4}" for k in range(n)],
            "item_id": [f"i{k % n_items}" for k in range(n)],
            "event": [("view", "click", "like", "purchase", "play", "skip")[k % 6] for k in range(n)],
            "ts": pa.array(
                [EPOCH + dt.timedelta(hours=start_hour + k) for k in range(n)], pa.timestamp("ms", tz="UTC")
            ),
            "event_id": [f"e{start_hour + k}" for k in range(n)],
        }
    )


@pytest.fixture
def items() -> pa.Table:
    return make_items()


@pytest.fixture
def interactions() -> pa.Table:
    return make_interactions()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the session's Ray instance, directly or through a fixture."""
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray instance (2 CPUs) shared by every test that needs Ray."""
    import ray

    from raymm.config import RayConfig
    from raymm.runtime import init_ray

    init_ray(RayConfig(num_cpus=2))
    yield
    ray.shutdown()


# --- one dataset and one trained model per test session ------------------------------------------

#: Ranker settings small enough for the tiny facet dataset.
RANK_OVERRIDES = ("rank.epochs=3", "rank.batch_size=256", "rank.hidden_dims=[64]", "rank.retriever_top_n=60")


@dataclass
class Trained:
    """The session's facet dataset, its config, a two-tower artifact and a copy with a ranker."""

    root: Path
    data: Path
    features: Path
    config: RaymmConfig
    model: Path
    ranked: Path

    def evaluate_argv(self, model: Path) -> list[str]:
        """``raymm evaluate`` arguments for ``model`` on the session's data and features."""
        return ["evaluate", "--data", str(self.data), "--features", str(self.features), "--model", str(model)]


def shared_config(out: Path, *overrides: str) -> RaymmConfig:
    """The config the session's model was trained with (``out`` for its outputs), plus ``overrides``."""
    from tests.fixtures import small_model_config

    return small_model_config(
        out, "train.epochs=3", "train.patience=5", "evaluate.ks=[5,10,20]", *RANK_OVERRIDES, *overrides
    )


@pytest.fixture(scope="session")
def facet_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny synthetic dataset and facet features (:func:`tests.fixtures.facet_dataset`)."""
    from tests.fixtures import facet_dataset

    return facet_dataset(tmp_path_factory.mktemp("facets"))


@pytest.fixture(scope="session")
def trained(
    facet_data: tuple[Path, Path], ray_session: None, tmp_path_factory: pytest.TempPathFactory
) -> Trained:
    """One two-tower artifact (3 epochs) and one copy with a ranker, shared by the whole session.

    Tests that change an artifact copy it first.
    """
    from raymm.training.rank_trainer import train_ranker
    from raymm.training.trainer import train

    root = tmp_path_factory.mktemp("trained")
    data, features = facet_data
    config = shared_config(root)
    train(config, str(data), str(features), str(root / "model"))
    shutil.copytree(root / "model", root / "ranked")
    train_ranker(config, str(data), str(features), str(root / "ranked"), run=config.train.run)
    return Trained(root, data, features, config, root / "model", root / "ranked")


S3_BUCKET = "raymm-test"


def s3_environment(endpoint: str) -> dict[str, str]:
    """The environment that points boto3, pyarrow and Ray's storage at the S3 API on ``endpoint``
    (a moto server on loopback) with test credentials."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API on loopback (moto's server mode) with bucket :data:`S3_BUCKET`; yields its URL.

    pyarrow's ``FileSystem.from_uri`` (what :func:`raymm.data.io.resolve` calls) reads the endpoint
    from ``AWS_ENDPOINT_URL`` (``http://`` selects plain HTTP), so ``s3://`` URIs reach this server
    with dummy credentials; the variables stay set until the session ends. Nothing leaves 127.0.0.1:
    ``AWS_EC2_METADATA_DISABLED`` stops the SDK from asking the instance metadata service.
    """
    import logging

    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per S3 request otherwise

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3_environment(endpoint).items():
            patch.setenv(name, value)
        admin = pafs.S3FileSystem(
            access_key="testing",
            secret_key="testing",
            region="us-east-1",
            endpoint_override=endpoint,
            allow_bucket_creation=True,
        )
        admin.create_dir(S3_BUCKET)
        try:
            yield endpoint
        finally:
            server.stop()


@pytest.fixture
def s3_dir(s3_endpoint: str) -> str:
    """A fresh ``s3://`` prefix in the loopback bucket for one test."""
    return f"s3://{S3_BUCKET}/{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def encoded_model(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A two-tower artifact trained on features from the real encoders (MiniLM text,
    EfficientNet-Lite0 images at 64 px, log-mel statistics) of a tiny synthetic dataset, so that
    serving can encode new items and text queries exactly as the catalog's were."""
    from raymm.config import load_config
    from raymm.data.synth import synthesize
    from raymm.features.pipeline import extract
    from raymm.training.trainer import train

    root = tmp_path_factory.mktemp("encoded")
    config = load_config(
        Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml",
        [
            f"out={root}",
            "synth.size=tiny",
            "extract.image.image_size=64",
            "train.epochs=4",
            "train.batch_size=128",
            "model.align.shared_dim=32",
            "model.towers.embed_dim=32",
        ],
    )
    data, features, model = root / "data", root / "features", root / "model"
    synthesize(config.synth, str(data), seed=0, progress=False)
    extract(config, str(data), str(features), progress=False)
    train(config, str(data), str(features), str(model))
    return Trained(root, data, features, config, model, model)


@pytest.fixture(scope="session")
def kcat() -> str:
    """The path of kcat (librdkafka's command-line client), the independent client of the interop
    tests. ``make test`` installs it where it can; in CI (``CI`` set) a missing kcat fails the test
    instead of skipping it, so the interop tests cannot silently stop running."""
    path = shutil.which("kcat")
    if path is None:
        message = "kcat is not installed: the interop tests cannot run (apt-get install -y kcat, or make test as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
