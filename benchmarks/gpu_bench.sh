#!/usr/bin/env bash
# The prepared GPU benchmark: one command for a session that holds a CUDA machine.
#
#   bash benchmarks/gpu_bench.sh            # writes benchmarks/results/bench-cuda-<gpu>-paper-<date>.{json,md}
#   OUT_DIR=$OUT bash benchmarks/gpu_bench.sh   # e.g. on the lent machine, to get the files back
#
# Paper preset, 32 x 224 x 224 clips, CUDA, bf16 autocast + channels_last_3d. What the first H100
# run (2026-11-27, docs/benchmarks.md) left open, in this order: irv2_cam's and r3d_18's eager
# training at batch 64 and 32 (is a larger batch faster per clip?), the Grad-CAM latency of one
# 64-frame video eager and replayed from a CUDA graph (ml.gradcam.GraphedGradCAM; the goal is
# < 25 ms), then irv2_cam compiled at batch 64 (the goal is >= 200 TFLOP/s; batch 32 compiled
# gave 160), with a torch.profiler breakdown of that compiled step (where does the time go once
# batch norm and activations are fused?). The eager training profile is not rerun (PROFILE=1
# adds it). Installs nothing.
#
# Bounded to < 9 minutes: no new row starts after 330 s (--time-budget), and the run is
# interrupted at 500 s; results are written after every row, so an interrupted run keeps
# all finished rows (the compiled ones, slowest to prepare, come last).
#
# Needs python3 with a CUDA torch, numpy, scipy, tqdm and MONAI. The lent GPU image has all but
# MONAI (pure Python): carry a copy of it in .whl/ (gitignored), e.g. made here with
#   mkdir -p .whl && cp -r .venv/lib/python3.11/site-packages/monai .whl/
# and pass carry [".whl"]; this script puts .whl on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
OUT_DIR=${OUT_DIR:-benchmarks/results}
if [ -d .whl ]; then
  export PYTHONPATH="$PWD/.whl${PYTHONPATH:+:$PYTHONPATH}"
fi

"$PY" - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_bench.sh: torch sees no CUDA device")
try:
    import monai, scipy, tqdm  # noqa: F401
    import ml.bench, ml.gradcam  # noqa: F401  (fail here, in seconds, not after the first row)
except ImportError as exc:
    sys.exit(f"gpu_bench.sh: {exc} (see the header of this script)")
print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}", flush=True)
EOF

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true

timeout --signal=INT --kill-after=15 500 \
  "$PY" -m ml.bench \
    --device cuda \
    --preset paper \
    --frames 32 --size 224 \
    --archs irv2_cam r3d_18 \
    --batch-sizes 64 32 \
    --dtypes bf16 \
    --compile \
    --steps 10 --warmup 3 \
    --gradcam-frames 64 \
    ${PROFILE:+--profile} \
    --profile-compiled \
    --time-budget 330 \
    --tag "${TAG:-$(date -u +%Y%m%d)}" \
    --out-dir "$OUT_DIR"
