"""Offline evaluation on a small real repository: real MiniLM vectors, scip-python, an IVF index, DuckDB, BM25."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from kg_assets.lib import (
    catalog,
    channels,
    eval_gate,
    eval_outputs,
    evaluation,
    faiss_index,
    query_sets,
    retrieval_metrics,
    tuning,
)
from kg_assets.lib.errors import ConflictError, UsageError
from kg_assets.lib.evaluation import EvalSettings, evaluate_version
from kg_assets.lib.lifecycle import CATALOG_FILE, LifecycleRoot
from kg_assets_tests.helpers import SCIP_PYTHON, run_build
from kg_assets_tests.sample_artifacts import clustered_vectors
from kg_assets_tests.sample_repo import write_repo

pytestmark = pytest.mark.skipif(not SCIP_PYTHON.exists(), reason="run scripts/setup.sh (npm ci) for scip-python")
SQL = Path(__file__).parents[2] / "docs" / "sql" / "coverage_examples.sql"
NLIST = 8
TOPICS = ("network sockets", "date parsing", "matrix algebra", "text wrapping", "file hashing", "url routing")


def write_eval_repo(path: Path) -> Path:
    """The sample repository plus documented modules on several topics, so an IVF index has lists to probe."""
    write_repo(path)
    for i, topic in enumerate(TOPICS):
        name = topic.split()[0]
        funcs = "".join(
            f"\n\ndef {name}_step_{j}(value: int) -> int:\n"
            f'    """Handle {topic} for stage {j} of the {name} pipeline."""\n'
            f"    return value * {j} + {i}\n"
            for j in range(10)
        )
        (path / f"{topic.replace(' ', '_')}.py").write_text(f'"""Helpers for {topic}."""\n{funcs}')
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[LifecycleRoot, Path]:
    """Two IVF versions of the eval repository (v1 published, v2 not), and a scratch directory."""
    base = tmp_path_factory.mktemp("eval")
    root = LifecycleRoot(base / "indexes")
    repo = write_eval_repo(base / "repo")
    with dg.instance_for_test() as instance:
        for version in ("v1", "v2"):
            assert run_build(root, repo, version, instance, factory=f"IVF{NLIST},Flat").success
    root.publish("v1")
    return root, base


def settings(out: Path, **overrides: Any) -> EvalSettings:
    return EvalSettings(out_dir=out, **{"k": 5, "samples": 40, **overrides})


def labelled_file(path: Path, root: LifecycleRoot) -> Path:
    """Two labelled queries: one by `path:line`, one by chunk id."""
    with catalog.connect_read_only(root.version_dir("v1") / CATALOG_FILE) as con:
        (chunk_id,) = con.execute(
            "SELECT chunk_id FROM chunks WHERE uri = 'shapes/geometry.py' AND text LIKE '%def hypotenuse%'"
        ).fetchone()
    lines = [
        {"qid": "cfg", "text": "read a JSON configuration file into a dictionary", "positives": ["parsing.py:7"]},
        {"qid": "hyp", "text": "length of the hypotenuse of a right triangle", "positives": [chunk_id]},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_every_channel_returns_real_hits_in_one_pool(built: tuple, tmp_path: Path) -> None:
    root, _ = built
    queries = labelled_file(tmp_path / "q.jsonl", root)
    record = evaluate_version(root, None, settings(tmp_path, xtr_oracle=True, queries_file=queries), run_id="r1")
    pool = pq.read_table(record["pool_path"])
    assert pool.schema.names == eval_outputs.pool_schema().names
    rows = pool.to_pylist()
    assert {r["channel"] for r in rows} == {"faiss", "flat", "bm25", "xtr", "hybrid"}
    assert {r["query_set"] for r in rows} == {"self", "file", "docstrings"}
    assert {r["channel"] for r in rows if r["query_set"] == "self"} == {"faiss", "flat"}
    metrics = record["metrics"]
    assert "splade" in metrics["channels_unavailable"]
    hydrated = catalog.hydrate(root.version_dir("v1") / CATALOG_FILE, [r["chunk_id"] for r in rows])
    for r in rows:
        chunk = hydrated[r["chunk_id"]]
        assert (r["uri"], r["start_line"], r["end_line"]) == (chunk["uri"], chunk["start_line"], chunk["end_line"])
        assert np.isfinite(r["score"]) and r["rank"] >= 1
        assert (r["is_positive"] is None) == (r["query_set"] == "self")
    top = {(r["query_id"], r["channel"]): r for r in rows if r["rank"] == 1 and r["query_set"] == "file"}
    assert top[("hyp", "bm25")]["is_positive"] and top[("hyp", "faiss")]["is_positive"]
    # symbol_hits: the chunk's symbols that the query names
    assert "hypotenuse" in top[("hyp", "bm25")]["symbol_hits"]


def test_labelled_queries_give_mrr_for_every_channel_and_hybrid_beside_them(built: tuple, tmp_path: Path) -> None:
    root, _ = built
    record = evaluate_version(root, "v1", settings(tmp_path, xtr_oracle=True), run_id="r1")
    channels = record["metrics"]["channels"]
    assert set(channels) == {"faiss", "flat", "bm25", "xtr", "hybrid"}
    for figures in channels.values():
        assert figures["mrr_at_k"] > 0 and 0 < figures["ndcg_at_k"] <= 1 and 0 < figures["recall_at_k"] <= 1
    assert record["metrics"]["query_sets"]["docstrings"]["queries"] >= 20
    assert set(record["metrics"]["latency_ms_per_query"]) == set(channels)
    # only docstring sentences are labelled here: the figures say they leak
    assert record["metrics"]["quality_sets"] == ["docstrings"]
    assert any("do not leak" in note for note in record["metrics"]["notes"])


def test_flat_is_exact_search_and_exhaustive_ivf_recalls_all_of_it(built: tuple, tmp_path: Path) -> None:
    root, _ = built
    ids, vectors = catalog.chunk_vectors(root.version_dir("v1") / CATALOG_FILE)
    queries = vectors[::3]
    scores, found = tuning.exact_topk(queries, vectors, ids, 5)
    brute = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :5]
    assert (found == ids[brute]).all()  # flat is the whole-corpus oracle, in the chunk_id space
    hits, tied, sizes = retrieval_metrics.ann_fidelity(found, scores, found, scores)
    assert retrieval_metrics.recall_summary(hits, tied, sizes)["recall_at_k"] == 1.0
    record = evaluate_version(root, "v1", settings(tmp_path, nprobe=NLIST), run_id="r1")
    assert record["metrics"]["ann"]["recall_at_k"] == 1.0 and record["metrics"]["ann"]["queries"] > 40


def test_starved_nprobe_recalls_less_than_the_tuned_setting(built: tuple, tmp_path: Path) -> None:
    root, _ = built
    starved = evaluate_version(root, "v1", settings(tmp_path, nprobe=1), run_id="starved")
    assert "below the floor" in eval_gate.publish_refusal(root, "v1")
    tuned = evaluate_version(root, "v1", settings(tmp_path, nprobe=NLIST // 2), run_id="tuned")
    assert starved["summary"]["ann_recall_at_k"] < tuned["summary"]["ann_recall_at_k"]
    assert starved["metrics"]["params"]["active"]["nprobe"] == 1
    assert starved["gate"]["measured_overrides"] == {"nprobe": 1}  # the version serves another nprobe
    assert not starved["gate"]["passed"] and "below the floor" in starved["gate"]["failures"][0]
    assert eval_gate.publish_refusal(root, "v1") is None  # "tuned" ran last and passed


def test_coverage_reports_run_and_return_rows(built: tuple, tmp_path: Path) -> None:
    root, _ = built
    record = evaluate_version(root, None, settings(tmp_path), run_id="r1")
    statements = [s for s in SQL.read_text().split(";") if "SELECT" in s]
    assert len(statements) == 3
    with duckdb.connect(record["duckdb"], read_only=True) as con:
        pool_rows = con.execute("SELECT count(*) FROM v_faiss_pool").fetchone()[0]
        assert pool_rows == record["pool_rows"]
        unmatched = con.execute("SELECT count(*) FROM v_pool_coverage WHERE repo_path IS NULL").fetchone()[0]
        assert unmatched == 0  # every pool uri is a module of the catalog
        for statement in statements:
            assert con.execute(statement).fetchall(), statement


def test_runs_are_kept_latest_points_at_the_newest_and_the_version_is_untouched(built: tuple, tmp_path: Path) -> None:
    root, _ = built
    first = evaluate_version(root, None, settings(tmp_path), run_id="a")
    second = evaluate_version(root, None, settings(tmp_path, seed=1), run_id="b")
    latest = tmp_path / "v1" / eval_outputs.LATEST_LINK
    assert os.readlink(latest) == "b" and Path(first["metrics_path"]).is_file()
    metrics = json.loads((latest / eval_outputs.METRICS_FILE).read_text())
    assert metrics["run_id"] == "b" and metrics["baseline"] == {"version": "v1", "run_id": "a"}
    assert metrics["delta"] is not None and "ann_recall_at_k" in metrics["delta"]
    assert eval_gate.latest_eval(root, "v1")["run_id"] == second["run_id"]
    root.verify_version("v1")  # every manifest hash still matches: the published catalog was only read
    with pytest.raises(ConflictError, match="already exists"):
        evaluate_version(root, None, settings(tmp_path), run_id="b")


def test_an_mrr_drop_on_the_same_queries_fails_the_gate_now_and_at_publish(built: tuple, tmp_path: Path) -> None:
    root, _ = built
    served = evaluate_version(root, "v1", settings(tmp_path, samples=0), run_id="served")
    assert served["gate"]["passed"] and served["metrics"]["labelled_queries"] >= 20
    # v2 is the same corpus; probing one IVF list of eight is the planted regression (labels unchanged)
    worse = evaluate_version(root, "v2", settings(tmp_path, samples=0, nprobe=1, recall_floor=0.0), run_id="worse")
    mrr = worse["gate"]["mrr"]
    assert worse["gate"]["ann_recall"]["passed"] and not mrr["passed"]
    assert mrr["shared_queries"] == served["metrics"]["labelled_queries"]  # the same docstring queries, by id
    assert mrr["baseline_mrr_at_k"] - mrr["mrr_at_k"] > 0.02 and mrr["baseline"]["version"] == "v1"
    assert "MRR@" in eval_gate.publish_refusal(root, "v2")
    unlabelled = evaluate_version(root, "v2", settings(tmp_path, generated_queries=False), run_id="unlabelled")
    assert not unlabelled["gate"]["passed"] and "unverified" in unlabelled["gate"]["mrr"]["reason"]
    evaluate_version(root, "v2", settings(tmp_path, samples=0), run_id="fixed")
    assert eval_gate.publish_refusal(root, "v2") is None


def test_knobs_follow_serving_semantics(tmp_path: Path) -> None:
    """k_factor sets an IndexRefine's knob (never stacks a second re-rank), re-ranks a lossy index from the stored
    vectors, and is a no-op on one that scores exactly; nprobe is ignored (noted) without IVF lists."""
    x = clustered_vectors(3000, 32, seed=3)
    ids = np.arange(3000, dtype=np.int64)
    cases = {"IVF16,PQ8x4fs,RFlat": (4.0, 1.0), "IVF16,PQ8x4fs": (4.0, 4.0), "Flat": (None, 1.0)}
    for factory, (knob, rerank) in cases.items():
        index, _ = faiss_index.build_index(x, ids, factory)
        knobs = evaluation.set_knobs(index, None, EvalSettings(k_factor=4.0, nprobe=2, out_dir=tmp_path))
        assert knobs.active.get("k_factor") == knob and knobs.rerank_factor == rerank, factory
        assert (knobs.active.get("nprobe") == 2) == factory.startswith("IVF")
    corpus = channels.Corpus(ids, x)
    lossy, _ = faiss_index.build_index(x, ids, "IVF16,PQ8x4fs")
    tuning.set_knobs(lossy, {"nprobe": 16})
    _, exact = tuning.exact_topk(x[:50], x, ids, 10)
    _, reranked = channels.ann_search(lossy, corpus, x[:50], 10, rerank_factor=300)  # every candidate re-scored
    assert (reranked == exact).all()


def test_k_beyond_the_corpus_is_cut_and_noted(built: tuple, tmp_path: Path) -> None:
    root, _ = built
    record = evaluate_version(root, "v1", settings(tmp_path, k=100_000, samples=5), run_id="r1")
    k = record["metrics"]["k"]
    assert k < 100_000 and any("cut to the corpus size" in n for n in record["metrics"]["notes"])
    assert record["metrics"]["ann"]["recall_at_k"] == 1.0  # every chunk is in everyone's top k


def test_plain_text_lines_are_unlabelled_queries_beside_jsonl(built: tuple, tmp_path: Path) -> None:
    root, _ = built
    path = tmp_path / "q.txt"
    path.write_text('  split text into words \n\n{"qid": "a", "text": "parse json"}\n')
    found = query_sets.read_labelled_queries(path, root.version_dir("v1") / "catalog.duckdb")
    assert [(q.qid, q.text, q.positives) for q in found] == [
        ("q1", "split text into words", frozenset()),
        ("a", "parse json", frozenset()),
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json\n", "q.jsonl:1: not JSON"),
        ('{"qid": "a"}\n', "q.jsonl:1: expected an object with a non-empty string 'text'"),
        ('{"text": "x", "positives": ["nowhere.py:3"]}\n', "q.jsonl:1: nowhere.py:3 matches no chunk"),
        ('{"text": "x", "positives": [12345]}\n', "chunk id 12345 is not in this version"),
        ('{"text": "x", "positives": [1.5]}\n', "neither a chunk id nor 'path:line'"),
        ('{"qid": "a", "text": "x"}\n{"qid": "a", "text": "y"}\n', "qids must be unique"),
    ],
)
def test_bad_labelled_queries_are_usage_errors_naming_the_line(
    built: tuple, tmp_path: Path, content: str, message: str
) -> None:
    root, _ = built
    path = tmp_path / "q.jsonl"
    path.write_text(content)
    with pytest.raises(UsageError, match=message):
        evaluate_version(root, None, settings(tmp_path, queries_file=path), run_id="r1")
    assert not (tmp_path / "v1").exists()  # nothing written


def test_views_never_go_into_a_version_even_through_the_current_link(built: tuple, tmp_path: Path) -> None:
    root, _ = built
    for target in (root.version_dir("v1") / CATALOG_FILE, root.root / "current" / CATALOG_FILE):
        with pytest.raises(UsageError, match="immutable"):
            evaluate_version(root, None, settings(tmp_path, duckdb=target), run_id="r1")
    assert not (tmp_path / "v1").exists()  # refused before anything was written
    root.verify_version("v1")


def test_a_locked_analytics_database_is_a_conflict_after_the_gate_is_recorded(built: tuple, tmp_path: Path) -> None:
    root, _ = built
    db = tmp_path / "a.duckdb"
    holder = subprocess.Popen(  # another process holds the analytics database open for writing
        [sys.executable, "-c", f"import duckdb; c = duckdb.connect({str(db)!r}); print('open', flush=True); input()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(ConflictError, match="in use"):
            evaluate_version(root, None, settings(tmp_path, duckdb=db, nprobe=1), run_id="r1")
    finally:
        holder.communicate("\n", timeout=30)
    assert eval_gate.latest_eval(root, "v1")["run_id"] == "r1"  # the gate publish reads is this run's
    assert "below the floor" in eval_gate.publish_refusal(root, "v1")


def test_a_record_from_an_earlier_build_under_the_same_id_is_ignored(built: tuple, tmp_path: Path) -> None:
    root, _ = built
    evaluate_version(root, None, settings(tmp_path, nprobe=1), run_id="r1")
    path = root.root / eval_gate.GATE_DIR / "v1.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "catalog_sha256": "0" * 64}))
    assert eval_gate.latest_eval(root, "v1") is None and eval_gate.publish_refusal(root, "v1") is None


def test_mrr_comparison_uses_shared_queries_only() -> None:
    base = {"a": 1.0, "b": 0.5, "c": 1.0}
    assert retrieval_metrics.compare_mrr({"a": 1.0, "b": 0.5, "z": 0.0}, 10, base, 10, 0.02)["passed"]
    dropped = retrieval_metrics.compare_mrr({"a": 0.5, "b": 0.5}, 10, base, 10, 0.02)
    assert not dropped["passed"] and dropped["shared_queries"] == 2 and dropped["baseline_mrr_at_k"] == 0.75
    assert not retrieval_metrics.compare_mrr({}, 10, base, 10, 0.02)["passed"]
    assert not retrieval_metrics.compare_mrr({"x": 1.0}, 10, base, 10, 0.02)["passed"]
    # ranks beyond the smaller k do not count on either side
    assert retrieval_metrics.compare_mrr({"a": 1 / 8}, 10, {"a": 1 / 8}, 5, 0.0)["mrr_at_k"] == 0.0


def test_a_requested_channel_that_cannot_run_says_why(built: tuple, tmp_path: Path) -> None:
    root, _ = built
    record = evaluate_version(root, "v1", settings(tmp_path, xtr_oracle=True, generated_queries=False), run_id="r1")
    metrics = record["metrics"]
    assert metrics["channels_run"] == ["faiss", "flat"]  # self-queries only: nothing for XTR to rescore
    assert metrics["channels_unavailable"]["xtr"].startswith("no text queries to rescore")
