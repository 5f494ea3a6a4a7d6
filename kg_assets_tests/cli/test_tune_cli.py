"""Runbook section 3 as written: `tune --quick`, `tune --full`, `tune --nprobe 96 --k-factor 1.8`, `show-profile`,
on an IVF-PQ index without an exact re-rank stage (k_factor re-ranks from the stored vectors)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.cli.test_indexctl import indexctl
from kg_assets_tests.sample_artifacts import write_sample


@pytest.fixture(scope="module")
def ivfpq(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], LifecycleRoot]:
    base = tmp_path_factory.mktemp("tune-cli")
    sample = write_sample(base / "art", n=8000, dim=32, seed=2, factory="IVF128,PQ16")
    root = LifecycleRoot(base / "indexes")
    root.stage("v1", sample["faiss"], sample["duckdb"], sample["scip"], idmap_path=sample["idmap"])
    root.publish("v1")
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CODEINTEL_INDEXES_DIR")}
    env["KG_INDEXES_DIR"] = str(root.root)
    return env, root


def test_runbook_tuning_commands(ivfpq: tuple) -> None:
    env, root = ivfpq
    done = indexctl(env, "tune", "--quick")
    assert done.returncode == 0, done.stderr
    assert "Saved tuning profile ->" in done.stdout and "measured: recall@10" in done.stdout
    profile = json.loads((root.version_dir("v1") / "tuning.json").read_text())
    assert profile["mode"] == "quick" and profile["param_str"].startswith("nprobe=")
    assert profile["met_target"] and profile["k_factor"] > 1, profile  # PQ alone saturates below 0.95
    done = indexctl(env, "tune", "--full", "--samples", "300")
    assert done.returncode == 0, done.stderr
    done = indexctl(env, "tune", "--nprobe", "96", "--k-factor", "1.8")
    assert done.returncode == 0, done.stderr
    assert "Wrote runtime tuning snapshot ->" in done.stdout
    shown = json.loads(indexctl(env, "show-profile", "--json").stdout)
    assert shown["active"] == {"nprobe": 96, "k_factor": 1.8}
    assert shown["overrides"] == {"nprobe": 96, "k_factor": 1.8}
    assert shown["recall_at_k"] is not None
    audit = json.loads((root.version_dir("v1") / "faiss.index.audit.json").read_text())
    assert audit["profile"]["mode"] == "full" and len(audit["history"]) == 2
    root.verify_version("v1")  # the mutable sidecars changed, nothing else did


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["tune", "--quick", "--nprobe", "8"], 2, "cannot be combined"),
        (["tune", "--quick", "--full"], 2, "choose one of --quick and --full"),
        (["tune", "--ef-search", "64"], 2, "has no efSearch knob"),
        (["tune", "--version", "v9"], 3, "unknown version v9"),
        (["tune", "--queries", "/nonexistent/q.txt"], 3, "queries file not found"),
        (["show-profile", "--version", "v9"], 3, "unknown version v9"),
    ],
)
def test_tune_errors(ivfpq: tuple, args: list[str], code: int, message: str) -> None:
    env, root = ivfpq
    before = (root.version_dir("v1") / "faiss.index").read_bytes()
    done = indexctl(env, *args)
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert (root.version_dir("v1") / "faiss.index").read_bytes() == before


def test_k_factor_is_refused_where_the_index_scores_exactly(
    tmp_path: Path, samples: dict, cli_env: dict[str, str]
) -> None:
    root = LifecycleRoot(tmp_path / "indexes")
    flat = write_sample(tmp_path / "flat", n=300, seed=4, factory="Flat")
    root.stage("v1", flat["faiss"], flat["duckdb"], flat["scip"])
    root.publish("v1")
    done = indexctl(cli_env, "tune", "--nprobe", "96", "--k-factor", "1.8")
    assert done.returncode == 2, done.stderr
    assert "(Flat) has no nprobe knob" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    done = indexctl(cli_env, "tune", "--k-factor", "1.8")
    assert done.returncode == 2 and "Flat already scores exactly, so there is nothing to re-rank" in done.stderr
    assert not (root.version_dir("v1") / "tuning.json").exists()
    root.verify_version("v1")
    done = indexctl(cli_env, "tune", "--quick")  # the runbook's sweep works on Flat: nothing to sweep, exact
    assert done.returncode == 0, done.stderr
    assert "active: none (exact search)" in indexctl(cli_env, "show-profile").stdout


def test_show_profile_without_a_profile(tmp_path: Path, samples: dict, cli_env: dict[str, str]) -> None:
    root = LifecycleRoot(tmp_path / "indexes")
    root.stage("v1", samples["a"]["faiss"], samples["a"]["duckdb"], samples["a"]["scip"])
    root.publish("v1")
    done = indexctl(cli_env, "show-profile")
    assert done.returncode == 0 and "no tuning.json" in done.stdout
