"""The Dagster definitions load, keep their shape, and the lifecycle jobs run on a real instance."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from kg_assets.definitions import defs
from kg_assets.defs.lifecycle.jobs import JOB_OPS, LIFECYCLE_POOL
from kg_assets.defs.lifecycle.resources import LifecycleResource
from kg_assets.lib.errors import NotFoundError
from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.conftest import stage_sample


def test_definitions_load() -> None:
    dg.Definitions.validate_loadable(defs)


def test_job_graph_snapshot() -> None:
    shape = {}
    for name in sorted(JOB_OPS):
        job = defs.resolve_job_def(name)
        shape[name] = [(node.name, node.definition.pool) for node in job.nodes]
    assert shape == {
        "gc": [("collect_garbage", LIFECYCLE_POOL)],
        "publish": [("publish_version", LIFECYCLE_POOL)],
        "rollback": [("rollback_version", LIFECYCLE_POOL)],
        "stage": [("stage_version", LIFECYCLE_POOL)],
    }


def _run(
    job_name: str, root: LifecycleRoot, instance: dg.DagsterInstance, **config: object
) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def(job_name)
    return job.execute_in_process(
        run_config={"ops": {JOB_OPS[job_name]: {"config": config}}},
        resources={"lifecycle": LifecycleResource(root=str(root.root))},
        instance=instance,
        raise_on_error=False,
    )


def test_publish_and_rollback_jobs_flip_and_are_recorded(root: LifecycleRoot, samples: dict) -> None:
    stage_sample(root, "v1", samples["a"])
    stage_sample(root, "v2", samples["b"])
    with dg.instance_for_test() as instance:
        assert _run("publish", root, instance, version="v1").success
        result = _run("publish", root, instance, version="v2", expect_current="v1")
        assert result.success
        assert result.output_for_node("publish_version")["from_version"] == "v1"
        assert _run("rollback", root, instance, version="v1").success
        assert root.current() == "v1"
        runs = instance.get_runs()
        assert [r.job_name for r in runs] == ["rollback", "publish", "publish"]
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)


def test_failed_publish_fails_the_run_and_keeps_current(root: LifecycleRoot, samples: dict) -> None:
    stage_sample(root, "v1", samples["a"])
    root.publish("v1")
    with dg.instance_for_test() as instance:
        result = _run("publish", root, instance, version="v9")
        assert not result.success
        assert instance.get_runs()[0].status == dg.DagsterRunStatus.FAILURE
        with pytest.raises(NotFoundError):
            defs.resolve_job_def("publish").execute_in_process(
                run_config={"ops": {"publish_version": {"config": {"version": "v9"}}}},
                resources={"lifecycle": LifecycleResource(root=str(root.root))},
                instance=instance,
            )
    assert root.current() == "v1"


def test_stage_and_gc_jobs(root: LifecycleRoot, samples: dict, tmp_path: Path) -> None:
    a = samples["a"]
    with dg.instance_for_test() as instance:
        staged = _run(
            "stage",
            root,
            instance,
            version="v1",
            faiss=str(a["faiss"]),
            duckdb=str(a["duckdb"]),
            scip=str(a["scip"]),
            extras={"notes": str(a["tuning"])},
        )
        assert staged.success
        assert staged.output_for_node("stage_version")["attrs"]["faiss_ntotal"] == 500
        assert (root.version_dir("v1") / "notes").is_file()
        stage_sample(root, "v2", samples["b"])
        report = _run("gc", root, instance, keep=1).output_for_node("collect_garbage")
    assert report["removed_versions"] == ["v1"]


def test_asset_graph_snapshot() -> None:
    graph = defs.resolve_asset_graph()
    deps = {
        key.to_user_string(): sorted(p.to_user_string() for p in graph.get(key).parent_keys)
        for key in graph.get_all_asset_keys()
    }
    assert deps == {
        "chunks": [],
        "embeddings": ["chunks"],
        "scip_index": ["chunks"],
        "lexical_index": ["chunks"],
        "faiss_index": ["embeddings"],
        "faiss_idmap": ["faiss_index"],
        "catalog": ["chunks", "embeddings", "faiss_idmap", "scip_index"],
        "index_version": ["catalog", "faiss_idmap", "faiss_index", "lexical_index", "scip_index"],
        "tuning_profile": ["catalog", "faiss_index"],
        "eval_pool": ["catalog", "faiss_index", "tuning_profile"],
        "eval_metrics": ["eval_pool"],
        "faiss_idmap_export": [],
        "faiss_join": ["faiss_idmap_export"],
        "teacher": [],
        "distilled": ["teacher"],
        "code_corpus": ["teacher"],
        "teacher_features": ["code_corpus", "teacher"],
        "static_embedder": ["distilled", "teacher_features"],
    }
    checks = sorted(key.to_user_string() for key in graph.asset_check_keys)
    assert checks == [
        "catalog:catalog_consistent",
        "eval_metrics:ann_recall_floor",
        "eval_metrics:mrr_no_regression",
        "static_embedder:embedder_eval",
    ]
    assert sorted(job.name for job in defs.resolve_all_job_defs() if not job.name.startswith("__")) == [
        "build",
        "embedder_training",
        "eval",
        "faiss_join_refresh",
        "gc",
        "publish",
        "rollback",
        "stage",
        "tune",
    ]
    build = defs.resolve_job_def("build")
    steps = {node.name: sorted(n.name for n in getattr(node.definition, "nodes", [])) for node in build.nodes}
    assert steps == {  # the sharded fan-out: per-shard embed and encode steps inside embeddings and faiss_index
        "chunks": [],
        "scip_index": [],
        "lexical_index": [],
        "embeddings": ["embed_shard", "gather_embeddings", "plan_shards"],
        "faiss_index": ["encode_shard", "merge_shards", "train_shared_index"],
        "faiss_idmap": [],
        "catalog": [],
        "catalog_catalog_consistent": [],
        "index_version": [],
    }
    assert [s.name for s in defs.schedules] == ["nightly_quick_tune", "nightly_eval"]
    assert [s.name for s in defs.sensors] == ["new_commit_build", "auto_eval_after_build", "auto_publish_after_eval"]
