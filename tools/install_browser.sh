#!/usr/bin/env bash
# What the browser tests (tests/browser) need: Debian's Chromium, and the Playwright Python package in the Python
# that runs pytest. No browser is downloaded: the tests drive /usr/bin/chromium (never `playwright install`).
# Usage: tools/install_browser.sh [PYTHON]      (default: $PY, else .comfyui/venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${PY:-.comfyui/venv/bin/python}}
PLAYWRIGHT_VERSION=1.65.2
CHROMIUM=${PSLD_CHROMIUM:-/usr/bin/chromium}

if [[ ! -x "$CHROMIUM" ]]; then
  if [[ $(id -u) -eq 0 ]]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "install_browser: $CHROMIUM is missing and this user cannot install it (apt-get install chromium)" >&2
    exit 1
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

if ! "$PY" -c "import playwright, sys; sys.exit(0)" 2>/dev/null; then
  "$PY" -m pip install -q "playwright==$PLAYWRIGHT_VERSION"
fi

"$CHROMIUM" --version 2>/dev/null | grep -i chromium
"$PY" -c "from importlib.metadata import version; print('playwright', version('playwright'))"
