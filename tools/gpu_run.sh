#!/usr/bin/env bash
# The GPU check of convolab.gpu, as run on a lent H200 (device tool): three benchmark runs
# against cuDNN (JSON + markdown each), then a few GPU tests if time is left. Every figure in
# the GPU issue's note comes from these files. Usage: tools/gpu_run.sh OUTDIR  (~6 minutes)
set -uo pipefail
OUT=${1:-${OUT:-/tmp/convolab-gpu}}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 CONVOLAB_CACHE_DIR=/tmp/convolab-gpu-cache
export TRITON_DEFAULT_FP_FUSION=1  # Triton 3.9 warns when unset; 1 is its (and 3.6's) default
exec > >(tee "$OUT/log.txt") 2>&1
PY=python3
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv
$PY -c "import torch, triton, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'triton', triton.__version__, 'numpy', numpy.__version__)"
t0=$(date +%s)
bench() {  # name, suites, dtypes, budget, extra args...
  local name=$1 suites=$2 dtypes=$3 budget=$4; shift 4
  $PY -m convolab.cli bench --device cuda --suite "$suites" --dtypes "$dtypes" --time-budget "$budget" \
      --json "$OUT/$name.json" --markdown "$OUT/$name.md" "$@" | grep -v '^ \|^{\|^}'
  echo "== $name done at $(( $(date +%s) - t0 )) s"
}
bench im2win128 im2win12@128 float32 90
bench rn50b32 resnet50@32 float16,bfloat16,float32,tf32 115
bench small cuconv@1,resnet50@1,im2win12@1 float32,float16 55 --max-pixels 196 \
      --deviation-layers "resnet50@1 l3 3x3 256;cuconv@1 3x3 384>384@13"
if (( $(date +%s) - t0 < 320 )); then
  echo "== GPU tests (dense 1x1 path, split reductions, bitwise repeats)"
  timeout 40 $PY -m pytest -q -x tests/test_gpu.py -p no:cacheprovider -k "dense or split or bitwise or routes" \
      2>&1 | tail -4 | tee "$OUT/pytest.txt"
fi
echo "== all done at $(( $(date +%s) - t0 )) s"
