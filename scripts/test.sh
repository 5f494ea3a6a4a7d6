#!/usr/bin/env bash
# Lint and run the test suite (expects scripts/setup.sh to have run).
# The `ui` tests (kg_assets_tests/ui: real `dagster dev`, headless Chromium) run when CI=true or KG_UI_TESTS=1.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check kg_assets kg_assets_tests scripts
.venv/bin/ruff format --check kg_assets kg_assets_tests scripts
.venv/bin/python -m pytest -q "$@"
