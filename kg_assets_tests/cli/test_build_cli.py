"""`indexctl build`, `search`, `export-idmap`, `materialize-join` and `scripts/index_all.py` as operators run them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kg_assets.lib import catalog
from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.cli.test_indexctl import indexctl
from kg_assets_tests.helpers import SCIP_PYTHON
from kg_assets_tests.sample_repo import write_repo

pytestmark = pytest.mark.skipif(not SCIP_PYTHON.exists(), reason="run scripts/setup.sh (npm ci) for scip-python")
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], LifecycleRoot, Path]:
    """A root where `indexctl build v1 --publish` built and published the sample repository."""
    import os

    base = tmp_path_factory.mktemp("cli-build")
    repo = write_repo(base / "repo")
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CODEINTEL_INDEXES_DIR")}
    env["KG_INDEXES_DIR"] = str(base / "indexes")
    done = indexctl(env, "build", "v1", "--repo", str(repo), "--publish")
    assert done.returncode == 0, done.stderr
    assert "Built v1 ->" in done.stdout and "Published v1" in done.stdout
    return env, LifecycleRoot(base / "indexes"), repo


def test_build_publish_and_search(published: tuple) -> None:
    env, root, _ = published
    assert root.current() == "v1"
    done = indexctl(env, "search", "read a JSON configuration file", "-k", "3", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["version"] == "v1" and len(result["hits"]) == 3
    assert result["hits"][0]["uri"] == "parsing.py"
    text = indexctl(env, "search", "area of a circle", "-k", "2").stdout.splitlines()
    assert len(text) == 2 and "shapes/geometry.py:" in text[0]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["build", "v1"], 5, "version v1 already exists"),
        (["build", "v9", "--factory", "IVF,Nonsense"], 2, "invalid FAISS factory"),
        (["build", "v9", "--embedder", "nope"], 2, "unknown embedder"),
        (["search", "x", "--version", "v7"], 3, "unknown version v7"),
        (["search", "   "], 2, "the query is empty"),
    ],
)
def test_build_and_search_errors(published: tuple, args: list[str], code: int, message: str) -> None:
    env, root, repo = published
    if args[0] == "build":
        args = [*args, "--repo", str(repo)]
    done = indexctl(env, *args)
    assert done.returncode == code, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert root.list_versions() == ["v1"]


def test_export_idmap_and_materialize_join(published: tuple, tmp_path: Path) -> None:
    env, root, _ = published
    db = tmp_path / "catalog.duckdb"
    db.write_bytes((root.version_dir("v1") / "catalog.duckdb").read_bytes())
    out = tmp_path / "faiss" / "faiss_idmap.parquet"
    out.parent.mkdir()
    done = indexctl(env, "export-idmap", "--out", str(out), "--duckdb", str(db))
    assert done.returncode == 0, done.stderr
    rows = catalog.describe(root.version_dir("v1") / "catalog.duckdb").chunk_count
    assert f"Exported {rows} FAISS rows" in done.stdout and "Refreshed=True" in done.stdout
    done = indexctl(env, "materialize-join", str(out), "--duckdb", str(db))
    assert done.returncode == 0 and f"Refreshed=False rows={rows}" in done.stdout
    with catalog.connect_read_only(db) as con:
        assert con.execute("SELECT count(*) FROM v_faiss_join").fetchone()[0] == rows
    immutable = root.version_dir("v1") / "faiss_idmap.parquet"
    done = indexctl(env, "export-idmap", "--out", str(immutable))
    assert done.returncode == 2 and "immutable" in done.stderr
    root.verify_version("v1")


def test_index_all_builds_a_staging_dir_under_the_root(published: tuple) -> None:
    """Runbook section 1 as written: `bin/index_all.py --repo . --out indexes/versions/v2.staging`."""
    env, root, repo = published
    env = {**env, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}  # an activated venv
    script = [str(REPO_ROOT / "bin" / "index_all.py"), "--repo", str(repo)]
    done = subprocess.run(
        [*script, "--out", str(root.versions_dir / "v2.staging")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    root.verify_version("v2")
    assert root.current() == "v1"
