"""The model stage's persistence layer (raymm/models/persist.py) on its own: weights round-trip through
safetensors on a local disk and on S3, and every document or weights file that cannot be trusted is
refused with an error naming the file and what is wrong."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

import raymm
from raymm.data import io
from raymm.models.errors import ModelLoadError
from raymm.models.persist import as_uri, load_weights, read_document, read_tensors, write_weights

FORMAT = "raymm.thing"


def _module(seed: int) -> nn.Module:
    """A linear layer and a batch norm: parameters and buffers (running statistics, a counter)."""
    torch.manual_seed(seed)
    module = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    module.train()(torch.randn(16, 3))  # moves the running statistics off their initial values
    return module.eval()


def _metadata(uri: str) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header (8-byte little-endian length, then JSON)."""
    data = io.read_bytes(uri)
    (length,) = struct.unpack("<Q", data[:8])
    return dict(json.loads(data[8 : 8 + length])["__metadata__"])


@pytest.mark.parametrize("where", ["local", "s3"])
def test_weights_round_trip_parameters_and_buffers_with_their_metadata(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    directory = str(tmp_path) if where == "local" else request.getfixturevalue("s3_dir")
    uri = io.join(directory, "model", "weights.safetensors")
    saved = _module(seed=0)
    write_weights(saved, uri, {"format": FORMAT, "note": "two parts"})
    loaded = _module(seed=1)
    assert not torch.equal(loaded[1].running_mean, saved[1].running_mean)
    load_weights(loaded, uri, "thing weights")
    assert loaded.state_dict().keys() == saved.state_dict().keys()
    for name, tensor in saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert _metadata(uri) == {"format": FORMAT, "note": "two parts"}
    assert set(read_tensors(uri, "thing weights")) == set(saved.state_dict())


def test_weights_that_do_not_fit_the_module_are_refused_naming_the_file(tmp_path: Path) -> None:
    uri = str(tmp_path / "weights.safetensors")
    write_weights(nn.Linear(3, 4), uri, {})
    wider = nn.Linear(3, 5)
    before = wider.weight.detach().clone()
    with pytest.raises(
        ModelLoadError,
        match=rf"(?s)^{re.escape(uri)}: weights do not fit the saved config: .*size mismatch for weight",
    ):
        load_weights(wider, uri, "thing weights")
    assert torch.equal(wider.weight, before)
    with pytest.raises(
        ModelLoadError, match=rf"(?s)^{re.escape(uri)}: weights do not fit the saved config: .*Missing key"
    ):
        load_weights(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1)), uri, "thing weights")


def test_a_missing_or_unreadable_weights_file_is_refused_naming_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere" / "weights.safetensors")
    with pytest.raises(
        ModelLoadError,
        match=rf"^{re.escape(str(tmp_path))}/nowhere: no weights\.safetensors \(ranker weights\)$",
    ):
        read_tensors(missing, "ranker weights")
    garbage = tmp_path / "weights.safetensors"
    garbage.write_bytes(b"not safetensors at all")
    with pytest.raises(ModelLoadError, match=rf"^{re.escape(str(garbage))}: cannot read the tensors: "):
        load_weights(nn.Linear(3, 4), str(garbage), "ranker weights")


def _document(path: Path, document: object) -> str:
    path.write_text(json.dumps(document))
    return str(path)


def test_a_document_of_the_right_format_and_version_is_returned_whole(tmp_path: Path) -> None:
    document = {"format": FORMAT, "format_version": 2, "width": 8, "extra": [1, 2]}
    uri = _document(tmp_path / "thing.json", document)
    assert (
        read_document(uri, expected_format=FORMAT, versions=range(1, 3), what="thing", missing="x")
        == document
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"^{dir}: no thing\.json; train the thing first$"),
        ("{not json", r"^{uri}: cannot read it as JSON: "),
        ([1, 2], r"^{uri}: expected a JSON object, got list$"),
        ({"format_version": 1}, r"^{uri}: format None, expected 'raymm\.thing' \(thing\)$"),
        ({"format": "raymm.other", "format_version": 1}, r"format 'raymm\.other', expected 'raymm\.thing'"),
        (
            {"format": FORMAT, "format_version": 3},
            r"^{uri}: thing format version 3 is not supported by raymm {version}, which reads "
            r"'raymm\.thing' versions 1 to 2$",
        ),
        ({"format": FORMAT, "format_version": True}, r"thing format version True is not supported"),
        ({"format": FORMAT, "format_version": "1"}, r"thing format version '1' is not supported"),
        ({"format": FORMAT}, r"thing format version None is not supported"),
    ],
    ids=["missing", "not-json", "not-an-object", "no-format", "other-format", "newer", "bool", "str", "none"],
)
def test_a_document_that_cannot_be_trusted_is_refused_naming_the_file_and_why(
    content: object, message: str, tmp_path: Path
) -> None:
    path = tmp_path / "thing.json"
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        _document(path, content)
    expected = message.format(
        dir=re.escape(str(tmp_path)), uri=re.escape(str(path)), version=re.escape(raymm.__version__)
    )
    with pytest.raises(ModelLoadError, match=expected):
        read_document(
            str(path),
            expected_format=FORMAT,
            versions=range(1, 3),
            what="thing",
            missing="train the thing first",
        )


def test_a_single_readable_version_is_named_as_one(tmp_path: Path) -> None:
    uri = _document(tmp_path / "thing.json", {"format": FORMAT, "format_version": 2})
    with pytest.raises(ModelLoadError, match=r"which reads 'raymm\.thing' version 1$"):
        read_document(uri, expected_format=FORMAT, versions=range(1, 2), what="thing", missing="x")


def test_as_uri_gives_the_string_io_takes() -> None:
    assert as_uri(Path("/models/a")) == "/models/a"
    assert as_uri("s3://bucket/model") == "s3://bucket/model"
    assert type(as_uri(Path("rel"))) is str
