#!/usr/bin/env bash
# Install kg-assets into ./.venv (Python deps from PyPI) and the SCIP indexer into ./node_modules (npm).
# With CI=true or KG_UI_TESTS=1 it also installs what the UI tests need: Playwright (the `ui` extra) and
# Debian's chromium (apt-get, as root); Playwright drives that binary and never downloads a browser.
# Idempotent: re-running only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=dev
if [ "${CI:-}" = "true" ] || [ "${KG_UI_TESTS:-}" = "1" ]; then
  extras=dev,ui
  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
      echo "setup: the UI tests need Debian's chromium; run as root or: sudo apt-get install chromium" >&2
      exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[$extras]"

if command -v npm >/dev/null 2>&1; then
  npm ci --no-audit --no-fund --loglevel=error
else
  echo "setup: npm not found; install Node.js >= 16 and npm to get the SCIP indexer (scip-python)" >&2
  exit 1
fi
echo "setup: ok (.venv and node_modules ready; activate with: source .venv/bin/activate)"
