"""Issue 11 item 2 / issue 12 item 9: `build --publish`, the publish job and the sensor chain share one publish
path (lifecycle pool, eval gate, compare-and-swap against the CURRENT the caller saw)."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg

from kg_assets.definitions import defs
from kg_assets.defs.lifecycle.jobs import LIFECYCLE_POOL
from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.defs.test_build import materializations
from kg_assets_tests.helpers import run_build
from kg_assets_tests.sample_repo import write_repo


def test_build_publish_is_a_compare_and_swap_in_the_lifecycle_pool(built_pair: LifecycleRoot, tmp_path: Path) -> None:
    shutil.copytree(built_pair.root, tmp_path / "indexes", symlinks=True)
    root = LifecycleRoot(tmp_path / "indexes")
    root.publish("v1")
    repo = write_repo(tmp_path / "repo")
    node = defs.resolve_job_def("build").graph.node_named("index_version")
    assert node.definition.pool == LIFECYCLE_POOL
    with dg.instance_for_test() as instance:
        # The build saw v2 current when it started; an operator has since moved CURRENT to v1: refuse (exit 5).
        stale = run_build(root, repo, "v3", instance, publish=True, expect_current="v2")
        assert not stale.success
        (failure,) = stale.get_step_failure_events()
        assert failure.step_failure_data.error.cause.cls_name == "ConflictError"
        assert "CURRENT is v1, expected v2" in failure.step_failure_data.error.cause.message
        assert root.current() == "v1" and root.list_versions() == ["v1", "v2", "v3"]

        fresh = run_build(root, repo, "v4", instance, publish=True, expect_current="v1")
        assert fresh.success
        sealed = materializations(fresh)["index_version"]
        assert (sealed["published_from"], sealed["eval_gate"]) == ("v1", "not failed")
        assert root.current() == "v4" and root.history()[-1]["from"] == "v1"
