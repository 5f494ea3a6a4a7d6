"""The `embedder` asset group: its shape, and the corpus step refusing a manifest that names a benchmark's
repository (through Dagster and through `indexctl embedder train`)."""

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg

from kg_assets.definitions import defs
from kg_assets.defs.embedder.assets import EMBEDDER_ASSETS, EMBEDDER_GROUP
from kg_assets.defs.embedder.resources import EMBEDDER_TRAINING
from kg_assets.lib.errors import UsageError


def _refused_manifest(path: Path) -> Path:
    flask = {"name": "flask", "language": "python", "source": "pypi-sdist", "package": "flask"}
    entry = {**flask, "version": "3.0.3", "sha256": "0" * 64, "subdir": ""}
    path.write_text(json.dumps({"max_chunks_per_source": 10, "sources": [entry]}), encoding="utf-8")
    return path


def test_the_job_materializes_the_whole_embedder_group_in_one_run() -> None:
    job = defs.resolve_job_def("embedder_training")
    steps = sorted(a.key.to_user_string() for a in EMBEDDER_ASSETS)
    assert sorted(node.name for node in job.nodes) == sorted([*steps, "static_embedder_embedder_eval"])
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).group_name == EMBEDDER_GROUP} == {
        "teacher",
        "distilled",
        "code_corpus",
        "teacher_features",
        "static_embedder",
    }


def test_code_corpus_refuses_a_manifest_naming_a_benchmark_repository(tmp_path: Path) -> None:
    paths = {"manifest": str(_refused_manifest(tmp_path / "m.json")), "work_dir": str(tmp_path / "w")}
    # The job of the loaded definitions, as the CLI runs it (dg.materialize builds a second Definitions, which
    # fails on an instance weakref an earlier test's run left in Dagster's load context).
    result = defs.resolve_job_def("embedder_training").execute_in_process(
        run_config={"resources": {EMBEDDER_TRAINING: {"config": {**paths, "out": str(tmp_path / "o")}}}},
        asset_selection=[dg.AssetKey("code_corpus")],
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    error = failure.step_failure_data.error.cause  # Dagster's step error wraps the engine's
    assert error.cls_name == UsageError.__name__ and "flask" in error.message
    assert not (tmp_path / "w" / "sources").exists()  # refused before anything was fetched


def test_indexctl_embedder_train_refuses_it_with_one_line_and_exit_2(tmp_path: Path) -> None:
    manifest = _refused_manifest(tmp_path / "m.json")
    paths = ["--manifest", str(manifest), "--work-dir", str(tmp_path / "w"), "--out", str(tmp_path / "o")]
    done = subprocess.run(
        [sys.executable, "-m", "kg_assets.cli.main", "--root", str(tmp_path / "root"), "embedder", "train", *paths],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "corpus manifest refused" in done.stderr and "flask" in done.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "root").exists()  # no run was started
