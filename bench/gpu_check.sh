#!/usr/bin/env bash
# GPU check on a borrowed machine without Ray: see bench/gpu_check.py and bench/README.md.
# Run from the repo root with .whl/ carried along (pydantic, soundfile, EfficientNet-Lite0 and their
# dependencies, the packages raymm needs that the machine lacks). raymm itself is not installed:
# it is imported from the checkout through PYTHONPATH. Results go to $OUT (set by the device tool),
# else bench/results.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! compgen -G ".whl/*.whl" > /dev/null; then
    echo "gpu_check.sh: no wheels in $PWD/.whl; copy them there (and carry .whl) first" >&2
    exit 2
fi
# (set -e does not stop on a failure before && in a list, hence the explicit exit.)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD \
    || { echo "gpu_check.sh: installing .whl/*.whl into /tmp/site failed (see pip's message above)" >&2; exit 2; }
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

nvidia-smi -L || echo "gpu_check.sh: nvidia-smi failed (no driver?); gpu_check.py will say whether torch sees CUDA" >&2
python3 bench/gpu_check.py --out "${OUT:-bench/results}" "$@"
