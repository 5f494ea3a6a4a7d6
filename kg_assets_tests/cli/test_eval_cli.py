"""Runbook section 5 as written (`indexctl eval --k 12 --k-factor 2.0 --nprobe 64 --xtr-oracle`), and the publish
gate: a version whose last eval failed is refused by `indexctl publish` unless `--force`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.cli.test_indexctl import indexctl
from kg_assets_tests.helpers import SCIP_PYTHON
from kg_assets_tests.lib.test_evaluation import write_eval_repo

pytestmark = pytest.mark.skipif(not SCIP_PYTHON.exists(), reason="run scripts/setup.sh (npm ci) for scip-python")


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], LifecycleRoot, Path]:
    """v1 built with IVF8 and published, v2 built from the same repository; the operator's working directory."""
    base = tmp_path_factory.mktemp("cli-eval")
    repo = write_eval_repo(base / "repo")
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CODEINTEL_INDEXES_DIR", "KG_EVAL_DIR")}
    env["KG_INDEXES_DIR"] = str(base / "indexes")
    for version, extra in (("v1", ["--publish"]), ("v2", [])):
        done = indexctl(env, "build", version, "--repo", str(repo), "--factory", "IVF8,Flat", *extra)
        assert done.returncode == 0, done.stderr
    workdir = base / "work"
    workdir.mkdir()
    return env, LifecycleRoot(base / "indexes"), workdir


def test_runbook_eval_command_writes_pool_metrics_and_views(
    two_versions: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, root, workdir = two_versions
    done = indexctl(env, "eval", "--k", "12", "--k-factor", "2.0", "--nprobe", "64", "--xtr-oracle", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert "Evaluated v1" in done.stdout and "ANN recall@12 vs flat" in done.stdout and "gate: passed" in done.stdout
    for channel in ("faiss", "flat", "bm25", "xtr", "hybrid"):
        assert any(line.split()[:1] == [channel] for line in done.stdout.splitlines()), channel
    assert "splade: not available" in done.stdout
    latest = workdir / "artifacts" / "eval" / "v1" / "latest"
    metrics = json.loads((latest / "metrics.json").read_text())
    assert metrics["params"]["k"] == 12 and metrics["params"]["nprobe"] == 64 and metrics["params"]["xtr_oracle"]
    with duckdb.connect(str(workdir / "artifacts" / "eval" / "analytics.duckdb"), read_only=True) as con:
        channels = {r[0] for r in con.execute("SELECT DISTINCT channel FROM v_pool_coverage").fetchall()}
    assert channels == {"faiss", "flat", "bm25", "xtr", "hybrid"}
    root.verify_version("v1")
    monkeypatch.setenv("DAGSTER_HOME", str(root.root / ".dagster"))  # the instance indexctl ran on
    with dg.DagsterInstance.get() as instance:
        (event,) = instance.fetch_materializations(dg.AssetKey("eval_metrics"), limit=1).records
        assert event.partition_key == "v1"
        checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey("eval_metrics"), "ann_recall_floor")]
        )
        assert all(c.status.value == "SUCCEEDED" for c in checks.values()) and checks


def test_publish_refuses_a_failed_eval_gate_unless_forced(two_versions: tuple) -> None:
    env, root, workdir = two_versions
    done = indexctl(env, "eval", "--version", "v2", "--nprobe", "1", "--k-factor", "1", "--samples", "50", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert "gate: FAILED" in done.stdout and "publish will refuse v2 unless --force" in done.stderr
    refused = indexctl(env, "publish", "v2", cwd=workdir)
    assert refused.returncode == 4 and "fails the gate: ANN recall" in refused.stderr and "--force" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert root.current() == "v1"
    forced = indexctl(env, "publish", "v2", "--force", cwd=workdir)
    assert forced.returncode == 0, forced.stderr
    assert root.current() == "v2"
    rolled = indexctl(env, "rollback", "v1", cwd=workdir)  # rollback is never gated
    assert rolled.returncode == 0, rolled.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["eval", "--version", "v9"], 3, "unknown version v9"),
        (["eval", "--queries", "/nonexistent/q.jsonl"], 3, "queries file not found"),
        (["eval", "--k", "0"], 2, "--k"),
        (["eval", "--k-factor", "0.5"], 2, "--k-factor"),
        (["eval", "--samples", "0", "--no-generated-queries"], 2, "no queries"),
    ],
)
def test_eval_errors(two_versions: tuple, args: list[str], code: int, message: str) -> None:
    env, _, workdir = two_versions
    done = indexctl(env, *args, cwd=workdir)
    assert done.returncode == code, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_tune_and_eval_share_one_query_file_format_one_flag_and_verbose(two_versions: tuple, tmp_path: Path) -> None:
    env, _, workdir = two_versions
    queries = tmp_path / "queries.txt"  # a plain text line and a JSONL line, in one file both verbs read
    queries.write_text('split text into words\n{"qid": "j1", "text": "parse a json config file", "positives": []}\n')
    common = ["--version", "v2", "--queries", str(queries), "--json"]
    done = indexctl(env, "-v", "tune", *common, "--no-generated-queries", "--samples", "20", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["queries"] == {"self": 20, "file": 2, "seed": 0}
    assert "dagster - INFO - tune - " in done.stderr  # -v shows Dagster's run log, as every verb running a job does
    done = indexctl(env, "tune", *common, "--no-docstring-queries", "--samples", "20", cwd=workdir)  # old spelling
    assert done.returncode == 0 and "dagster - INFO" not in done.stderr, done.stderr
    assert "--no-docstring-queries" not in indexctl(env, "tune", "--help").stdout
    out = ["--out-dir", str(tmp_path / "eval")]
    done = indexctl(env, "-v", "eval", *common, *out, "--no-generated-queries", "--samples", "0", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["query_sets"]["file"]["queries"] == 2 and "dagster - INFO - eval - " in done.stderr
