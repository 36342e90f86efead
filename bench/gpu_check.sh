#!/usr/bin/env bash
# The GPU path on a GPU, in one command (issue 22): the tests marked gpu, then 2,000 generated
# images and the demo photos explained on CUDA through the real flow (dask-cuda, one worker per
# GPU, bf16 autocast, images per step from the free memory), printing images/s beside
# bench/roofline.py's projection and the GPU's memory peak. Under 5 minutes on one H200.
#
# It installs nothing it cannot find offline: the packages the GPU machine lacks travel as
# wheels in .whl/ (bench/gpu_wheels.sh downloads them here, where the registries are reachable;
# name .whl in the device tool's carry), installed with --no-index into /tmp/site. On a machine
# whose python already has fidoflow's dependencies, nothing is installed.
#
#   bench/gpu_check.sh                 # on the GPU machine, from the checkout's root
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_IMAGES=16 bench/gpu_check.sh   # the script itself, on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && [ "${GPU_CHECK_DEVICE:-cuda}" = cpu ] && PY=.venv/bin/python
if ! "$PY" -c "import prefect, distributed, zarr, captum, efficientnet_lite_pytorch" 2>/dev/null; then
    [ -d .whl ] || { echo "gpu_check: missing packages and no .whl/ to install them from (bench/gpu_wheels.sh)"; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c "import fidoflow.flows.cli" 2>/dev/null; then  # the checkout as the package
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/fidoflow . 
    export PYTHONPATH="/tmp/fidoflow${PYTHONPATH:+:$PYTHONPATH}"
fi
export PREFECT_HOME="${PREFECT_HOME:-/tmp/fidoflow-prefect}" PREFECT_SERVER_ANALYTICS_ENABLED=false
export PYTHONUNBUFFERED=1
mkdir -p "$PREFECT_HOME"
"$PY" - <<'PYEOF'
import torch
print(f"torch {torch.__version__}, CUDA {torch.cuda.is_available()}, "
      f"{torch.cuda.device_count()} GPU(s)"
      + (f": {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
PYEOF
if [ "${GPU_CHECK_DEVICE:-cuda}" = cuda ]; then
    "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py
fi
"$PY" bench/gpu_run.py --device "${GPU_CHECK_DEVICE:-cuda}" --images "${GPU_CHECK_IMAGES:-2000}"
