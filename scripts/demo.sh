#!/usr/bin/env bash
# Lifecycle round trip on small real artifacts, through indexctl and a persistent Dagster instance:
# two versions are staged, published, rolled back and listed. The SCIP index is real scip-python output
# for this repository; the FAISS index, ID map and DuckDB catalog are small clustered sample vectors
# (the build pipeline that embeds real code chunks replaces them).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

demo=${DEMO_DIR:-$PWD/build/demo}
rm -rf "$demo"
mkdir -p "$demo/inputs"
export KG_INDEXES_DIR="$demo/indexes"
unset DAGSTER_HOME   # indexctl then keeps run history in $KG_INDEXES_DIR/.dagster

echo "== SCIP index of kg_assets/ (scip-python)"
echo '[]' > "$demo/inputs/env.json"
node_modules/.bin/scip-python index --cwd "$PWD" --target-only kg_assets --project-name kg-assets \
  --project-version demo --environment "$demo/inputs/env.json" --output "$demo/inputs/index.scip" --quiet

for v in v1 v2; do
  seed=$([ "$v" = v1 ] && echo 1 || echo 2)
  python -m kg_assets_tests.sample_artifacts --out "$demo/inputs/$v" --n 2000 --dim 64 --seed "$seed" >/dev/null
  cp "$demo/inputs/index.scip" "$demo/inputs/$v/index.scip"
  echo "== indexctl stage $v"
  indexctl stage "$v" "$demo/inputs/$v/code.faiss" "$demo/inputs/$v/catalog.duckdb" "$demo/inputs/$v/index.scip" \
    --faiss-idmap "$demo/inputs/$v/faiss_idmap.parquet" --tuning "$demo/inputs/$v/tuning.json"
done

echo "== indexctl publish v1";  indexctl publish v1
echo "== indexctl publish v2";  indexctl publish v2
echo "== indexctl rollback v1"; indexctl rollback v1
echo "== indexctl status";      indexctl status
echo "== indexctl ls";          indexctl ls
echo
echo "Run history: DAGSTER_HOME=$KG_INDEXES_DIR/.dagster KG_INDEXES_DIR=$KG_INDEXES_DIR dagster dev -w workspace.yaml"
