#!/usr/bin/env bash
# Install kg-assets into ./.venv (Python deps from PyPI) and the SCIP indexer into ./node_modules (npm).
# Idempotent: re-running only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"

if command -v npm >/dev/null 2>&1; then
  npm ci --no-audit --no-fund --loglevel=error
else
  echo "setup: npm not found; install Node.js >= 16 and npm to get the SCIP indexer (scip-python)" >&2
  exit 1
fi
echo "setup: ok (.venv and node_modules ready; activate with: source .venv/bin/activate)"
