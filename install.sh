#!/usr/bin/env bash
# Create ./.venv and install snncutoff with both SNN frameworks, CPU-friendly.
#
#   ./install.sh            library + benchmarks + SpikingJelly + snnTorch
#   ./install.sh --test     ... plus pytest, pytest-xdist, hypothesis, tox
#
# Environment overrides (defaults in brackets):
#   PYTHON            interpreter, Python >= 3.11            [python3]
#   TORCH_SPEC        the torch to install                    [torch==2.13.0]
#   SPIKINGJELLY_SPEC the SpikingJelly release                [spikingjelly==2.0.0]
#   SNNTORCH_SPEC     the snnTorch release                    [snntorch==1.0.0]
#
# SpikingJelly is installed with --no-deps (plus loguru): its declared requirements
# pull torchvision and torchaudio, which beside a CPU torch would replace it with a
# CUDA build of several GB, while its neuron/layer/functional core needs only torch.
set -euo pipefail
cd "$(dirname "$0")"

extras=""
for arg in "$@"; do
  case "$arg" in
    --test) extras="[test,dev]" ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "install.sh: snncutoff needs Python >= 3.11; set PYTHON=/path/to/python3.11" >&2; exit 1; }

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" "${TORCH_SPEC:-torch==2.13.0}"
"${pip[@]}" -e ".${extras}" "${SNNTORCH_SPEC:-snntorch==1.0.0}"
"${pip[@]}" --no-deps "${SPIKINGJELLY_SPEC:-spikingjelly==2.0.0}" "loguru>=0.7,<1"
echo "snncutoff installed in $(pwd)/.venv ($(.venv/bin/python -c 'import torch; from snncutoff import _native
print("torch", torch.__version__ + ",", "C kernels", "in use" if _native.available() else "not in use (no C compiler?): pure torch")'))"
