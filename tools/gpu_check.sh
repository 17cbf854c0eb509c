#!/usr/bin/env bash
# One-command GPU check (make gpu-check). The device machine (one H100, Python 3.12, CUDA torch 2.11, no network)
# gets the working tree plus the carried folder .gpucarry/ (git-ignored), which this script stages:
#   .gpucarry/ComfyUI     ComfyUI 0.30.0 from .comfyui/ComfyUI, without what a headless in-process boot never
#                         reads (tests, CI, API and extra nodes, blueprints, tokenizer vocabularies; the frontend is
#                         a pip package and stays behind)
#   .gpucarry/wheels      cp312 manylinux wheels of what that boot imports and the device image lacks, at the
#                         versions of the .comfyui host (comfy-kitchen without its compiled kernels, see below)
#   .gpucarry/stand_ins   av: ComfyUI imports PyAV at start-up, its 37 MB wheel does not fit (tools/device/)
# then prints the device `run` call (command, carry, timeout) and the sizes that travel, and smoke-tests the staged
# tree on this CPU machine: bench/gpu_psld.py --smoke with the .comfyui host's Python and the av stand-in.
#   bash tools/gpu_check.sh               stage, print the run call, smoke test
#   bash tools/gpu_check.sh --stage-only  stage and print the run call
# Staging needs PyPI once; downloaded wheels are kept in .cache/gpu_wheels/.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
PY=.comfyui/venv/bin/python
SOURCE=.comfyui/ComfyUI
CARRY=.gpucarry
DOWNLOADS=.cache/gpu_wheels
BUDGET_MIB=60   # the device takes 64 MiB per call: tracked + untracked-not-ignored files + carried paths

# Imported by ComfyUI 0.30's start-up (main.py, nodes.py, server.py) or by loading a custom node, absent from the
# device image (.library/device/KINDS.md, 2026-11-17). Found by booting with `python -X importtime`.
MISSING_PACKAGES=(
  comfy-aimdo                                   # main.py: dynamic VRAM
  comfy-kitchen                                 # comfy.quant_ops (fp8 / fp4 layouts)
  torchsde trampoline                           # comfy.k_diffusion.sampling
  SQLAlchemy alembic Mako blake3                # main.py -> app.assets, app.database
  pydantic pydantic_core annotated-types typing-inspection typing_extensions  # server.py -> app.assets.api
  pydantic-settings python-dotenv               # comfy_config.config_parser (custom-node loading)
)
# typing_extensions: the device has one, but pydantic 2.14 needs >= 4.16 and the device's version is not recorded.
# comfy-kitchen: its CUDA and ROCm kernels are 45 MB of the wheel; ComfyUI calls them for quantized (fp8/fp4)
# weights and the rope of other model families (Flux, LTX, ...), never for fp16 SD1.5 / SDXL, so the staged wheel
# keeps the Python package (tensor layouts, eager and Triton backends) and drops the two _C.abi3.so files (the CUDA
# backend then reports itself unavailable and comfy-kitchen falls back to eager).
KITCHEN_KERNELS='comfy_kitchen/backends/*/_C.abi3.so'
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux2010_x86_64 manylinux1_x86_64)

die() { echo "gpu_check: $*" >&2; exit 1; }

check_host() {
  [ -x "$PY" ] && [ -f "$SOURCE/comfyui_version.py" ] || die "no ComfyUI 0.30 host: run make host-current"
  local version
  version=$("$PY" -c "import runpy; print(runpy.run_path('$SOURCE/comfyui_version.py')['__version__'])")
  [ "$version" = 0.30.0 ] || die "$SOURCE is ComfyUI $version, expected 0.30.0"
}

stage_comfyui() {
  rm -rf "$CARRY/ComfyUI"
  mkdir -p "$CARRY/ComfyUI"
  tar -C "$SOURCE" -cf - --exclude=__pycache__ --exclude='*.pyc' \
      --exclude=./.ci --exclude=./.github --exclude=./tests --exclude=./tests-unit --exclude=./script_examples \
      --exclude=./comfy_api_nodes --exclude=./comfy_extras --exclude=./blueprints --exclude=./openapi.yaml \
      --exclude=./input --exclude=./output --exclude=./user --exclude=./temp \
      --exclude='./comfy/text_encoders/*_tokenizer' --exclude=./comfy/sd1_tokenizer \
      --exclude=./comfy/comfy_types/examples . | tar -C "$CARRY/ComfyUI" -xf -
}

pinned() {  # NAME==VERSION as installed in the .comfyui host
  echo "$1==$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1")"
}

wheel_prefix() {  # a wheel file's name-version prefix (PEP 427: lower case, runs of -_. as _)
  local name=${1%%==*} version=${1##*==}
  echo "$(echo "$name" | tr 'A-Z' 'a-z' | sed -E 's/[-_.]+/_/g')-$version-"
}

download_wheels() {
  mkdir -p "$DOWNLOADS"
  local spec platform_args=()
  for platform in "${PLATFORMS[@]}"; do platform_args+=(--platform "$platform"); done
  for package in "${MISSING_PACKAGES[@]}"; do
    spec=$(pinned "$package")
    compgen -G "$DOWNLOADS/$(wheel_prefix "$spec")*.whl" > /dev/null && continue
    "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${platform_args[@]}" -d "$DOWNLOADS" "$spec"
  done
}

stage_wheels() {
  rm -rf "$CARRY/wheels"
  mkdir -p "$CARRY/wheels"
  local spec wheel
  for package in "${MISSING_PACKAGES[@]}"; do
    spec=$(pinned "$package")
    wheel=$(compgen -G "$DOWNLOADS/$(wheel_prefix "$spec")*.whl" | head -1)
    [ -n "$wheel" ] || die "no wheel for $spec in $DOWNLOADS"
    if [ "$package" = comfy-kitchen ]; then
      copy_wheel_without "$wheel" "$CARRY/wheels/$(basename "$wheel")" "$KITCHEN_KERNELS"
    else
      cp "$wheel" "$CARRY/wheels/"
    fi
  done
}

copy_wheel_without() {  # SOURCE TARGET GLOB: the wheel without the members matching GLOB, RECORD rewritten to match
  "$PY" - "$@" <<'PYTHON'
import fnmatch, sys, zipfile
source, target, pattern = sys.argv[1:]
with zipfile.ZipFile(source) as wheel, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
    dropped = [i.filename for i in wheel.infolist() if fnmatch.fnmatch(i.filename, pattern)]
    if not dropped:
        sys.exit(f"{source}: nothing matches {pattern}")
    for info in wheel.infolist():
        if info.filename in dropped:
            continue
        data = wheel.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines(keepends=True)
            data = "".join(line for line in lines if line.split(",", 1)[0] not in dropped).encode()
        out.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
print(f"  {target.rsplit('/', 1)[-1]}: dropped {', '.join(dropped)}")
PYTHON
}

stage_stand_ins() {
  rm -rf "$CARRY/stand_ins"
  mkdir -p "$CARRY/stand_ins"
  cp -r tools/device/av_stand_in/av "$CARRY/stand_ins/"
  find "$CARRY/stand_ins" -name __pycache__ -prune -exec rm -rf {} +
}

sum_bytes() { xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }

report_sizes() {
  local tracked untracked carried total
  tracked=$(git ls-files -z | sum_bytes)
  untracked=$(git ls-files -z --others --exclude-standard | sum_bytes)
  carried=$(find "$CARRY" -type f -print0 | sum_bytes)
  total=$((tracked + untracked + carried))
  echo "travels: tracked $(mib "$tracked") + untracked $(mib "$untracked") + $CARRY $(mib "$carried")" \
       "= $(mib "$total") (budget $BUDGET_MIB MiB, device limit 64 MiB)"
  for part in "$CARRY"/*; do echo "  $part: $(mib "$(find "$part" -type f -print0 | sum_bytes)")"; done
  [ "$total" -le $((BUDGET_MIB * 1048576)) ] || die "over the $BUDGET_MIB MiB budget"
}

# The device command: install the wheels, then the benchmark (SD1.5 at 512 px, then SDXL at 1024 px, both ComfyUI
# start-up modes), its log, JSON and per-worker logs into $OUT. timeout stops it at 8 minutes, well before the
# call's 600 s limit, with every finished row already printed.
device_command() {
  echo "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site" \
       ".gpucarry/wheels/*.whl && export PYTHONPATH=/tmp/site:\$PWD/.gpucarry/stand_ins || exit;" \
       "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; set -o pipefail;" \
       "PYTHONUNBUFFERED=1 timeout 480 python3 bench/gpu_psld.py --comfy .gpucarry/ComfyUI --models sd15,sdxl" \
       "--worker-log \$OUT --json \$OUT/gpu_psld.json 2>&1 | tee \$OUT/gpu_psld.log"
}

print_run_call() {
  local command
  command=$(device_command)
  [ ${#command} -lt 2000 ] || die "device command is ${#command} characters (limit 2000)"
  "$PY" -c 'import json, sys; print(json.dumps({"command": sys.argv[1], "carry": [".gpucarry"], "timeout_s": 600}))' \
      "$command" > "$CARRY/run.json"
  echo "device run call (${#command} characters; also in $CARRY/run.json):"
  cat "$CARRY/run.json"
  echo "(about 8 minutes; the benchmark stops at 480 s with every finished row printed. SD1.5 alone, for a rerun:" \
       "the same command with --models sd15)"
}

smoke() {
  echo "CPU smoke check of the staged tree:"
  PYTHONPATH="$REPO/$CARRY/stand_ins${PYTHONPATH:+:$PYTHONPATH}" \
      "$PY" bench/gpu_psld.py --smoke --comfy "$CARRY/ComfyUI"
}

main() {
  local stage_only=0
  case "${1:-}" in
    --stage-only) stage_only=1 ;;
    "") ;;
    *) die "usage: tools/gpu_check.sh [--stage-only]" ;;
  esac
  check_host
  echo "staging $CARRY/ from $SOURCE (ComfyUI 0.30.0)"
  stage_comfyui
  download_wheels
  stage_wheels
  stage_stand_ins
  ls "$CARRY/wheels" | sed 's/^/  /'
  report_sizes
  print_run_call
  [ "$stage_only" = 1 ] || smoke
}

main "$@"
