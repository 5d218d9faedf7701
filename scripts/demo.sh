#!/usr/bin/env bash
# The main job: set up, export TinyViM-S to portable ONNX, validate it against PyTorch,
# and profile it on ONNX Runtime CPU next to PyTorch eager. Reports land in runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=runs/demo
mkdir -p "$OUT"
TV=.venv/bin/tinyvim
echo "== export"
$TV export --variant s --dynamic-batch -o "$OUT/tinyvim-s.onnx" --json "$OUT/export.json"
echo "== validate"
$TV validate "$OUT/tinyvim-s.onnx" --batch 4 --num-inputs 4 --json "$OUT/validate.json"
echo "== profile"
$TV profile --backend torch,torch-fused,ort --model "$OUT/tinyvim-s.onnx" --batch 1,8 --threads 2 \
    --warmup 3 --iters 10 --json "$OUT/profile.json" --plot "$OUT/profile.png"
echo "reports: $OUT/export.json $OUT/validate.json $OUT/profile.json $OUT/profile.png"
