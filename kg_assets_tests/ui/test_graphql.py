"""A build launched through `dagster dev`'s GraphQL API (the path the UI's Materialize takes) matches indexctl's."""

from __future__ import annotations

import json

import pytest

from kg_assets.lib import catalog
from kg_assets_tests.cli.test_indexctl import indexctl
from kg_assets_tests.ui.conftest import BuiltVersion, DagsterDev

pytestmark = pytest.mark.ui

BUILD_ASSETS = ("chunks", "embeddings", "scip_index", "faiss_index", "faiss_idmap", "catalog", "index_version")


def test_graphql_launched_build_succeeds_and_records_metadata(dagster_dev: DagsterDev, built_version: BuiltVersion):
    run = dagster_dev.run(built_version.run_id)
    assert (run["status"], run["jobName"]) == ("SUCCESS", "build")
    assert {"key": "dagster/partition", "value": built_version.version} in run["tags"]
    meta = {asset: dagster_dev.materialization_metadata(asset, built_version.version) for asset in BUILD_ASSETS}
    n = meta["chunks"]["chunks"]
    assert n > 10 and meta["chunks"]["files"] == 6 and meta["chunks"]["repo"] == str(built_version.repo)
    assert (meta["embeddings"]["dimension"], meta["embeddings"]["embedded"]) == (384, n)
    assert (meta["faiss_index"]["factory"], meta["faiss_index"]["ntotal"]) == ("Flat", n)
    assert meta["faiss_idmap"]["rows"] == meta["catalog"]["chunks"] == n
    assert meta["scip_index"]["documents"] >= 3
    # The root reached the run worker only through the server's $KG_INDEXES_DIR.
    root = dagster_dev.root
    assert meta["index_version"]["path"] == str(root.version_dir(built_version.version))
    attrs = meta["index_version"]["attrs"]
    assert (attrs["faiss_dim"], attrs["faiss_ntotal"], attrs["faiss_factory"], attrs["chunk_count"]) == (
        384,
        n,
        "Flat",
        n,
    )
    assert root.verify_version(built_version.version)["attrs"] == attrs


def test_indexctl_build_of_the_same_repo_reuses_every_vector_and_matches(
    dagster_dev: DagsterDev, built_version: BuiltVersion
):
    """indexctl on the same root and instance builds what the UI-launched run built, chunk for chunk."""
    done = indexctl(dagster_dev.env, "build", "v2", "--repo", str(built_version.repo), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["reused"], summary["embedded"]) == (summary["chunks"], 0)
    root = dagster_dev.root
    assert root.read_manifest("v2")["attrs"] == root.read_manifest(built_version.version)["attrs"]
    ids = []
    for version in (built_version.version, "v2"):
        with catalog.connect_read_only(root.version_dir(version) / "catalog.duckdb") as con:
            ids.append(con.execute("SELECT chunk_id, content_hash FROM chunks ORDER BY chunk_id").fetchall())
    assert ids[0] == ids[1] and len(ids[0]) == summary["chunks"]
    # The CLI used the server's instance (<root>/.dagster), so its run is there too.
    assert dagster_dev.materialization_metadata("index_version", "v2")["path"] == str(root.version_dir("v2"))
