"""Shared fixtures: small real artifacts and a fresh lifecycle root per test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.sample_artifacts import write_sample

INDEXCTL = [sys.executable, "-m", "kg_assets.cli.main"]


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Two consistent artifact sets (`a`, `b`) that differ in content; treat them as read-only."""
    base = tmp_path_factory.mktemp("samples")
    return {"a": write_sample(base / "a", seed=0), "b": write_sample(base / "b", seed=1)}


@pytest.fixture
def root(tmp_path: Path) -> LifecycleRoot:
    return LifecycleRoot(tmp_path / "indexes")


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for `indexctl` subprocesses: its own root, its DAGSTER_HOME left to indexctl's default."""
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CODEINTEL_INDEXES_DIR")}
    env["KG_INDEXES_DIR"] = str(tmp_path / "indexes")
    return env


@pytest.fixture
def sample_versions(root: LifecycleRoot, samples: dict[str, dict[str, Path]]) -> LifecycleRoot:
    """The `root` (and `cli_env`) root with samples a and b staged as v1 (published) and v2."""
    stage_sample(root, "v1", samples["a"])
    stage_sample(root, "v2", samples["b"])
    root.publish("v1")
    return root


def stage_sample(root: LifecycleRoot, version: str, sample: dict[str, Path]) -> Path:
    """Stage one sample artifact set with every optional file."""
    return root.stage(
        version,
        sample["faiss"],
        sample["duckdb"],
        sample["scip"],
        idmap_path=sample["idmap"],
        tuning_path=sample["tuning"],
    )


def published_state(root: LifecycleRoot) -> dict[str, object]:
    """Everything a reader of the root depends on (pointer, link, history, version directories and bytes)."""
    link = root.current_link
    files = {}
    if root.versions_dir.is_dir():
        for path in sorted(root.versions_dir.rglob("*")):
            if path.is_file():
                files[str(path.relative_to(root.root))] = path.read_bytes()
    return {
        "current": root.current_file.read_bytes() if root.current_file.exists() else None,
        "link": os.readlink(link) if link.is_symlink() else None,
        "history": root.history_file.read_bytes() if root.history_file.exists() else None,
        "dirs": sorted(p.name for p in root.versions_dir.iterdir()) if root.versions_dir.is_dir() else None,
        "files": files,
    }


PLANTED_FILE = "parsing.py"


@pytest.fixture(scope="session")
def built_pair(tmp_path_factory: pytest.TempPathFactory) -> LifecycleRoot:
    """A root with v1 built from the sample repository and v2 from a copy where one function of `PLANTED_FILE`
    changed (two real builds, about 20 s; v2 reuses v1's vectors). Treat it as read-only."""
    import dagster as dg

    from kg_assets_tests.helpers import SCIP_PYTHON, run_build
    from kg_assets_tests.sample_repo import write_repo

    if not SCIP_PYTHON.exists():
        pytest.skip("run scripts/setup.sh (npm ci) for scip-python")
    base = tmp_path_factory.mktemp("built-pair")
    root = LifecycleRoot(base / "indexes")
    first, second = write_repo(base / "repo-v1"), write_repo(base / "repo-v2")
    planted = second / PLANTED_FILE
    planted.write_text(planted.read_text().replace("return [w.lower() for w in text.split()]", "return text.split()"))
    with dg.instance_for_test() as instance:
        for version, repo in (("v1", first), ("v2", second)):
            assert run_build(root, repo, version, instance).success
    return root
