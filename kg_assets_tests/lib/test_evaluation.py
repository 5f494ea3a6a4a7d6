"""Offline evaluation on a small real repository: real MiniLM vectors, scip-python, an IVF index, DuckDB, BM25."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from kg_assets.lib import catalog, evaluation, tuning
from kg_assets.lib.errors import UsageError, ValidationError
from kg_assets.lib.evaluation import EvalSettings, evaluate_version
from kg_assets.lib.lifecycle import CATALOG_FILE, LifecycleRoot
from kg_assets_tests.defs.test_build import run_build
from kg_assets_tests.lib.test_scip import SCIP_PYTHON
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
    """A published IVF version of the eval repository, and a scratch directory for eval outputs."""
    base = tmp_path_factory.mktemp("eval")
    root = LifecycleRoot(base / "indexes")
    repo = write_eval_repo(base / "repo")
    with dg.instance_for_test() as instance:
        assert run_build(root, repo, "v1", instance, factory=f"IVF{NLIST},Flat").success
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
    record = evaluate_version(root, None, settings(tmp_path, xtr=True, queries_file=queries), run_id="r1")
    pool = pq.read_table(record["pool_path"])
    assert pool.schema.names == evaluation.POOL_SCHEMA.names
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
    record = evaluate_version(root, "v1", settings(tmp_path, xtr=True), run_id="r1")
    channels = record["metrics"]["channels"]
    assert set(channels) == {"faiss", "flat", "bm25", "xtr", "hybrid"}
    for figures in channels.values():
        assert figures["mrr_at_k"] > 0 and 0 < figures["ndcg_at_k"] <= 1 and 0 < figures["recall_at_k"] <= 1
    assert record["metrics"]["query_sets"]["docstrings"]["queries"] >= 20
    assert set(record["metrics"]["latency_ms_per_query"]) == set(channels)


def test_flat_recall_against_itself_is_one_and_exhaustive_ivf_matches_it(built: tuple, tmp_path: Path) -> None:
    root, _ = built
    ids, vectors = catalog.chunk_vectors(root.version_dir("v1") / CATALOG_FILE)
    queries = vectors[::3]
    scores, found = tuning.exact_topk(queries, vectors, ids, 5)
    recall, tie = evaluation.ann_fidelity(found, scores, found, scores)
    assert recall.min() == tie.min() == 1.0
    record = evaluate_version(root, "v1", settings(tmp_path, nprobe=NLIST, k_factor=1.0), run_id="r1")
    assert record["metrics"]["ann"]["recall_at_k"] == 1.0


def test_starved_nprobe_recalls_less_than_the_tuned_setting(built: tuple, tmp_path: Path) -> None:
    root, _ = built
    starved = evaluate_version(root, "v1", settings(tmp_path, nprobe=1, k_factor=1.0), run_id="starved")
    tuned = evaluate_version(root, "v1", settings(tmp_path, nprobe=NLIST // 2, k_factor=1.0), run_id="tuned")
    assert starved["summary"]["ann_recall_at_k"] < tuned["summary"]["ann_recall_at_k"]
    assert starved["metrics"]["params"]["profile"]["applied"]["nprobe"] == 1
    assert not starved["gate"]["passed"] and "below the floor" in starved["gate"]["failures"][0]
    assert evaluation.gate_refusal(root, "v1") is None  # "tuned" ran last and passed


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
    latest = tmp_path / "v1" / evaluation.LATEST_LINK
    assert os.readlink(latest) == "b" and Path(first["metrics_path"]).is_file()
    metrics = json.loads((latest / evaluation.METRICS_FILE).read_text())
    assert metrics["run_id"] == "b" and metrics["baseline"] == {"version": "v1", "run_id": "a"}
    assert metrics["delta"] is not None and "ann_recall_at_k" in metrics["delta"]
    assert evaluation.latest_eval(root, "v1")["run_id"] == second["run_id"]
    root.verify_version("v1")  # every manifest hash still matches: the published catalog was only read
    with pytest.raises(ValidationError, match="already exists"):
        evaluate_version(root, None, settings(tmp_path), run_id="b")


def test_mrr_drop_against_the_current_versions_last_eval_fails_the_gate(built: tuple, tmp_path: Path) -> None:
    root, _ = built
    good = labelled_file(tmp_path / "good.jsonl", root)
    evaluate_version(root, None, settings(tmp_path, queries_file=good, generated_queries=False), run_id="good")
    lines = [json.loads(line) for line in good.read_text().splitlines()]
    for line, unrelated in zip(lines, ["latin1.txt:1", "README.md:1"], strict=True):
        line["positives"] = [unrelated]  # the same queries labelled with unrelated chunks: a planted regression
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text("".join(json.dumps(line) + "\n" for line in lines))
    record = evaluate_version(root, None, settings(tmp_path, queries_file=wrong, generated_queries=False), run_id="bad")
    assert not record["gate"]["mrr"]["passed"] and record["gate"]["ann_recall"]["passed"]
    assert "MRR@k" in evaluation.gate_refusal(root, "v1")
    assert record["metrics"]["delta"]["faiss_mrr_at_k"] < -0.02


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json\n", "q.jsonl:1: not JSON"),
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


def test_views_never_go_into_a_complete_version(built: tuple, tmp_path: Path) -> None:
    root, _ = built
    target = root.version_dir("v1") / CATALOG_FILE
    with pytest.raises(UsageError, match="immutable"):
        evaluate_version(root, None, settings(tmp_path, duckdb=target), run_id="r1")
    root.verify_version("v1")


def test_gate_unit_cases() -> None:
    baseline = {"version": "v0", "run_id": "x", "summary": {"faiss_mrr_at_k": 0.8}}
    assert evaluation.gate(0.95, 0.79, baseline, 0.9, 0.02)["passed"]
    dropped = evaluation.gate(0.95, 0.70, baseline, 0.9, 0.02)
    assert not dropped["passed"] and not dropped["mrr"]["passed"] and dropped["ann_recall"]["passed"]
    assert evaluation.gate(0.95, None, baseline, 0.9, 0.02)["mrr"]["skipped"]
    assert not evaluation.gate(0.85, 0.8, None, 0.9, 0.02)["passed"]
