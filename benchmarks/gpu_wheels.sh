#!/usr/bin/env bash
# Run HERE (a machine with pip access), in the repository root, before a device session:
# fetches the few wheels the GPU image lacks (it has torch, timm, safetensors, regex, tqdm,
# huggingface_hub, numpy, pillow, but not open_clip) into .whl/, kept out of git.
# Then name ".whl" in the device call's `carry`; benchmarks/gpu_check.sh installs them there.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PY=${PY:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl open_clip_torch==3.3.0 ftfy wcwidth
ls -la .whl
