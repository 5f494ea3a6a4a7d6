"""Small real artifacts for tests and the lifecycle demo: a FAISS index, a DuckDB catalog, a SCIP index,
an ID map and a tuning profile that agree with each other.

`python -m kg_assets_tests.sample_artifacts --out DIR [--n 500] [--dim 32] [--seed 0]`
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from kg_assets.lib import faiss_index, idmap, scip

FILES = {
    "faiss": "code.faiss",
    "duckdb": "catalog.duckdb",
    "scip": "index.scip",
    "idmap": "faiss_idmap.parquet",
    "tuning": "tuning.json",
}


def clustered_vectors(n: int, dim: int, seed: int, clusters: int = 16) -> np.ndarray:
    """Unit vectors drawn around `clusters` random centres (not i.i.d. noise, so IVF behaves as on real data)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def scip_bytes(paths: list[str]) -> bytes:
    """A small SCIP index with one definition per document, built with the reader's own message classes."""
    classes = scip.message_classes()
    index = classes["Index"]()
    index.metadata.tool_info.name = "kg-assets-tests"
    index.metadata.tool_info.version = "1"
    index.metadata.project_root = "file:///repo"
    for i, path in enumerate(paths):
        doc = index.documents.add(relative_path=path, language="python")
        symbol = f"scip-python python sample 0 `{path[:-3].replace('/', '.')}`/f{i}()."
        doc.occurrences.add(range=[0, 4, 0, 8], symbol=symbol, symbol_roles=scip.ROLE_DEFINITION)
        doc.occurrences.add(range=[3, 0, 3, 4], symbol=symbol, symbol_roles=8)
        doc.symbols.add(symbol=symbol, display_name=f"f{i}", kind=17)
    return index.SerializeToString()


def write_sample(out: Path, n: int = 500, dim: int = 32, seed: int = 0, factory: str = "IVF8,Flat") -> dict[str, Path]:
    """Write the five artifacts into `out` and return their paths by kind (keys of FILES)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / name for kind, name in FILES.items()}
    x = clustered_vectors(n, dim, seed)
    rng = np.random.default_rng(seed + 1)
    ids = rng.choice(np.iinfo(np.int64).max, size=n, replace=False).astype(np.int64) - (1 << 62)
    index, _ = faiss_index.build_index(x, ids, factory, seed=seed)
    faiss_index.write_index(index, paths["faiss"])
    idmap.write_idmap(idmap.idmap_table(ids, FILES["faiss"]), paths["idmap"])
    uris = [f"pkg/mod{i % 7}.py" for i in range(n)]
    paths["duckdb"].unlink(missing_ok=True)
    rows = pa.table(
        {
            "chunk_id": pa.array(ids),
            "uri": uris,
            "text": [f"def f{k}(): pass" for k in range(n)],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim),
        }
    )
    with duckdb.connect(str(paths["duckdb"])) as con:
        con.register("rows", rows)
        con.execute(
            f"CREATE TABLE chunks AS SELECT * EXCLUDE (embedding), embedding::FLOAT[{dim}] AS embedding FROM rows"
        )
        con.execute("CREATE TABLE kg_meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
        # Recorded as an OpenAI-compatible endpoint of the sample's dimension: searchable as far as health can
        # tell without a model (nothing connects to it unless a text query is embedded).
        spec = f"http://127.0.0.1:9#sample-clustered#{dim}"
        con.executemany(
            "INSERT INTO kg_meta VALUES (?, ?)", [("embedder", "sample-clustered"), ("embedder_spec", spec)]
        )
    paths["scip"].write_bytes(scip_bytes(sorted(set(uris))))
    paths["tuning"].write_text(json.dumps({"param_str": "nprobe=4", "nprobe": 4, "k_factor": 1.0}))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for kind, path in write_sample(args.out, args.n, args.dim, args.seed).items():
        print(f"{kind}\t{path}")


if __name__ == "__main__":
    main()
