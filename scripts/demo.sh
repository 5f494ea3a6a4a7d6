#!/usr/bin/env bash
# End to end on this repository's own source tree: publish a fast version (the static embedder; searchable in
# seconds), then the full one (chunks, MiniLM embeddings, scip-python, FAISS, DuckDB catalog), one Dagster run
# each; search it, evaluate it, and show the lifecycle state.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

demo=${DEMO_DIR:-$PWD/build/demo}
rm -rf "$demo"
export KG_INDEXES_DIR="$demo/indexes"
unset DAGSTER_HOME   # indexctl then keeps run history in $KG_INDEXES_DIR/.dagster

echo "== indexctl build v1 --repo . --publish --progressive"
indexctl build v1 --repo . --publish --progressive
echo
echo "== indexctl search \"atomically flip the CURRENT pointer\" -k 5"
indexctl search "atomically flip the CURRENT pointer" -k 5
echo
echo "== indexctl search \"split python files into chunks along function definitions\" -k 5"
indexctl search "split python files into chunks along function definitions" -k 5
echo
echo "== indexctl eval --k 12 --k-factor 2.0 --nprobe 64 --xtr-oracle   (runbook section 5)"
KG_EVAL_DIR="$demo/eval" indexctl eval --k 12 --k-factor 2.0 --nprobe 64 --xtr-oracle
echo
echo "== indexctl status"
indexctl status
echo
echo "UI over the same runs: DAGSTER_HOME=$KG_INDEXES_DIR/.dagster KG_INDEXES_DIR=$KG_INDEXES_DIR dagster dev -w workspace.yaml"
