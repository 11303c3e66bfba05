"""Training storage unavailable at checkpoint time: the run's S3 bucket (moto's real S3 API on
loopback) stops answering in the middle of the second epoch's checkpoint, after its directory
was created and before its weights were written. The run fails with an error naming the storage
location, and once the storage is back, the same command resumes from the first epoch's
checkpoint: the half-written one is never taken as valid.

Ray Train's controller records a reported checkpoint (checkpoint_manager_snapshot.json, what a
resumed run reads) when it next polls the workers. The server holds that record's first write
until the storage breaks (or :data:`HOLD_S`), so a worker that writes the next checkpoint before
the previous one is recorded fails this test every time, not only on a loaded machine."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import moto.moto_server.threaded_moto_server as moto_server
import pyarrow.fs as pafs
import pytest

from raymm.training.ray_runner import CHECKPOINT_FILE, TrainingError
from raymm.training.trainer import train
from tests.conftest import s3_environment, shared_config
from tests.fixtures import free_port

BUCKET = "raymm-flaky"
RECORD = "checkpoint_manager_snapshot.json"
#: How long the first write of Ray Train's record waits for the storage to break.
HOLD_S = 5.0
_NO_SUCH_BUCKET = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchBucket</Code>'
    b"<Message>The specified bucket does not exist</Message></Error>"
)


class FlakyS3(moto_server.ThreadedMotoServer):
    """moto's S3 server that, from the first request ``breaks`` matches on, answers every request
    ``404 NoSuchBucket`` (the bucket gone) until :meth:`restore`, once; what it stored stays. The
    first write of Ray Train's record waits until then, at most :data:`HOLD_S`."""

    def __init__(self, port: int, breaks: Callable[[str, str], bool]) -> None:
        super().__init__(ip_address="127.0.0.1", port=port, verbose=False)
        self.breaks = breaks
        self.broken = False
        self.refused: list[str] = []
        self._lock = threading.Lock()
        self._record_held = False
        self._broke = threading.Event()

    def restore(self) -> None:
        with self._lock:
            self.broken = False

    def _server_entry(self) -> None:
        app = moto_server.DomainDispatcherApplication(moto_server.create_backend_app)

        def switch(environ: dict[str, Any], start_response: Any) -> Any:
            request = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}"
            with self._lock:
                hold = not self._record_held and request.endswith(f"/{RECORD}")
                hold = hold and environ["REQUEST_METHOD"] not in ("GET", "HEAD")
                self._record_held = self._record_held or hold
            if hold:
                self._broke.wait(HOLD_S)
            with self._lock:
                if not self.refused and self.breaks(environ["REQUEST_METHOD"], environ["PATH_INFO"]):
                    self.broken = True  # once: after restore() it stays up
                    self._broke.set()
                if self.broken:
                    self.refused.append(request)
                broken = self.broken
            if not broken:
                if "aws-chunked" in environ.get("HTTP_CONTENT_ENCODING", ""):
                    # An anonymous write (the session's Ray workers hold no keys) comes aws-chunked
                    # without the header that has moto decode it, as S3 does; moto stored the framing.
                    environ.setdefault("HTTP_X_AMZ_CONTENT_SHA256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER")
                return app(environ, start_response)
            environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            start_response(
                "404 Not Found",
                [("Content-Type", "application/xml"), ("Content-Length", str(len(_NO_SUCH_BUCKET)))],
            )
            return [_NO_SUCH_BUCKET]

        self._server = moto_server.make_server(
            self._ip_address, self._port, switch, True, request_handler=moto_server.MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()


@pytest.fixture
def flaky_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[FlakyS3]:
    """A FlakyS3 that breaks at the second checkpoint's weights, with the bucket created and the
    AWS environment pointing at it (workers get the endpoint with the pickled filesystem)."""
    checkpoints: list[str] = []

    def second_checkpoint_weights(method: str, path: str) -> bool:
        # the weights, or the temporary name raymm writes them under first
        found = re.search(rf"/(checkpoint_[^/]+)/{re.escape(CHECKPOINT_FILE)}(\.tmp-[0-9a-f]+)?$", path)
        if method != "PUT" or found is None:
            return False
        if found.group(1) not in checkpoints:
            checkpoints.append(found.group(1))
        return len(checkpoints) >= 2

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per S3 request otherwise
    server = FlakyS3(free_port(), second_checkpoint_weights)
    server.start()
    endpoint = f"http://127.0.0.1:{server._port}"
    for name, value in s3_environment(endpoint).items():
        monkeypatch.setenv(name, value)
    pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True).create_dir(BUCKET)
    # The session's Ray workers started before these variables were set and hold no keys: they
    # write to the bucket anonymously, as a cluster with an instance role writes without keys.
    boto3.client("s3", endpoint_url=endpoint).put_bucket_acl(Bucket=BUCKET, ACL="public-read-write")
    try:
        yield server
    finally:
        server.stop()


def test_storage_lost_at_a_checkpoint_fails_naming_it_and_the_half_written_checkpoint_is_never_loaded(
    facet_data: tuple[Path, Path], ray_session: None, flaky_s3: FlakyS3, tmp_path: Path
) -> None:
    storage = f"s3://{BUCKET}/train"
    config = shared_config(
        tmp_path, "train.epochs=2", "train.run.max_failures=0", f"train.run.storage_path={storage}"
    )
    data, features = facet_data
    args = (config, str(data), str(features), str(tmp_path / "model"), "flaky")

    with pytest.raises(TrainingError) as raised:
        train(*args)
    message = str(raised.value)
    assert f"checkpoints in {storage}/flaky-" in message, message
    assert re.search(rf"writing checkpoint {storage}/flaky-[0-9a-f]+/checkpoint_\S+ failed", message), message
    assert flaky_s3.refused[0].startswith("PUT ") and f"/{CHECKPOINT_FILE}" in flaky_s3.refused[0]
    flaky_s3.restore()

    # What the failure left: the first checkpoint whole, the second a directory without weights.
    s3, root = pafs.FileSystem.from_uri(storage)
    (run,) = [i.path for i in s3.get_file_info(pafs.FileSelector(root)) if "flaky-" in i.path]
    checkpoints = sorted(
        i.path
        for i in s3.get_file_info(pafs.FileSelector(run))
        if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")
    )
    assert len(checkpoints) == 2, checkpoints
    weights = [s3.get_file_info(f"{c}/{CHECKPOINT_FILE}").type == pafs.FileType.File for c in checkpoints]
    assert weights == [True, False]
    # Ray Train's record of the run's checkpoints, what a resumed run reads, names the whole one only.
    with s3.open_input_stream(f"{run}/{RECORD}") as stream:
        record = stream.read().decode()
    whole, half = (c.rsplit("/", 1)[1] for c in checkpoints)
    assert whole in record and half not in record

    resumed = train(*args)
    assert [row["epoch"] for row in resumed.history] == [0, 1]
    assert resumed.history[-1]["resumed_from_epoch"] == 0  # from the whole checkpoint, not the half one
