#!/usr/bin/env bash
# GPU checks for a machine with CUDA (never part of CI or the default tests).
#
#   benchmarks/gpu_check.sh [WHEEL_DIR] [OUT_DIR]
#
# 1. installs what it needs: wheels from WHEEL_DIR if given (snntorch, spikingjelly, loguru, cupy-cuda12x ...,
#    downloaded on a connected machine), else nothing; then snncutoff itself from this tree, without deps;
# 2. runs the tests marked `cuda` and `cupy` (they skip cleanly where CUDA or cupy is absent), and times
#    real early exit on the GPU (early-exit.json);
# 3. times a CIFAR-size VGG-11 (batch 128, T=16) per backend on the GPU with each SpikingJelly kernel family
#    the installed version offers, and prints the ratio of each to the plain torch kernel, measured in this run.
# Results land in OUT_DIR (default $OUT, else ./gpu-check): tests.log, speed-<kernel>.json, summary.json.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${1:-}
OUT_DIR=${2:-${OUT:-gpu-check}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if [ -n "$WHEELS" ] && [ -d "$WHEELS" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# run from the source tree (the backends are found even without an installed entry point)
export PYTHONPATH=$PWD:$PWD/adapters:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}
$PY -m snncutoff_bench.cli info | tee "$OUT_DIR/info.txt"
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to check here')" || exit 1

$PY -m pytest -q -p no:cacheprovider -m "cuda or cupy" -rs tests 2>&1 | tee "$OUT_DIR/tests.log"
# real early exit on the GPU: realised vs ideal speed-up per backend (digits CNN, T=32, batch 256)
$PY -m snncutoff_bench.cli speed --early-exit --device cuda --T 32 --batch-size 256 --repeats 5 --json --quiet \
    --output-dir "$OUT_DIR/early-exit" > "$OUT_DIR/early-exit.json" || echo "early exit on cuda failed" >&2

legacy=$($PY -c "import inspect; from spikingjelly.activation_based import neuron; \
print(int('backend' in inspect.signature(neuron.IFNode).parameters))" 2>/dev/null || echo 0)
if [ "$legacy" = "1" ]; then kernels="torch cupy"; else kernels="torch auto triton"; fi
for k in $kernels; do
  # 2.x chooses its CUDA kernels once per process: one process per kernel family
  $PY -m snncutoff_bench.cli speed --model vgg11 --device cuda --batch-size 128 --T 16 --repeats 5 \
      --gpu-kernel "$k" --json --quiet --output-dir "$OUT_DIR/run-$k" > "$OUT_DIR/speed-$k.json" \
      || echo "kernel $k failed" >&2
done
$PY - "$OUT_DIR" $kernels <<'PY'
import json, sys
from pathlib import Path
out, kernels = Path(sys.argv[1]), sys.argv[2:]
runs = {k: json.loads((out / f"speed-{k}.json").read_text()) for k in kernels if (out / f"speed-{k}.json").stat().st_size}
base = runs.get("torch", {}).get("backends", {}).get("spikingjelly", {}).get("run_ms_per_step")
summary = {}
for k, r in runs.items():
    sj = r["backends"].get("spikingjelly", {})
    summary[k] = {"resolved": r.get("spikingjelly_kernel"), "run_ms_per_step": sj.get("run_ms_per_step"),
                  "torch_over_this": (base / sj["run_ms_per_step"]) if base and sj.get("run_ms_per_step") else None,
                  "snntorch_step_ms_per_step": r["backends"].get("snntorch", {}).get("step_ms_per_step")}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
PY
