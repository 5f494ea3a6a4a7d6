"""Benchmark `tune` against plain FAISS doing the same sweep, in the same run.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/bench_tuning.py [--n 1000000] [--nlist 1024] [--queries 200]

On N synthetic clustered unit vectors (d=384) it builds one `IVF{nlist},PQ96x4fs,RFlat` index with kg-assets'
builder, then times, each including exact ground truth over the whole corpus:
- ours, quick: `tuning.sweep(..., full=False)` (bisection on nprobe per k_factor);
- ours, full: `tuning.sweep(..., full=True)` (the whole grid, frontier re-timed 3x);
- FAISS: `ParameterSpace.explore` restricted to the same nprobe and k_factor_rf values.
It prints the time ratio quick / explore (goal <= 1.5) and the chosen points' speed ratio quick / full at the
same target (goal >= 0.9). Wall times on a shared 2-core machine are noisy; compare the ratios.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # imported after OMP_WAIT_POLICY is set
import numpy as np

from kg_assets.lib import faiss_index, tuning
from kg_assets.lib.channels import Corpus


def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Unit vectors around `clusters` centres, generated in blocks to bound peak memory."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        block = centres[rng.integers(0, clusters, m)] + 0.4 * rng.standard_normal((m, dim)).astype(np.float32)
        out[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()

    t0 = time.perf_counter()
    x = clustered(args.n, args.dim, 2000, seed=0)
    ids = np.arange(args.n, dtype=np.int64)
    factory = f"IVF{args.nlist},PQ{args.dim // 4}x4fs,RFlat"
    index, stats = faiss_index.build_index(x, ids, factory)
    print(
        f"built {factory} on {args.n} x {args.dim} in {time.perf_counter() - t0:.1f}s "
        f"(train {stats.train_seconds:.1f}s on {stats.train_size}, add {stats.add_seconds:.1f}s)"
    )
    rows = np.random.default_rng(1).choice(args.n, args.queries, replace=False)
    queries = np.ascontiguousarray(x[rows])

    corpus = Corpus(ids, x)  # ids are sorted: the re-rank's row lookups
    t0 = time.perf_counter()
    _, truth = tuning.exact_topk(queries, x, ids, args.k)
    gt_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    quick, _, quick_points = tuning.sweep(index, corpus, queries, truth, args.target, full=False)
    quick_s = time.perf_counter() - t0 + gt_s
    t0 = time.perf_counter()
    full, frontier, full_points = tuning.sweep(index, corpus, queries, truth, args.target, full=True)
    full_s = time.perf_counter() - t0 + gt_s

    # Plain FAISS: the same ground truth computed again, then explore over the same knob values.
    refine = faiss.downcast_index(index.index)
    t0 = time.perf_counter()
    _, gt_rows = faiss.knn(queries, x, args.k, faiss.METRIC_INNER_PRODUCT)
    space = faiss.ParameterSpace()
    space.verbose = 0
    knobs = tuning.index_knobs(index)
    for name, values in (("nprobe", knobs["nprobe"]), ("k_factor_rf", knobs["k_factor"])):
        faiss.copy_array_to_vector(np.array(values, dtype=np.float64), space.add_range(name).values)
    criterion = faiss.IntersectionCriterion(args.queries, args.k)
    criterion.set_groundtruth(None, gt_rows.astype(np.int64))
    points = space.explore(refine, queries, criterion)
    explore_s = time.perf_counter() - t0
    best = None
    for i in range(points.optimal_pts.size()):
        op = points.optimal_pts.at(i)
        if op.perf >= args.target and (best is None or op.t < best.t):
            best = op

    def show(label: str, point: tuning.Point, seconds: float, measured: int) -> None:
        print(
            f"{label:<14} {seconds:6.1f}s  {measured:3d} points  chose {point.params}  "
            f"recall {point.recall:.3f}  {point.qps:,.0f} QPS"
        )

    print(f"ground truth   {gt_s:6.1f}s  ({args.queries} queries x {args.n} vectors, exact)")
    show("ours quick", quick, quick_s, len(quick_points))
    show("ours full", full, full_s, len(full_points))
    chosen = f"{best.key} perf {best.perf:.3f} {args.queries / best.t:,.0f} QPS" if best else "none reached target"
    print(f"faiss explore  {explore_s:6.1f}s  {points.all_pts.size():3d} points  chose {chosen}")
    print(f"ratio quick/explore time: {quick_s / explore_s:.2f} (goal <= 1.5)")
    print(f"ratio quick/full chosen QPS: {quick.qps / full.qps:.2f} (goal >= 0.9)")
    print(f"full mode: {full_s:.1f}s (goal < 120 s); frontier {len(frontier)} points")


if __name__ == "__main__":
    main()
