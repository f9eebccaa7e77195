#!/usr/bin/env bash
# The one-call GPU benchmark of jtts (issue 13). How to spend a lent GPU on it: docs/gpu.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage:
  benchmarks/gpu.sh --prepare [--dle PATH]
      Here, BEFORE the device call (the GPU machine reaches no registry): downloads into .gpu/ (git-ignored)
      the wheels its image lacks (benchmarks/gpu_wheels.txt, py3.12 manylinux, the versions in .venv) and a
      fallback flax wheel; with --dle, copies DLE's modules (PATH: DeepLearningExamples checkout, its
      PyTorch/SpeechSynthesis/Tacotron2 directory, or the bare mirror the search tool's fetch leaves) into
      .gpu/dle and adds the wheels they import. Prints what will travel (limit 64 MiB).
  benchmarks/gpu.sh [gpu_bench.py options]
      On the GPU machine: device tool `run` with carry [".gpu"], command "bash benchmarks/gpu.sh",
      timeout_s 480. Installs .gpu's wheels under /tmp, puts this checkout's jtts on PYTHONPATH, runs
      benchmarks/gpu_bench.py and writes $OUT/benchmark-gpu.md (copy it to docs/), .json and gpu_bench.log.
  benchmarks/gpu.sh --learn [gpu_learn.py device options, e.g. --minutes 8]
      On the GPU machine: continue a training run packed into .gpu/learn by `benchmarks/gpu_learn.py pack`
      (issue 10; docs/learning.md). carry [".gpu"], timeout_s 600.
  benchmarks/gpu.sh --dry-run [gpu_bench.py options, e.g. --out /tmp/gpu.md]
      The same path on this CPU with tiny models, no wheels (CI runs it through tests/test_gpu_bench.py).
Environment: PYTHON (default python3; .venv/bin/python for --prepare and --dry-run when it exists),
GPU_DIR (default .gpu).
EOF
}

cd "$(dirname "$0")/.."
REPO=$PWD
GPU_DIR=${GPU_DIR:-$REPO/.gpu}
MODE=run
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --prepare) MODE=prepare; shift ;;
  --dry-run) MODE=dry; shift ;;
  --learn) MODE=learn; shift ;;
esac
if [[ $MODE != run && $MODE != learn && -z ${PYTHON:-} && -x $REPO/.venv/bin/python ]]; then
  PYTHON=$REPO/.venv/bin/python
fi
PY=${PYTHON:-python3}

wheel_names() {  # core | dle
  if [[ $1 == core ]]; then sed -e 's/#.*//' -e '/^dle:/d' benchmarks/gpu_wheels.txt | xargs
  else sed -n 's/^dle://p' benchmarks/gpu_wheels.txt | sed 's/#.*//' | xargs; fi
}

download() {  # DIR NAME: the version installed here (tested here), else the newest
  local pin
  pin=$("$PY" -c 'import importlib.metadata as m, sys; print("==" + m.version(sys.argv[1]))' "$2" 2>/dev/null) || pin=""
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$1" "$2$pin"
}

copy_dle() {  # SOURCE -> $GPU_DIR/dle: only the modules gpu_bench imports (models.py and three packages)
  local src=$1 sub=PyTorch/SpeechSynthesis/Tacotron2 parts="models.py tacotron2 waveglow tacotron2_common"
  rm -rf "$GPU_DIR/dle" && mkdir -p "$GPU_DIR/dle"
  [[ -f $src/models.py ]] || { [[ -f $src/$sub/models.py ]] && src=$src/$sub; }
  if [[ -f $src/models.py ]]; then
    for p in $parts; do cp -r "$src/$p" "$GPU_DIR/dle/"; done
  elif git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
    # shellcheck disable=SC2046
    git -C "$src" archive HEAD $(for p in $parts; do echo "$sub/$p"; done) | tar -x -C "$GPU_DIR/dle" --strip-components=3
  else
    echo "gpu.sh: --dle $src: neither DLE's Tacotron2 directory, a DeepLearningExamples checkout nor its git mirror" >&2
    exit 2
  fi
}

prepare() {
  local dle=""
  while [[ $# -gt 0 ]]; do
    case $1 in
      --dle) dle=$2; shift 2 ;;
      *) usage >&2; exit 2 ;;
    esac
  done
  rm -rf "$GPU_DIR/wheels" "$GPU_DIR/fallback"
  mkdir -p "$GPU_DIR/wheels" "$GPU_DIR/fallback"
  for name in $(wheel_names core); do download "$GPU_DIR/wheels" "$name"; done
  # installed there only if the image's flax predates nnx.List (flax 0.12), see run_on_device
  download "$GPU_DIR/fallback" flax
  if [[ -n $dle ]]; then
    copy_dle "$dle"
    for name in $(wheel_names dle); do download "$GPU_DIR/wheels" "$name"; done
  fi
  local rel exclude
  rel=$(realpath --relative-to="$REPO" "$GPU_DIR")
  if [[ $rel != ..* ]] && ! git check-ignore -q "$GPU_DIR"; then
    # untracked and not ignored, it would travel twice and show in git status
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")" && echo "/$rel/" >> "$exclude"
    echo "gpu.sh: $rel was not ignored by git; added to $exclude (add /.gpu/ to .gitignore)"
  fi
  local tree carried
  tree=$(git ls-files -z -co --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
  carried=$(du -sb "$GPU_DIR" | cut -f1)
  ls -l "$GPU_DIR/wheels" "$GPU_DIR/fallback"
  awk -v t="$tree" -v c="$carried" 'BEGIN {
    printf "will travel: working tree %.1f MiB + .gpu %.1f MiB = %.1f MiB of 64 MiB\n", t / 2^20, c / 2^20, (t + c) / 2^20
    if (t + c > 60 * 2^20) { print "gpu.sh: too close to the 64 MiB limit"; exit 1 } }'
}

stage_python_path() {  # jtts from this checkout (its package dirs are mapped: jtts.convert is convert/), wheels
  STAGE=$(mktemp -d "${TMPDIR:-/tmp}/jtts-gpu.XXXXXX")
  trap 'rm -rf "$STAGE"' EXIT
  mkdir -p "$STAGE/src" "$STAGE/site"
  cp -r "$REPO/jtts" "$STAGE/src/jtts"
  ln -s "$REPO/convert" "$STAGE/src/jtts/convert"
  ln -s "$REPO/train" "$STAGE/src/jtts/train"
  if [[ $MODE != dry ]] && ! compgen -G "$GPU_DIR/wheels/*.whl" >/dev/null; then
    echo "gpu.sh: no wheels in $GPU_DIR/wheels: run 'benchmarks/gpu.sh --prepare' before the call, carry [\".gpu\"]" >&2
    exit 2
  fi
  if [[ $MODE != dry ]]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$STAGE/site" \
      "$GPU_DIR"/wheels/*.whl
  fi
  # Safe path: without it `python -c`/`-m` put the checkout first on sys.path, and its jtts/ (no convert/ or
  # train/ inside: pyproject maps those) hides the staged one wherever jtts is not pip-installed, as there.
  # The scripts' own folder then has to be named.
  export PYTHONSAFEPATH=1
  export PYTHONPATH="$STAGE/src:$STAGE/site:$REPO/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
  if ! "$PY" -c 'from flax import nnx; nnx.List' 2>/dev/null; then
    compgen -G "$GPU_DIR/fallback/flax-*.whl" >/dev/null ||
      { echo "gpu.sh: this flax lacks nnx.List and $GPU_DIR/fallback has no flax wheel (run --prepare)" >&2; exit 1; }
    echo "gpu.sh: the image's flax lacks nnx.List; installing $(basename "$GPU_DIR"/fallback/flax-*.whl)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$STAGE/site" \
      "$GPU_DIR"/fallback/flax-*.whl
  fi
  # fail in seconds, not after the weights are built, if an import is missing
  "$PY" -c 'import jax, torch, orbax.checkpoint, jtts.convert, jtts.text, jtts.denoiser'
}

run_on_device() {
  local args=("$@") dle_given=0 out=${OUT:-$REPO/out/gpu}
  for a in "$@"; do [[ $a == --dle ]] && dle_given=1; done
  if [[ $dle_given == 0 && -f $GPU_DIR/dle/models.py ]]; then args+=(--dle "$GPU_DIR/dle"); fi
  mkdir -p "$out"
  export PYTHONUNBUFFERED=1
  # JAX takes this share of the card at start; the PyTorch reference and DLE allocate from the rest
  export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.4}
  nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm --format=csv,noheader || true
  "$PY" benchmarks/gpu_bench.py --out "$out/benchmark-gpu.md" --out docs/benchmark-gpu.md \
    --json "$out/benchmark-gpu.json" "${args[@]}" 2>&1 | tee "$out/gpu_bench.log"
}

main() {
  case $MODE in
    prepare) prepare "$@" ;;
    dry) stage_python_path; "$PY" benchmarks/gpu_bench.py --dry-run "$@" ;;
    run) stage_python_path; run_on_device "$@" ;;
    learn) stage_python_path; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
           PYTHONUNBUFFERED=1 "$PY" benchmarks/gpu_learn.py device "$@" ;;
  esac
}

# one line, read whole before it runs: editing this file during a run cannot change what the run does
main "$@"; exit $?
