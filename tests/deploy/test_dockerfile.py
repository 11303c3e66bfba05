"""deploy/Dockerfile, checked without a Docker daemon: its base is Ray's image for the Ray that
pyproject.toml pins, its GPU variant's CUDA is that of the pinned torch's wheels, it runs as a
non-root user, .dockerignore lets through what it copies, and hadolint finds nothing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
TORCH_SET = ("torch", "torchaudio", "torchvision")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def _pins() -> dict[str, str]:
    """pyproject.toml's ``name==version`` dependencies, extras dropped."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in project["dependencies"]:
        name, sep, version = requirement.partition("==")
        if sep:
            pins[re.sub(r"\[.*\]", "", name).strip()] = version.strip()
    return pins


def _base_image() -> tuple[str, dict[str, str]]:
    """The FROM image with the global ARGs' defaults substituted, and those defaults."""
    defaults: dict[str, str] = {}
    for instruction, arguments in _instructions():
        if instruction == "ARG" and "=" in arguments:
            name, value = arguments.split("=", 1)
            defaults[name] = value
        if instruction == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], arguments.split()[0])
            return image, defaults
    raise AssertionError("deploy/Dockerfile has no FROM")


def test_the_base_is_rays_image_for_the_ray_pyproject_pins() -> None:
    image, defaults = _base_image()
    repository, tag = image.split(":")
    assert repository == "rayproject/ray"
    # rayproject/ray:{Ray version}-py{3xx}-{platform}: every part named, none left to Ray's defaults.
    version, python, platform = tag.split("-")
    assert version == _pins()["ray"], (
        f"the image's Ray {version} is not pyproject.toml's ray=={_pins()['ray']}"
    )
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert python == "py" + requires.removeprefix(">=").replace(".", "")
    assert platform == defaults["RAY_PLATFORM"] == "cpu"  # the default variant; GPU: below


def test_the_gpu_variant_has_the_cuda_of_the_pinned_torch_wheels() -> None:
    import torch

    if torch.version.cuda is None:
        pytest.skip("this torch is a CPU-only build: its CUDA says nothing of PyPI's wheels")
    cuda = "cu" + torch.version.cuda.replace(".", "")
    text = DOCKERFILE.read_text()
    assert f"--build-arg RAY_PLATFORM={cuda}" in text, f"the GPU build line should name {cuda}"
    assert torch.__version__.split("+")[0] == _pins()["torch"]


def test_torch_and_its_companions_come_from_pyproject_as_one_set() -> None:
    pins = _pins()
    assert all(name in pins for name in TORCH_SET), "torch, torchaudio and torchvision are pinned together"
    run = " ".join(arguments for instruction, arguments in _instructions() if instruction == "RUN")
    assert not re.search(r"\btorch(audio|vision)?==", run), "the Dockerfile repeats a torch pin"
    assert "tomllib" in run and all(name in run for name in TORCH_SET)


def test_it_runs_as_a_numeric_non_root_user() -> None:
    users = [arguments for instruction, arguments in _instructions() if instruction == "USER"]
    assert users, "the image would run as whatever its base says"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so that Kubernetes' runAsNonRoot can check it


def test_dockerignore_sends_what_the_dockerfile_copies_and_nothing_heavy() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "a whitelist: everything is left out unless let through below"
    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    copied = []
    for instruction, arguments in _instructions():
        if instruction == "COPY":
            words = [w for w in arguments.split() if not w.startswith("--")]
            copied += words[:-1]  # the last word is the destination
    assert copied and set(copied) <= allowed, f"COPY sources not let through: {set(copied) - allowed}"
    assert not allowed & {".venv", ".git", "out", "bench"}


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    assert hadolint.exists(), "hadolint comes with the dev extras (pip install -e '.[dev]', make venv)"
    run = subprocess.run(
        [str(hadolint), "--no-color", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(run.stdout or "[]")
    assert not findings, "\n".join(
        f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings
    )
    # A rule may be silenced only with its reason on the line above.
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#") and "hadolint" not in above, (
                f"line {number + 1}: an ignore without a reason"
            )
