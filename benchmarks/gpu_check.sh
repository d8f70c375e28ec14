#!/usr/bin/env bash
# GPU checks for a machine with CUDA (never part of CI or the default tests).
#
#   benchmarks/gpu_check.sh [WHEEL_DIR] [OUT_DIR]
#
# WHEEL_DIR (downloaded on a connected machine) holds two folders of wheels: sj2/ (spikingjelly 2.x,
# snntorch, loguru) and sj014/ (spikingjelly 0.0.0.0.14); torch, cupy, scikit-learn, click, tqdm,
# matplotlib and pytest are expected on the machine. snncutoff itself is installed from this tree
# (editable, no dependencies, so its backends register their entry points). Then, for each SpikingJelly:
#   1. the tests marked `cuda` and `cupy` (they skip cleanly where CUDA or cupy is absent);
#   2. real early exit on the GPU (`speed --early-exit`): the digits CNN (T=32, batch 256) and a
#      compute-bound VGG-11 on 32x32 upsampled digits (T=32, batch 256), realised vs ideal;
#   3. each SpingJelly kernel family the version offers on a CIFAR-size VGG-11 (`speed --model vgg11`),
#      with its ratio to the plain torch kernel measured in the same run.
# Results land in OUT_DIR (default $OUT, else ./gpu-check): *.log, *.json and summary.json.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${1:-}
OUT_DIR=${2:-${OUT:-gpu-check}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to check here')" \
  || exit 1
$PY -m pip install -q --no-deps --no-build-isolation --no-index -e . > "$OUT_DIR/install.log" 2>&1 \
  || { echo "editable install failed (see install.log)"; exit 1; }
B="$PY -m snncutoff_bench"
for version in sj2 sj014; do
  site=/tmp/site-$version
  if [ -n "$WHEELS" ] && [ -d "$WHEELS/$version" ]; then
    rm -rf "$site"
    $PY -m pip install -q --no-index --no-deps --no-compile --target "$site" "$WHEELS"/$version/*.whl \
      "$WHEELS"/sj2/snntorch-*.whl "$WHEELS"/sj2/loguru-*.whl || { echo "wheels for $version failed"; continue; }
  fi
  export PYTHONPATH=$site
  $B info > "$OUT_DIR/info-$version.txt" 2>&1
  timeout 240 $PY -m pytest -q -p no:cacheprovider -m "cuda or cupy" -rs tests/test_early_exit.py \
    tests/test_spikingjelly.py > "$OUT_DIR/tests-$version.log" 2>&1
  tail -3 "$OUT_DIR/tests-$version.log"
  if [ "$version" = "sj2" ]; then
    timeout 150 $B speed --early-exit --device cuda --T 32 --batch-size 256 --repeats 5 --stream-repeats 8 --json \
      --quiet --cache-dir /tmp/gpu-cache --output-dir /tmp/gpu-ee > "$OUT_DIR/early-exit-cnn.json" 2> "$OUT_DIR/ee-cnn.err"
    timeout 200 $B speed --early-exit --model vgg11 --input-size 32 --epochs 4 --device cuda --T 32 --batch-size 256 \
      --repeats 3 --stream-repeats 2 --json --quiet --cache-dir /tmp/gpu-cache --output-dir /tmp/gpu-ee2 \
      > "$OUT_DIR/early-exit-vgg11.json" 2> "$OUT_DIR/ee-vgg.err"
    kernels="torch auto triton"
  else
    kernels="torch cupy"
  fi
  for k in $kernels; do  # 2.x picks its CUDA kernels once per process: one process per kernel family
    timeout 90 $B speed --model vgg11 --device cuda --batch-size 128 --T 16 --repeats 5 --gpu-kernel "$k" --json \
      --quiet --output-dir "/tmp/gpu-run-$version-$k" > "$OUT_DIR/speed-$version-$k.json" 2> "$OUT_DIR/speed-$version-$k.err"
  done
done
$PY - "$OUT_DIR" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
KEYS = {"speed": ("run_ms_per_step", "step_ms_per_step", "native_ms_per_step"),
        "early-exit": ("realised_speedup", "ideal_speedup", "realised_over_ideal", "network_bound_over_ideal",
                       "stream_refill_over_ideal", "matches_evaluate")}
summary = {}
for kind, keys in KEYS.items():
    for f in sorted(out.glob(f"{kind}-*.json")):
        try:
            r = json.loads(f.read_text())
        except ValueError:
            summary[f.stem] = "failed"
            continue
        summary[f.stem] = {n: {k: e.get(k) for k in keys} for n, e in r["backends"].items()}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
PY
