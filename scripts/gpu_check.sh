#!/usr/bin/env bash
# First light on a GPU (issue 15) in one call: install the carried wheels, build gsplat's and our CUDA code for
# the present GPU, run the CUDA tests, train the default preset for a bounded number of steps, bench the run.
# Writes $OUT/gpu_check.json (every step's status and seconds, test counts, training it/s, bench rows) and
# $OUT/gpu_check.log (all output); prints one line per step. A failed step is recorded and the next one runs.
#   GPU machine (carry .whl/ from scripts/gpu_wheels.sh and .gpu/dataset):  bash scripts/gpu_check.sh
#   here, on CPU, to test this script (torch backend, tiny run, no installs or builds):  bash scripts/gpu_check.sh --dry-run
# Step counts and the time budget can be overridden: AUDIO_STEPS, CANONICAL_STEPS, TORSO_STEPS, DEFORM_STEPS, BUDGET_S.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

case "${1:-}" in
  --dry-run) mode=dry-run ;;
  "") mode=gpu ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac

export OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
log=$OUT/gpu_check.log
: > "$log"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PY=${PYTHON:-python3} WORK=$work MODE=$mode
export PYTHONUNBUFFERED=1  # step output reaches the log as it happens (a timed-out step still shows how far it got)

if [ "$mode" = gpu ]; then
  # The GPU machine's image holds torch and friends; the carried packages and this checkout, built as the one
  # installed package `avatar` (its folders map into it), go into a private target. PYTHONSAFEPATH: the
  # checkout's own avatar/ folder (without its mapped parts) must not shadow that package.
  export PYTHONPATH=$repo/.gpu/site PYTHONSAFEPATH=1
  # torch's builder misses CUDA_HOME with CUDA 13; nvcc names its own bin/ (also when `nvcc` is a wrapper script)
  nvcc_bin=$(nvcc --dryrun -E -x cu /dev/null 2>&1 | sed -n 's/^#\$ _HERE_=//p' || true)
  export CUDA_HOME=${CUDA_HOME:-${nvcc_bin:+$(dirname "$nvcc_bin")}}
  export TORCH_CUDA_ARCH_LIST=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>> "$log" || true)
  export MAX_JOBS=16
  # Builds live in the (git-ignored) working copy, which the GPU tool keeps between calls: a rerun loads them.
  export TORCH_EXTENSIONS_DIR=$repo/.gpu/torch_extensions XDG_CACHE_HOME=$repo/.gpu/cache
  export DATASET=${DATASET:-$repo/.gpu/dataset}
  export AUDIO_STEPS=${AUDIO_STEPS:-200} CANONICAL_STEPS=${CANONICAL_STEPS:-600} TORSO_STEPS=${TORSO_STEPS:-400} DEFORM_STEPS=${DEFORM_STEPS:-400}
  device=(--device cuda); backend=(--backend cuda --triplane.implementation cuda)
  train_size=(); bench_size=()
  budget=${BUDGET_S:-450}  # the whole check stays under 8 minutes
else
  export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}
  export DATASET=$work/dataset
  export AUDIO_STEPS=${AUDIO_STEPS:-5} CANONICAL_STEPS=${CANONICAL_STEPS:-4} TORSO_STEPS=${TORSO_STEPS:-3} DEFORM_STEPS=${DEFORM_STEPS:-4}
  device=(--device cpu); backend=(--backend torch --triplane.implementation torch)
  # one torch thread: on a shared 2-core machine two threads spin against each other (and other jobs)
  train_size=(--resolution 64 --val-frames 4 --head.num-face 1000 --head.num-shell 500 --mouth.num-gaussians 200 --threads 1)
  bench_size=(--quick --no-components --resolutions 64 --threads 1)  # the component benchmarks take minutes on CPU
  budget=${BUDGET_S:-240}
fi
deadline=$((SECONDS + budget))

now() { date +%s.%N; }

skip() {  # skip NAME REASON
  echo "[gpu_check] $1: skipped ($2)"
  printf '%s\tskipped\t\t0\t0\n' "$1" >> "$work/steps.tsv"
}

# step NAME LIMIT_S COMMAND...: run COMMAND (a function or a program) under `timeout` with its output in the
# log, print one progress line, append "name status rc seconds limit" to $WORK/steps.tsv; never stops the script.
step() {
  local name=$1 limit=$2 left=$((deadline - SECONDS)) first=$(($(wc -l < "$log") + 1)) rc=0 status start seconds
  shift 2
  if (( left < limit )); then limit=$left; fi
  if (( limit < 5 )); then skip "$name" "time budget spent"; return; fi
  echo "[gpu_check] $name: running (at most ${limit} s)"
  echo "===== $name (at most ${limit} s): $*" >> "$log"
  start=$(now)
  timeout -k 10 "$limit" bash -euo pipefail -c '"$@"' _ "$@" >> "$log" 2>&1 || rc=$?
  seconds=$(awk "BEGIN { printf \"%.2f\", $(now) - $start }")
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout ;;
    5) if [ "$name" = pytest_cuda ]; then status=skipped; else status=failed; fi ;;  # pytest: no tests collected
    *) status=failed ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$seconds" "$limit" >> "$work/steps.tsv"
  echo "[gpu_check] $name: $status (exit $rc) in ${seconds} s"
  if [ "$status" != ok ] && [ "$status" != skipped ]; then tail -n "+$first" "$log" | tail -n 15 | sed 's/^/    /'; fi
}

install_wheels() {
  rm -rf .gpu/site
  "$PY" -m pip install -q --no-index --no-deps --target .gpu/site .whl/*.whl
  cp -r .whl/stubs/. .gpu/site/
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target .gpu/site "$repo"  # setuptools carried
  "$PY" -c "import gsplat, tyro, avatar.cli, avatar.cuda.hash_triplane; print('imports ok: gsplat', gsplat.__version__)"
}

build_gsplat() {  # gsplat builds on import of its backend; VERBOSE shows the compiler's output
  VERBOSE=1 "$PY" -c "from gsplat.cuda._backend import _C; assert _C is not None, 'gsplat found no CUDA toolkit'"
}

build_hash_triplane() {  # avatar's loader builds quietly and keeps the error: force verbose, re-raise
  "$PY" - <<'EOF'
import torch.utils.cpp_extension as cpp_extension

load = cpp_extension.load
cpp_extension.load = lambda *args, **kwargs: load(*args, **{**kwargs, "verbose": True})
from avatar.cuda import hash_triplane as cuda_hash_triplane

module = cuda_hash_triplane._load()
if isinstance(module, Exception):
    raise module
print("built and loaded:", module.__file__)
EOF
}

cuda_tests() {  # only the files holding CUDA tests: others import packages the GPU machine lacks (soundfile, ...)
  "$PY" -m pytest -m cuda -p no:cacheprovider -rs --junitxml="$WORK/pytest.xml" $(grep -l "mark\.cuda" tests/test_*.py)
}

carried_dataset() {
  test -f "$DATASET/manifest.json" || { echo "$DATASET: no dataset. On the CPU machine: avatar preprocess ../shared/data/mimictalk_german_anchor_20s.mp4 --out .gpu/dataset --resolution 512"; return 1; }
}

make_dataset() {  # 6 s of a shared clip (preprocess wants at least 5 s), at 64 px
  local ffmpeg
  ffmpeg=$("$PY" -c "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())")
  "$ffmpeg" -y -loglevel error -ss 2 -i "${CLIP:-../shared/data/mimictalk_german_anchor_20s.mp4}" -t 6 "$WORK/clip.mp4"
  "$PY" -m avatar.cli preprocess "$WORK/clip.mp4" --out "$DATASET" --resolution 64
}

export -f install_wheels build_gsplat build_hash_triplane cuda_tests carried_dataset make_dataset

echo "[gpu_check] $mode: output in $OUT"
if [ "$mode" = gpu ]; then
  step install 60 install_wheels
  step build_gsplat 300 build_gsplat
  step build_hash_triplane 120 build_hash_triplane
else
  for name in install build_gsplat build_hash_triplane; do skip "$name" "dry run"; done
fi
step pytest_cuda 90 cuda_tests
if [ "$mode" = gpu ]; then step dataset 5 carried_dataset; else step dataset 90 make_dataset; fi
# no re-voiced copies: they need the audio packages (librosa, pocketsphinx) the GPU machine is not given
step train 240 "$PY" -m avatar.cli train "$DATASET" --out "$work/run" --preset default --audio-steps "$AUDIO_STEPS" \
  --audio.voices.copies 0 --canonical-steps "$CANONICAL_STEPS" --torso-steps "$TORSO_STEPS" --deform-steps "$DEFORM_STEPS" "${device[@]}" "${backend[@]}" "${train_size[@]}"
step bench 150 "$PY" -m avatar.cli bench "$work/run" "${device[@]}" --out "$work/bench.json" "${bench_size[@]}"

export NVCC_VERSION=$(nvcc --version 2>/dev/null | tail -n 1 || true)
"$PY" - <<'EOF'
"""Everything the steps left behind, as one JSON."""
import csv
import importlib.metadata
import json
import os
import platform
import xml.etree.ElementTree as ET
from pathlib import Path

work, out = Path(os.environ["WORK"]), Path(os.environ["OUT"])


def read_json(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


steps = {}
with open(work / "steps.tsv") as f:
    for name, status, rc, seconds, limit in csv.reader(f, delimiter="\t"):
        steps[name] = {"status": status, "exit_code": int(rc) if rc else None, "seconds": float(seconds),
                       "limit_s": int(limit)}

tests = None
if (work / "pytest.xml").is_file():
    suite = ET.parse(work / "pytest.xml").getroot().find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    tests = {**counts, "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]}
    if steps["pytest_cuda"]["status"] == "ok" and tests["passed"] == 0:
        steps["pytest_cuda"]["status"] = "skipped"  # every CUDA test skipped itself (no GPU)

training = None
run_info, config = read_json(work / "run" / "run.json"), read_json(work / "run" / "config.json")
if run_info and config:
    seconds = run_info.get("stage_seconds", {})
    training = {
        "status": run_info.get("status"),
        "resolution": config.get("resolution"), "batch_size": config.get("batch_size"),
        "steps": {stage: config.get(f"{stage}_steps") for stage in ("audio", "canonical", "deform")},
        "stage_seconds": seconds,
        # steps of the training loop per second (validation excluded); the audio stage may stop early
        "it_per_s": {stage: config[f"{stage}_steps"] / seconds[stage]
                     for stage in ("canonical", "deform") if seconds.get(stage)},
        "num_gaussians": run_info.get("num_gaussians"),
        "validation": {stage: run_info.get("metrics", {}).get(stage) for stage in ("canonical", "deform")},
    }

import torch

cuda = torch.cuda.is_available()
environment = {
    "python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
    "device": torch.cuda.get_device_name() if cuda else "cpu",
    "capability": "%d.%d" % torch.cuda.get_device_capability() if cuda else None,
    "nvcc": os.environ.get("NVCC_VERSION") or None,
    **{k.lower(): os.environ.get(k) for k in ("CUDA_HOME", "TORCH_CUDA_ARCH_LIST", "MAX_JOBS")},
    "packages": {p: version(p) for p in ("gsplat", "tyro", "typeguard", "docstring-parser", "typing-extensions")},
}

result = {"mode": os.environ["MODE"], "environment": environment, "steps": steps, "tests": tests,
          "training": training, "bench": read_json(work / "bench.json")}
(out / "gpu_check.json").write_text(json.dumps(result, indent=2))
print("[gpu_check] " + ", ".join(f"{name} {s['status']} {s['seconds']:.1f} s" for name, s in steps.items()))
if training:
    print("[gpu_check] training it/s: " + ", ".join(f"{k} {v:.2f}" for k, v in training["it_per_s"].items()))
print(f"[gpu_check] wrote {out / 'gpu_check.json'} and {out / 'gpu_check.log'}")
EOF
