"""Search quality and warm latency on the labelled benchmark (`benchmarks/quality`): every mode, per category.

    .venv/bin/python scripts/bench.py quality [--rebuild] [--repos flask,click] [--json OUT]

Each repository of `benchmarks/quality/repos.json` is materialized from its registry at the pinned version
(`scripts/bench_repos.py`) and built with `indexctl build NAME --repo DIR` into `build/bench/indexes` (kept between
runs; `--rebuild` builds a new version NAME-rN beside it, e.g. after a chunking change, reusing unchanged vectors).
Every question then goes through the served retrieval stack (`VersionHandle`, exactly what `indexctl search`
runs) in each mode; NDCG@10, MRR@10 and recall@10 count a labelled file or span as found when a top-10 chunk
overlaps it (each target once); `--relex` re-indexes the chunks lexically in memory (a tokenizer change).
Latency: the same questions through `search` (embedding, channels, re-rank, hydration), dense vs hybrid, warm.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_repos

from kg_assets.lib import catalog
from kg_assets.lib.lexical import LexicalIndex
from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets.lib.query_sets import read_labelled_queries
from kg_assets.lib.retrieval import MODES, VersionHandle
from kg_assets.lib.retrieval_metrics import ranking_metrics

PROJECT = Path(__file__).resolve().parent.parent
BENCH_DIR = PROJECT / "build" / "bench"
QUESTIONS = PROJECT / "benchmarks" / "quality" / "questions.jsonl"
CATEGORIES = ("architecture", "semantic", "symbol")
K = 10


def build_version(name: str, repo: Path, root: LifecycleRoot, rebuild: bool, embedder: str = "") -> str:
    """The newest version of `name` (`NAME`, `NAME-r2`, ...), after `indexctl build` (with `--embedder embedder`
    when given) made one when there is none or `rebuild` asks (a new version beside the old ones, so unchanged
    chunks reuse their vectors)."""
    ours = [v for v in root.list_versions() if v == name or re.fullmatch(rf"{re.escape(name)}-r\d+", v)]
    if ours and not rebuild:
        return ours[-1]
    version = f"{name}-r{len(ours) + 1}" if ours else name
    env = {**os.environ, "KG_INDEXES_DIR": str(root.root), "KG_PROGRESS": "0"}
    env.pop("DAGSTER_HOME", None)
    t0 = time.perf_counter()
    command = [str(PROJECT / ".venv/bin/indexctl"), "build", version, "--repo", str(repo)]
    subprocess.run(command + (["--embedder", embedder] if embedder else []), env=env, check=True)
    print(f"built {version} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return version


def evaluate_repo(handle: VersionHandle, questions: list[dict]) -> dict:
    """Per mode and category: the found ids of every question, with their targets; and warm latencies."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as fh:
        fh.writelines(json.dumps(q) + "\n" for q in questions)
    try:
        queries = read_labelled_queries(Path(fh.name), handle.catalog_path)
    finally:
        os.unlink(fh.name)
    vectors = handle.embedder.embed([q.text for q in queries])
    found: dict[str, list[list[int]]] = {mode: [] for mode in MODES}
    for query, vector in zip(queries, vectors, strict=True):
        for mode in MODES:
            ranked = handle.rank(query.text, vector[None, :], K, mode)
            found[mode].append([chunk_id for chunk_id, _, _ in ranked])
    latency: dict[str, list[float]] = {"dense": [], "hybrid": []}
    for query in queries[:5]:  # warm-up
        for mode in latency:
            handle.search(query.text, K, mode)
    for query in queries:  # the modes alternate, so both see the same load
        for mode, times in latency.items():
            t0 = time.perf_counter()
            handle.search(query.text, K, mode)
            times.append(time.perf_counter() - t0)
    return {"queries": queries, "found": found, "latency": latency}


def metrics(rows: list[tuple], mode: str) -> dict[str, float]:
    """Ranking metrics over `rows` of (query, found-by-mode)."""
    if not rows:
        return {}
    found = np.full((len(rows), K), -1, dtype=np.int64)
    for i, (_, by_mode) in enumerate(rows):
        ids = by_mode[mode][:K]
        found[i, : len(ids)] = ids
    queries = [q for q, _ in rows]
    return ranking_metrics(found, [q.positives for q in queries], [q.targets for q in queries])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rebuild", action="store_true", help="Build a new version of every repository.")
    parser.add_argument(
        "--relex", action="store_true", help="Re-index each version's chunks lexically in memory (tokenizer changes)."
    )
    parser.add_argument("--repos", help="Comma-separated repository names (default: all).")
    parser.add_argument("--json", dest="json_out", type=Path, help="Also write the results as JSON here.")
    parser.add_argument(
        "--embedder",
        default="",
        help="Build with `indexctl build --embedder SPEC` (e.g. static:DIR) into a root of its own, "
        "build/bench/indexes-<SPEC>; default: the build's default embedder, in build/bench/indexes.",
    )
    args = parser.parse_args(argv)

    specs = bench_repos.load_specs()
    if args.repos:
        wanted = set(args.repos.split(","))
        specs = [s for s in specs if s["name"] in wanted]
    questions = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", args.embedder)[-60:]
    root = LifecycleRoot(BENCH_DIR / (f"indexes-{slug}" if args.embedder else "indexes"))
    rows: list[tuple[dict, object, dict]] = []  # (spec, query, found by mode)
    latency: dict[str, list[float]] = {"dense": [], "hybrid": []}
    for spec in specs:
        mine = [q for q in questions if q["repo"] == spec["name"]]
        if not mine:
            continue
        repo = bench_repos.materialize(spec, BENCH_DIR / "src")
        version = build_version(spec["name"], repo, root, args.rebuild, args.embedder)
        with VersionHandle.open(root, version) as handle:
            if args.relex:
                with catalog.connect_read_only(handle.catalog_path) as con:
                    chunks = con.sql("SELECT chunk_id, uri, language, text, symbols FROM chunks ORDER BY chunk_id")
                    handle.lexical = LexicalIndex.from_chunks(chunks.to_arrow_table())
            result = evaluate_repo(handle, mine)
        for i, query in enumerate(result["queries"]):
            rows.append((spec, query, {mode: result["found"][mode][i] for mode in MODES}))
        for mode in latency:
            latency[mode] += result["latency"][mode]
        print(f"{spec['name']}: {len(mine)} questions", file=sys.stderr)

    def table(title: str, groups: dict[str, list[tuple]]) -> dict:
        print(f"\n{title}: NDCG@10 (MRR@10, recall@10)")
        print(f"| mode | {' | '.join(f'{g} ({len(r)})' for g, r in groups.items())} |")
        print(f"| --- |{' ---: |' * len(groups)}")
        out = {}
        for mode in ("dense", "lexical", "symbol", "hybrid"):
            cells = []
            for group, group_rows in groups.items():
                m = metrics([(q, f) for _, q, f in group_rows], mode)
                out.setdefault(mode, {})[group] = m
                cells.append(f"{m['ndcg_at_k']:.3f} ({m['mrr_at_k']:.2f}, {m['recall_at_k']:.2f})" if m else "-")
            print(f"| {mode} | {' | '.join(cells)} |")
        return out

    by_category = {"all": rows, **{c: [r for r in rows if r[1].category == c] for c in CATEGORIES}}
    by_language: dict[str, list[tuple]] = {}
    by_repo: dict[str, list[tuple]] = {}
    for row in rows:
        by_language.setdefault(row[0]["language"], []).append(row)
        by_repo.setdefault(row[0]["name"], []).append(row)
    report = {
        "by_category": table("By category", by_category),
        "by_language": table("By language", by_language),
        "by_repository": table("By repository", by_repo),
    }
    dense_ms = statistics.median(latency["dense"]) * 1000
    hybrid_ms = statistics.median(latency["hybrid"]) * 1000
    print(
        f"\nwarm latency, median per query (embed + search + hydrate, k={K}): dense {dense_ms:.1f} ms, "
        f"hybrid {hybrid_ms:.1f} ms, ratio {hybrid_ms / dense_ms:.2f} (goal <= 1.3)"
    )
    report["latency_ms"] = {"dense": dense_ms, "hybrid": hybrid_ms, "ratio": hybrid_ms / dense_ms}
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
