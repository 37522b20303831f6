#!/usr/bin/env bash
# Pre-train a prompt on a tiny random open_clip model and generated images, evaluate it, export embeddings.
# Usage: bash examples/tiny_walkthrough.sh [OUT_DIR]   (about a minute on 2 CPU cores)
set -euo pipefail
OUT=${1:-runs/walkthrough}
POMP=${POMP:-.venv/bin/pomp}
PY=${PY:-.venv/bin/python}
rm -rf "$OUT"
$PY -m pomp.data.synthetic "$OUT/data" --classes 12 --per-class 10
$POMP pretrain --backbone tests/assets/tiny-clip.json --train-root "$OUT/data/images" --names "$OUT/data/names.txt" \
  --shots 6 --val-per-class 2 --classes-per-step 6 --batch-size 8 --views 2 --epochs 3 --num-workers 0 \
  --out-dir "$OUT/pretrain"
$POMP info "$OUT/pretrain/prompt.safetensors"
$POMP eval --backbone tests/assets/tiny-clip.json --prompt "$OUT/pretrain/prompt.safetensors" --baseline single \
  --baseline ensemble --data "$OUT/pretrain/split.json" --split val --image-root "$OUT/data/images" \
  --out-dir "$OUT/eval" --num-workers 0
cut -f2 "$OUT/data/names.txt" > "$OUT/vocabulary.txt"
$POMP embed --backbone tests/assets/tiny-clip.json --prompt "$OUT/pretrain/prompt.safetensors" \
  --classes "$OUT/vocabulary.txt" --out-dir "$OUT/embeddings"
$POMP convert "$OUT/pretrain/prompt.safetensors" "$OUT/official/model.pth.tar-3"
echo "walkthrough outputs under $OUT"
