"""Search quality and warm latency on two labelled sets: our own (`benchmarks/quality`) and the public semble
pack (`../shared/benchmarks/semble-public`), every mode, per set, language, repository and category.

    .venv/bin/python scripts/bench.py quality [--set ours|semble|all] [--embedder SPEC] [--rebuild]
        [--repos flask,cobra] [--build-only] [--json OUT]

Our set's repositories are materialized from their registries at pinned versions (`scripts/bench_repos.py`), the
pack's unpacked from its checked archives (`scripts/bench_pack.py`, indexing `<name>/<benchmark_root>`); each is
built with `indexctl build NAME --repo DIR [--embedder SPEC]` (niced) into `build/bench/indexes`, kept between
runs (`--rebuild` builds a new version NAME-rN beside it, reusing unchanged vectors; another embedder gets its own
versions, `NAME.<embedder>`); `--build-only` stops there, e.g. to build in the background. Every question then
goes through the served retrieval stack (`VersionHandle`, what `indexctl search` runs) in each mode. Our set:
NDCG@10, MRR@10 and recall@10, a labelled file or span found when a top-10 chunk overlaps it (each target once),
means over questions. The pack: NDCG@10 exactly as its README scores it (suffix path match, span overlap, binary
gains, each target once), a repository the mean over its questions, a language and the set the mean over their
repositories, a category the mean over its questions; beside the published figures of semble and its baselines.
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
import bench_pack
import bench_repos

from kg_assets.lib.embedding import load_embedder
from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets.lib.query_sets import read_labelled_queries
from kg_assets.lib.retrieval import MODES, VersionHandle
from kg_assets.lib.retrieval_metrics import ranking_metrics
from kg_assets.lib.static_embedder import StaticEmbedder
from kg_assets.lib.static_pipeline import record_evaluation

PROJECT = Path(__file__).resolve().parent.parent
BENCH_DIR = PROJECT / "build" / "bench"
QUESTIONS = PROJECT / "benchmarks" / "quality" / "questions.jsonl"
CATEGORIES = ("architecture", "semantic", "symbol")
SETS = ("ours", "semble")
K = 10
DEFAULT_EMBEDDER = "minilm"


def version_base(name: str, embedder: str) -> str:
    """The version name of a repository built with `embedder`: the name itself for the default embedder."""
    return name if embedder == DEFAULT_EMBEDDER else f"{name}.{re.sub(r'[^A-Za-z0-9._-]+', '_', embedder)}"


def build_version(name: str, repo: Path, root: LifecycleRoot, rebuild: bool, embedder: str) -> str:
    """The newest version of `name` (`NAME`, `NAME-r2`, ...), after `indexctl build` (niced) made one when there is
    none or `rebuild` asks (a new version beside the old ones, so unchanged chunks reuse their vectors)."""
    base = version_base(name, embedder)
    ours = [v for v in root.list_versions() if v == base or re.fullmatch(rf"{re.escape(base)}-r\d+", v)]
    if ours and not rebuild:
        return max(ours, key=lambda v: (v != base, int(v.rsplit("-r", 1)[1]) if v != base else 0))
    version = f"{base}-r{len(ours) + 1}" if ours else base
    env = {**os.environ, "KG_INDEXES_DIR": str(root.root), "KG_PROGRESS": "0"}
    env.pop("DAGSTER_HOME", None)
    t0 = time.perf_counter()
    command = ["nice", "-n", "10", str(PROJECT / ".venv/bin/indexctl"), "build", version, "--repo", str(repo)]
    subprocess.run([*command, "--embedder", embedder], env=env, check=True)
    print(f"built {version} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return version


def ranked_hits(handle: VersionHandle, questions: list[str]) -> dict[str, list[list[tuple[int, str, int, int]]]]:
    """Per mode, each question's top K as (chunk id, uri, start line, end line)."""
    vectors = handle.embedder.embed(questions)
    chunks = handle.chunks
    found: dict[str, list[list[tuple[int, str, int, int]]]] = {mode: [] for mode in MODES}
    for text, vector in zip(questions, vectors, strict=True):
        for mode in MODES:
            rows = [(hit.chunk_id, chunks.row(hit.chunk_id)) for hit in handle.rank(text, vector[None, :], K, mode)]
            found[mode].append(
                [(c, chunks.uris[r], int(chunks.start_lines[r]), int(chunks.end_lines[r])) for c, r in rows]
            )
    return found


def warm_latency(handle: VersionHandle, questions: list[str]) -> dict[str, list[float]]:
    """Seconds per `search` call, dense and hybrid alternating question by question (both see the same load)."""
    latency: dict[str, list[float]] = {"dense": [], "hybrid": []}
    for text in questions[:5]:  # warm-up
        for mode in latency:
            handle.search(text, K, mode)
    for text in questions:
        for mode, times in latency.items():
            t0 = time.perf_counter()
            handle.search(text, K, mode)
            times.append(time.perf_counter() - t0)
    return latency


def score_ours(handle: VersionHandle, questions: list[dict], found: dict) -> list[dict]:
    """Per question of our set: its category and, per mode, NDCG@10, MRR@10 and recall@10 (chunk overlap)."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as fh:
        fh.writelines(json.dumps(q) + "\n" for q in questions)
    try:
        queries = read_labelled_queries(Path(fh.name), handle.catalog_path)
    finally:
        os.unlink(fh.name)
    scored = []
    for i, query in enumerate(queries):
        row = {"category": query.category, "query": query.text}
        for mode in MODES:
            ids = np.full((1, K), -1, dtype=np.int64)
            top = [hit[0] for hit in found[mode][i]]
            ids[0, : len(top)] = top
            m = ranking_metrics(ids, [query.positives], [query.targets])
            row[mode] = (m["ndcg_at_k"], m["mrr_at_k"], m["recall_at_k"]) if m else (0.0, 0.0, 0.0)
        scored.append(row)
    return scored


def score_pack(questions: list[dict], found: dict) -> list[dict]:
    """Per pack question: its category and, per mode, NDCG@10 as the pack's README scores it."""
    scored = []
    for i, question in enumerate(questions):
        targets = question["relevant"] + question.get("secondary", [])
        row = {"category": question["category"], "query": question["query"]}
        for mode in MODES:
            row[mode] = (bench_pack.ndcg_at_k([hit[1:] for hit in found[mode][i]], targets, K),)
        scored.append(row)
    return scored


def repositories(which: str) -> list[dict]:
    """Every repository of a set: name, language, set, its questions (query text, targets) and how to materialize
    it (a callable returning the directory to index)."""
    if which == "ours":
        questions = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
        return [
            {
                "set": "ours",
                "name": spec["name"],
                "language": spec["language"],
                "questions": [q for q in questions if q["repo"] == spec["name"]],
                "materialize": lambda spec=spec: bench_repos.materialize(spec, BENCH_DIR / "src"),
            }
            for spec in bench_repos.load_specs()
        ]
    return [
        {
            "set": "semble",
            "name": spec["name"],
            "language": spec["language"],
            "questions": spec["questions"],
            "materialize": lambda spec=spec: bench_pack.materialize(spec),
        }
        for spec in bench_pack.load_specs()
    ]


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def fmt(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"


def print_ours(rows: list[dict]) -> dict:
    """Our set's tables (by category, language, repository), every mode, as NDCG@10 (MRR@10, recall@10)."""

    def table(title: str, groups: dict[str, list[dict]]) -> dict:
        print(f"\nours, {title}: NDCG@10 (MRR@10, recall@10)")
        print(f"| mode | {' | '.join(f'{g} ({len(r)})' for g, r in groups.items())} |")
        print(f"| --- |{' ---: |' * len(groups)}")
        out: dict = {}
        for mode in ("dense", "lexical", "symbol", "hybrid"):
            cells = []
            for group, members in groups.items():
                ndcg, mrr, recall = (mean([r[mode][j] for r in members]) for j in range(3))
                out.setdefault(mode, {})[group] = {"ndcg_at_k": ndcg, "mrr_at_k": mrr, "recall_at_k": recall}
                cells.append(f"{ndcg:.3f} ({mrr:.2f}, {recall:.2f})")
            print(f"| {mode} | {' | '.join(cells)} |")
        return out

    return {
        "by_category": table("by category", _grouped(rows, "category", CATEGORIES, everything=True)),
        "by_language": table("by language", _grouped(rows, "language")),
        "by_repository": table("by repository", _grouped(rows, "repo")),
    }


def _grouped(rows: list[dict], key: str, order: tuple[str, ...] = (), everything: bool = False) -> dict:
    groups: dict[str, list[dict]] = {"all": rows} if everything else {}
    for name in order:
        groups[name] = []
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    return groups


def print_pack(rows: list[dict]) -> dict:
    """The pack's tables: NDCG@10 of every mode beside the published figures, per repository, language, category
    and overall (repositories weigh the same, as semble's summary)."""
    published = bench_pack.reference()
    methods = list(dict.fromkeys(["semble", *(m for r in published.values() for m in r["baselines"])]))

    def figure(repo: str, method: str, category: str | None = None) -> float | None:
        entry = published[repo]["semble"] if method == "semble" else published[repo]["baselines"].get(method, {})
        return entry.get("ndcg10") if category is None else entry.get("by_category_ndcg10", {}).get(category)

    modes = ("dense", "lexical", "symbol", "hybrid")
    by_repo = _grouped(rows, "repo")
    ours_repo = {
        repo: {mode: mean([r[mode][0] for r in members]) for mode in modes} for repo, members in by_repo.items()
    }
    languages: dict[str, list[str]] = {}
    for repo, members in by_repo.items():
        languages.setdefault(members[0]["language"], []).append(repo)
    lines: list[tuple[str, int, dict[str, float], dict[str, float | None]]] = []
    for repo, members in by_repo.items():
        lines.append((repo, len(members), ours_repo[repo], {m: figure(repo, m) for m in methods}))
    for language, repos in sorted(languages.items()):
        theirs = {m: _mean_known([figure(r, m) for r in repos]) for m in methods}
        count = sum(len(by_repo[r]) for r in repos)
        lines.append(
            (f"*{language}*", count, {mode: mean([ours_repo[r][mode] for r in repos]) for mode in modes}, theirs)
        )
    for category in CATEGORIES:
        members = [r for r in rows if r["category"] == category]
        if not members:
            continue
        theirs = {}
        for m in methods:  # query-weighted over the repositories' per-category figures
            known = [(figure(r, m, category), sum(1 for x in by_repo[r] if x["category"] == category)) for r in by_repo]
            known = [(f, n) for f, n in known if n]
            theirs[m] = (
                sum(f * n for f, n in known) / sum(n for _, n in known)
                if all(f is not None for f, _ in known)
                else None
            )
        lines.append(
            (f"*{category}*", len(members), {mode: mean([r[mode][0] for r in members]) for mode in modes}, theirs)
        )
    theirs = {m: _mean_known([figure(r, m) for r in by_repo]) for m in methods}
    lines.append(
        (
            "**all (mean of repositories)**",
            len(rows),
            {mode: mean([ours_repo[r][mode] for r in by_repo]) for mode in modes},
            theirs,
        )
    )
    print(
        "\nsemble pack: NDCG@10, ours beside the published figures "
        "(colgrep, grepai, probe and ripgrep are scored by file)"
    )
    print(f"| | questions | {' | '.join(modes)} | {' | '.join(methods)} |")
    print(f"| --- | ---: |{' ---: |' * (len(modes) + len(methods))}")
    for label, count, mine, published_row in lines:
        cells = [fmt(mine[m]) for m in modes] + [fmt(published_row[m]) for m in methods]
        print(f"| {label} | {count} | {' | '.join(cells)} |")
    return {
        label: {"questions": count, **mine, "published": published_row} for label, count, mine, published_row in lines
    }


def _mean_known(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else mean(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", dest="which", choices=(*SETS, "all"), default="all", help="Which labelled set(s).")
    parser.add_argument("--embedder", default=DEFAULT_EMBEDDER, help="Passed to indexctl build (e.g. static).")
    parser.add_argument("--rebuild", action="store_true", help="Build a new version of every repository.")
    parser.add_argument("--build-only", action="store_true", help="Build the versions, then stop.")
    parser.add_argument("--repos", help="Comma-separated repository names (default: all).")
    parser.add_argument("--json", dest="json_out", type=Path, help="Also write the results as JSON here.")
    parser.add_argument(
        "--record",
        action="store_true",
        help="With a static embedder: add the results to its model's provenance.json (evaluation.<set>_<embedder>).",
    )
    args = parser.parse_args(argv)

    repos = [repo for which in SETS if args.which in (which, "all") for repo in repositories(which)]
    if args.repos:
        wanted = set(args.repos.split(","))
        repos = [r for r in repos if r["name"] in wanted]
    root = LifecycleRoot(BENCH_DIR / "indexes")
    versions = {}
    for repo in repos:
        versions[repo["name"]] = build_version(repo["name"], repo["materialize"](), root, args.rebuild, args.embedder)
    if args.build_only:
        return 0
    rows: dict[str, list[dict]] = {which: [] for which in SETS}
    latency: dict[str, list[float]] = {"dense": [], "hybrid": []}
    for repo in repos:
        texts = [q["query"] for q in repo["questions"]]
        with VersionHandle.open(root, versions[repo["name"]]) as handle:
            found = ranked_hits(handle, texts)
            if repo["set"] == "ours":
                scored = score_ours(handle, repo["questions"], found)
            else:
                scored = score_pack(repo["questions"], found)
            for mode, times in warm_latency(handle, texts).items():
                latency[mode] += times
        for row in scored:
            rows[repo["set"]].append({**row, "repo": repo["name"], "language": repo["language"]})
        print(f"{repo['set']} {repo['name']}: {len(texts)} questions", file=sys.stderr)

    report: dict = {}
    if rows["ours"]:
        report["ours"] = print_ours(rows["ours"])
    if rows["semble"]:
        report["semble"] = print_pack(rows["semble"])
    if rows["ours"] and rows["semble"]:
        ours = mean([r["hybrid"][0] for r in rows["ours"]])
        pack = report["semble"]["**all (mean of repositories)**"]["hybrid"]
        print(f"\nhybrid NDCG@10: ours {ours:.3f}, semble pack {pack:.3f}, mean of the sets {(ours + pack) / 2:.3f}")
    dense_ms = statistics.median(latency["dense"]) * 1000
    hybrid_ms = statistics.median(latency["hybrid"]) * 1000
    print(
        f"\nwarm latency, median per query (embed + search + hydrate, k={K}): dense {dense_ms:.1f} ms, "
        f"hybrid {hybrid_ms:.1f} ms, ratio {hybrid_ms / dense_ms:.2f} (goal <= 1.3)"
    )
    report["latency_ms"] = {"dense": dense_ms, "hybrid": hybrid_ms, "ratio": hybrid_ms / dense_ms}
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))
    if args.record:
        model = load_embedder(args.embedder)
        if not isinstance(model, StaticEmbedder):
            parser.error("--record needs a static embedder (static or static:DIR)")
        command = "scripts/bench.py quality " + " ".join(sys.argv[1:] if argv is None else argv)
        record_evaluation(model.directory, f"labelled_{args.which}_{model.name.split(':')[0]}", report, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
