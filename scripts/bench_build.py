"""Benchmark `indexctl build` against its raw parts run directly, in the same run.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/bench_build.py [--min-chunks 5000] [--source DIR]

Copies Python files from `--source` (default: the installed dagster package) into a scratch repository until
chunking yields at least `--min-chunks` chunks, then:
1. builds it with the real pipeline (one Dagster run, in a subprocess so its peak memory is its own);
2. runs the raw parts on exactly the same inputs: the embedder over the same texts, FAISS train + add of the
   same vectors with the same factory;
3. rebuilds with no change (everything reused that can be).
Prints per-stage chunks/s, the ratio build / (raw embed + raw FAISS) (goal <= 1.2), peak memory against
vectors + model (goal < 2x), and the no-change rebuild as a fraction of the first build (goal < 0.2).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # imported after OMP_WAIT_POLICY is set
import numpy as np

from kg_assets.lib import build, catalog, chunking, faiss_index
from kg_assets.lib.embedding import load_embedder

_BUILD = """
import json, resource, sys, time
from pathlib import Path
from kg_assets.cli.runs import run_build
t0 = time.perf_counter()
summary = run_build(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
summary["wall"] = time.perf_counter() - t0
summary["peak_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(summary, default=str))
"""


def make_corpus(source: Path, dest: Path, min_chunks: int) -> int:
    """Copy source files (sorted) into `dest` until they chunk into at least `min_chunks` chunks."""
    counter = load_embedder().count_tokens
    total = 0
    for path in sorted(source.rglob("*.py")):
        rel = path.relative_to(source)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        total += len(chunking.chunk_file(str(rel), path.read_bytes(), counter, 254))
        if total >= min_chunks:
            break
    return total


def run_pipeline(root: Path, version: str, repo: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    done = subprocess.run(
        [sys.executable, "-c", _BUILD, str(root), version, str(repo)], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"build failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-chunks", type=int, default=5000)
    parser.add_argument("--source", type=Path, default=Path(faiss.__file__).parents[1] / "dagster")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kg-bench-"))
    repo, root = work / "repo", work / "indexes"
    expected = make_corpus(args.source, repo, args.min_chunks)
    print(f"corpus: {sum(1 for _ in repo.rglob('*.py'))} files from {args.source}, ~{expected} chunks")

    first = run_pipeline(root, "b1", repo)
    vdir = Path(first["path"])
    n = first["chunks"]
    print(f"pipeline build: {first['wall']:.1f}s wall for {n} chunks, peak RSS {first['peak_rss_kib'] / 1024:.0f} MiB")
    for stage, seconds in first["seconds"].items():
        print(f"  {stage:<28} {seconds:7.1f}s  {n / seconds if seconds else float('inf'):9.1f} chunks/s")

    # Raw parts on the same inputs, in this process.
    with catalog.connect_read_only(vdir / "catalog.duckdb") as con:
        rows = con.execute("SELECT chunk_id, uri, text FROM chunks ORDER BY chunk_id").fetchall()
    texts = [build.embedding_text(uri, text) for _, uri, text in rows]
    embedder = load_embedder()
    embedder.embed(texts[:1])  # load the model outside the timing, as the pipeline's own timer does not include it
    model_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    vectors = embedder.embed(texts)
    raw_embed = time.perf_counter() - t0
    factory = first["attrs"]["faiss_factory"]
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    t0 = time.perf_counter()
    base = faiss.index_factory(vectors.shape[1], factory, faiss_index.metric_for(factory))
    if not base.is_trained:
        base.train(vectors)
    raw = faiss.IndexIDMap2(base)
    raw.add_with_ids(vectors, ids)
    raw_faiss = time.perf_counter() - t0
    raw_total = raw_embed + raw_faiss
    print(
        f"raw embed: {raw_embed:.1f}s ({n / raw_embed:.1f} chunks/s); raw FAISS train+add ({factory}): {raw_faiss:.2f}s"
    )
    print(f"ratio build / raw parts: {first['wall'] / raw_total:.2f} (goal <= 1.2)")
    vector_bytes = vectors.nbytes
    peak = first["peak_rss_kib"] * 1024
    mib = 2**20
    print(
        f"peak RSS {peak / mib:.0f} MiB vs vectors {vector_bytes / mib:.1f} MiB + model process "
        f"{model_rss / mib:.0f} MiB: ratio {peak / (vector_bytes + model_rss):.2f} (goal < 2)"
    )

    second = run_pipeline(root, "b2", repo)
    print(
        f"no-change rebuild: {second['wall']:.1f}s = {second['wall'] / first['wall']:.2f} of the first (goal < 0.2); "
        f"re-embedded {second['embedded']}, reused {second['reused']}"
    )
    for stage, seconds in second["seconds"].items():
        print(f"  {stage:<28} {seconds:7.1f}s")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
