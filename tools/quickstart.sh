#!/usr/bin/env bash
# sparse3d quick start: `bash tools/quickstart.sh demo` runs the end-to-end demo, `bash tools/quickstart.sh test`
# runs the test suite. Both first make sure a virtual env with sparse3d and its dependencies exists (.venv, or
# $SPARSE3D_VENV): CPU torch 2.13.0 when no NVIDIA GPU is visible (override with $SPARSE3D_TORCH_SPEC), the
# Debian package libusb-1.0-0 that open3d needs (installed with apt-get when running as root). Then it compiles the
# Warp kernels into Warp's kernel cache (a progress bar on the first run only; later runs find them cached).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SPARSE3D_VENV:-$ROOT/.venv}"
MODE="${1:-}"
[ $# -gt 0 ] && shift

usage() { echo "usage: bash tools/quickstart.sh demo|test [extra arguments]" >&2; exit 2; }
[ "$MODE" = demo ] || [ "$MODE" = test ] || usage

log() { printf '\033[1m[sparse3d]\033[0m %s\n' "$*" >&2; }

ensure_system_packages() {
  # open3d needs libusb; sparse3d-vis renders headless through Mesa's EGL (no X server needed).
  local have missing=()
  have="$(ldconfig -p 2>/dev/null || true)"
  grep -q 'libusb-1.0.so.0' <<<"$have" || missing+=(libusb-1.0-0)
  grep -q 'libEGL_mesa.so.0' <<<"$have" || missing+=(libegl1 libegl-mesa0 libgl1-mesa-dri)
  [ ${#missing[@]} -eq 0 ] && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing ${missing[*]} (open3d and headless rendering)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    log "warning: missing Debian packages ${missing[*]}; install them, e.g. 'sudo apt-get install ${missing[*]}'."
  fi
}

pick_python() {
  for py in python3.11 python3.12 python3.10 python3; do
    if command -v "$py" >/dev/null && "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
      echo "$py"; return
    fi
  done
  log "error: Python >= 3.10 not found"; exit 1
}

ensure_venv() {
  local stamp="$VENV/.sparse3d-installed"
  local want
  want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual env $VENV"
    "$(pick_python)" -m venv "$VENV"
  fi
  local pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
  "${pip[@]}" install --upgrade pip setuptools wheel >/dev/null
  if [ -n "${SPARSE3D_TORCH_SPEC:-}" ]; then
    log "installing ${SPARSE3D_TORCH_SPEC}"
    "${pip[@]}" install "${SPARSE3D_TORCH_SPEC}"
  elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    log "NVIDIA GPU found: installing CUDA torch"
    "${pip[@]}" install "torch>=2.4"
  else
    log "no GPU: installing CPU torch 2.13.0"
    "${pip[@]}" install "torch==2.13.0"
  fi
  log "installing sparse3d (editable) with its dependencies"
  "${pip[@]}" install -e "$ROOT[dev]"
  echo "$want" > "$stamp"
}

compile_kernels() {
  # Compile now, with a progress bar, rather than inside the first training step (cached after the first run).
  "$VENV/bin/python" -m sparse3d.kernels.warmup --device "$1"
}

ensure_system_packages
ensure_venv
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
case "$MODE" in
  demo)
    compile_kernels auto
    log "demo 1/2: generate synthetic LiDAR scenes, voxelise, train a sparse-conv U-Net, write a summary"
    sparse3d-train experiment=quickstart "$@"
    log "demo 2/2: SparseFlex: remesh a generated open sheet with holes at 256^3 (it stays open), picture it headless"
    DEMO_DIR="outputs/demo"
    sparse3d-data fit_shapes out_dir="$DEMO_DIR/shapes" 'generator.names=[sheet]'
    sparse3d-mesh input="$DEMO_DIR/shapes/sheet.ply" resolution=256 out="$DEMO_DIR/sheet_256.ply"
    sparse3d-eval evaluator=mesh pred="$DEMO_DIR/sheet_256.ply" gt="$DEMO_DIR/shapes/sheet.ply" distance=surface
    sparse3d-vis "$DEMO_DIR/sheet_256.ply" --view iso --save "$DEMO_DIR/sheet_256.png"
    log "demo done: $DEMO_DIR/sheet_256.png"
    ;;
  test)
    compile_kernels cpu
    # The pytest executable (not `python -m pytest`) keeps the repo root off sys.path.
    export SPARSE3D_RUN_SLOW=1  # the whole suite, slow integration runs included
    exec pytest -q "$@"
    ;;
esac
