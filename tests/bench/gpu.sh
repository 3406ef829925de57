#!/usr/bin/env bash
# The GPU benchmarks, one command on a CUDA machine: training throughput (mixed precision), trials per
# GPU (1 vs several concurrent trials on one GPU), the tuning benchmark with CUDA trials, and serving.
# Each prints its table; everything also goes to $OUT (default ./gpu-bench) as one log per benchmark.
#
#   bash tests/bench/gpu.sh            # all four
#   bash tests/bench/gpu.sh training   # just some: training, tuning, serving
#
# Needs: an NVIDIA GPU with a driver (nvidia-smi), Python 3.11 and the project's venv (`make setup`
# makes it: the pinned torch 2.13.0 wheel from PyPI carries its CUDA 13 libraries, so the same lock
# serves CPU and GPU machines). Fails, naming what is missing, when there is no usable GPU: a GPU
# benchmark that quietly ran on the CPU would report CPU figures as GPU ones.
#
# What runs where:
#   training  tests/bench/test_bench_training.py: Trainer chips/s at widths 0.25 and 1.0, batch 32 and
#             128 (device auto: bfloat16 autocast on GPUs that support it, else float16 with a gradient
#             scaler), and 1 vs EARTHOPS_BENCH_TRIALS_PER_GPU (default 2) trials sharing one GPU.
#   tuning    tests/bench/test_bench_tuning.py with EARTHOPS_BENCH_TUNING_DEVICE=cuda: the same modes as
#             on the CPU (waves, median, asha, scaling, plain Ray Tune), each trial on the GPU.
#   serving   tests/bench/test_bench_serving.py with EARTHOPS_BENCH_SERVING_DEVICE=cuda: the predictor with
#             --device cuda (float16 autocast) against the raw exported program on the GPU.
# Sizes follow each benchmark's EARTHOPS_BENCH_* variables (see their docstrings); set them before
# calling this script to shrink or grow a run.
set -euo pipefail

cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-gpu-bench}
mkdir -p "$OUT"
which=("$@")
[ ${#which[@]} -eq 0 ] && which=(training tuning serving)

command -v nvidia-smi >/dev/null || { echo "gpu.sh: no nvidia-smi: this machine has no NVIDIA driver" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
[ -x "$PY" ] || { echo "gpu.sh: no venv at $PY: run 'make setup' first (or set PY)" >&2; exit 2; }
"$PY" - <<'EOF' | tee -a "$OUT/gpu.txt"
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"gpu.sh: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s): "
      f"{torch.cuda.get_device_name()}, bf16 {torch.cuda.is_bf16_supported()}")
EOF

export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
status=0
run() {  # name, pytest file, extra env
    local name=$1 file=$2
    shift 2
    echo "=== $name: $file ($(date -u +%H:%M:%S))"
    if ! env "$@" "$PY" -m pytest -p no:cacheprovider -q -m bench -s "$file" 2>&1 | tee "$OUT/$name.log"; then
        status=1
    fi
}
for w in "${which[@]}"; do
    case $w in
        training) run training tests/bench/test_bench_training.py ;;
        tuning) run tuning tests/bench/test_bench_tuning.py EARTHOPS_BENCH_TUNING_DEVICE=cuda \
                    EARTHOPS_BENCH_OUT="$OUT/tuning.json" ;;
        serving) run serving tests/bench/test_bench_serving.py EARTHOPS_BENCH_SERVING_DEVICE=cuda ;;
        *) echo "gpu.sh: unknown benchmark $w (training, tuning, serving)" >&2; exit 2 ;;
    esac
done
echo "logs in $OUT/"
exit $status
