"""Shared fixtures: small generated tables, written by the tests themselves."""

from __future__ import annotations

import datetime as dt
import io
import os
import socket
import uuid
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest

# No test may reach a model hub: models come from PyPI packages or are built by the test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray instance (2 CPUs) shared by every test that needs Ray."""
    import ray

    from raymm.config import RayConfig
    from raymm.runtime import init_ray

    init_ray(RayConfig(num_cpus=2))
    yield
    ray.shutdown()


S3_BUCKET = "raymm-test"


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
        for name, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "NO_PROXY": "127.0.0.1",
            "no_proxy": "127.0.0.1",
        }.items():
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
