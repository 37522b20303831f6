#!/usr/bin/env bash
# GPU check, prepared for a session that has a GPU (one H200 here). Under 8 minutes in all.
#
#   here:    bash benchmarks/gpu_wheels.sh          # once: open_clip + ftfy + wcwidth wheels into .whl/
#   device:  run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=560)
#
# Installs nothing but the carried wheels (into /tmp/site, not the system); pomp runs from the
# working tree through PYTHONPATH. Writes everything under $OUT (the device tool's folder) or
# benchmarks/results/: the equality check, the full ViT-B-16 grid, and the compile / MHA ablation.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-benchmarks/results}
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=python3
[ -x .venv/bin/python ] && .venv/bin/python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null \
    && PY=.venv/bin/python
if ! "$PY" -c "import open_clip" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            || exit 1
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "open_clip is missing and no .whl/ was carried: run benchmarks/gpu_wheels.sh here first" >&2
        exit 1
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__, \
'cuda', torch.cuda.is_available())" || exit 1
START=$SECONDS

# 1. fast text path == open_clip path on ViT-B-16, fp32 and bf16 autocast (~30 s)
timeout 90 "$PY" benchmarks/fast_text_check.py --device cuda --model ViT-B-16 --num-classes 1024 \
    --out "$OUT_DIR/gpu-fast-text-check.json" 2>&1 | grep -v "No pretrained weights" | tee "$OUT_DIR/gpu-fast-text-check.txt"
echo "[gpu_check] equality check done at $((SECONDS - START)) s"

# 2. the full grid: K in {100, 1000, 4000, all} x n_ctx in {4, 16}; reference, pomp, pomp-gradcache (~2-4 min)
timeout 300 "$PY" benchmarks/step.py --device cuda --model ViT-B-16 --ks 100,1000,4000,all --n-ctx 4,16 \
    --impls reference,pomp,pomp-gradcache --steps 10 --warmup 3 --out "$OUT_DIR/gpu-vitb16.json" 2>&1 \
    | grep -v "No pretrained weights" | tee "$OUT_DIR/gpu-vitb16.txt"
echo "[gpu_check] grid done at $((SECONDS - START)) s"

# 3. what the SDPA path and torch.compile bring, K = 1000 (compilation is in the warm-up steps)
LEFT=$((450 - (SECONDS - START)))
if [ "$LEFT" -gt 60 ]; then
    timeout "$LEFT" "$PY" benchmarks/step.py --device cuda --model ViT-B-16 --ks 1000 --n-ctx 4,16 \
        --impls pomp,pomp-mha,pomp-compile --steps 10 --warmup 3 --out "$OUT_DIR/gpu-vitb16-ablation.json" 2>&1 \
        | grep -v "No pretrained weights" | tee "$OUT_DIR/gpu-vitb16-ablation.txt"
fi
echo "[gpu_check] done at $((SECONDS - START)) s; results in $OUT_DIR"
