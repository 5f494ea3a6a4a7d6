"""Benchmark the offline eval against plain FAISS doing the same exact and ANN searches, in the same run.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/bench_eval.py [--n 1000000] [--nlist 1024] [--queries 1000]

Stages a version of N synthetic clustered unit vectors (d=384): an `IVF{nlist},PQ96x4fs,RFlat` index from
kg-assets' builder, a catalog written by the real catalog writer, a tuning profile. Then, on the same seeded
self-queries (the eval's own sample), it times:
- plain FAISS: `faiss.knn` (exact top-k over the whole corpus) and `index.search` with the profile's knobs, on
  vectors and an index already in memory;
- ours: `evaluate_version` (load the index and the corpus vectors, both channels, metrics, pool hydrated from the
  catalog, pool.parquet + metrics.json, views), first cold (vectors read from DuckDB into the cache) and then warm
  (the cache memory-mapped), and its `faiss` channel alone.
Prints the ANN channel's throughput against plain `index.search` (goal >= 0.9) and the whole eval against exact +
ANN (goal <= 1.25). Wall times on a shared 2-core machine are noisy; compare the ratios, taken in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # imported after OMP_WAIT_POLICY is set
import numpy as np
import pyarrow as pa
from bench_tuning import clustered  # scripts/ is on sys.path when run as a script or through bench.py

from kg_assets.lib import catalog, faiss_index, idmap, query_sets, scip, tuning
from kg_assets.lib.evaluation import EvalSettings, evaluate_version
from kg_assets.lib.lifecycle import LifecycleRoot


def write_version(root: LifecycleRoot, work: Path, x: np.ndarray, ids: np.ndarray, factory: str, knobs: dict) -> None:
    """Stage version `bench`: index, ID map, catalog (every column eval reads), SCIP, tuning profile."""
    index, stats = faiss_index.build_index(x, ids, factory)
    print(f"built {factory}: train {stats.train_seconds:.1f}s on {stats.train_size}, add {stats.add_seconds:.1f}s")
    faiss_index.write_index(index, work / "faiss.index")
    idmap.write_idmap(idmap.idmap_table(ids, "faiss.index"), work / "faiss_idmap.parquet")
    n = len(ids)
    uris = [f"pkg/mod{i % 1000}.py" for i in range(n)]
    chunks = pa.table(
        {
            "chunk_id": pa.array(ids),
            "uri": uris,
            "language": ["python"] * n,
            "start_line": pa.array(np.ones(n, dtype=np.int32)),
            "end_line": pa.array(np.full(n, 3, dtype=np.int32)),
            "text": [f"def f{i}(x):\n    return x + {i}\n" for i in range(n)],
            "symbols": [[f"f{i}"] for i in range(n)],
        }
    )
    paths = sorted(set(uris))
    modules = pa.table({"repo_path": paths, "module_name": paths, "language": ["python"] * len(paths)})
    scip_path = work / "index.scip"
    scip_path.write_bytes(scip.empty_index("bench-eval", "1"))  # no source here
    scip_tables = scip.tables(scip.read_index(scip_path))
    meta = {"embedder": "synthetic", "embedder_fingerprint": "synthetic"}
    t0 = time.perf_counter()
    catalog.write_catalog(work / "catalog.duckdb", chunks, x, modules, scip_tables, work / "faiss_idmap.parquet", meta)
    print(f"catalog written in {time.perf_counter() - t0:.1f}s")
    (work / "tuning.json").write_text(json.dumps({"param_str": tuning.param_string(knobs), **knobs}))
    root.stage(
        "bench",
        work / "faiss.index",
        work / "catalog.duckdb",
        scip_path,
        idmap_path=work / "faiss_idmap.parquet",
        tuning_path=work / "tuning.json",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--k-factor", type=float, default=8.0, help="the profile's re-rank factor (IndexRefine)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-eval-") as scratch:
        work = Path(scratch)
        root = LifecycleRoot(work / "indexes")
        x = clustered(args.n, args.dim, 2000, seed=0)
        ids = np.arange(args.n, dtype=np.int64)
        knobs = {"nprobe": args.nprobe, "k_factor": args.k_factor}
        write_version(root, work, x, ids, f"IVF{args.nlist},PQ{args.dim // 4}x4fs,RFlat", knobs)

        index = faiss_index.read_index(root.version_dir("bench") / "faiss.index")
        tuning.set_knobs(index, knobs)
        queries = np.ascontiguousarray(x[query_sets.self_sample(ids, args.queries, seed=0)])
        index.search(queries, args.k)  # warm-up
        settings = EvalSettings(k=args.k, samples=args.queries, generated_queries=False, out_dir=work / "eval")
        t0 = time.perf_counter()
        evaluate_version(root, "bench", settings, run_id="cold")
        cold = time.perf_counter() - t0
        # Plain and ours alternate, so both see the same machine load; medians of the pairs.
        raw_exact, raw_ann, ours, ours_ann = [], [], [], []
        for repeat in range(args.repeats):
            t0 = time.perf_counter()
            _, truth = faiss.knn(queries, x, args.k, faiss.METRIC_INNER_PRODUCT)
            raw_exact.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _, found = index.search(queries, args.k)
            raw_ann.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            metrics = evaluate_version(root, "bench", settings, run_id=f"warm{repeat}")["metrics"]
            ours.append(time.perf_counter() - t0)
            ours_ann.append(metrics["latency_ms_per_query"]["faiss"] * args.queries / 1000)
        raw_recall = tuning.recall_at_k(found, ids[truth])
        exact_s, ann_s = statistics.median(raw_exact), statistics.median(raw_ann)
        warm, ours_ann_s = statistics.median(ours), statistics.median(ours_ann)

    recall = metrics["ann"]["recall_at_k"]
    print(f"{args.n:,} x {args.dim} vectors, {args.queries} queries, k {args.k}, profile {knobs}")
    print(f"recall@k: ours {recall}, plain FAISS {raw_recall:.4f} (the same search: they must agree)")
    print(f"plain FAISS: exact {exact_s:.2f}s, ANN {ann_s:.3f}s ({args.queries / ann_s:,.0f} QPS)")
    print(f"ours: faiss channel {ours_ann_s:.3f}s ({args.queries / ours_ann_s:,.0f} QPS)")
    print(f"ours: whole eval warm {warm:.2f}s (median of {args.repeats}), cold {cold:.2f}s (reads DuckDB once)")
    print(f"ratio ANN channel / plain FAISS throughput: {ann_s / ours_ann_s:.2f} (goal >= 0.9)")
    print(f"ratio whole eval (warm) / (exact + ANN): {warm / (exact_s + ann_s):.2f} (goal <= 1.25)")
    print(f"ratio whole eval (cold) / (exact + ANN): {cold / (exact_s + ann_s):.2f}")


if __name__ == "__main__":
    main()
