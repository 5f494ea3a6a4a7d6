"""Issue 20's hostile repository through `indexctl build`: its git configuration runs nothing, nothing outside it
or excluded from the build reaches an artifact, and a 50 MB file holds nothing up."""

from __future__ import annotations

import json
import time
from pathlib import Path

import duckdb
import pytest

from kg_assets.lib import scip
from kg_assets.lib.lifecycle import CATALOG_FILE, SCIP_FILE, LifecycleRoot
from kg_assets_tests.cli.test_indexctl import indexctl
from kg_assets_tests.helpers import SCIP_PYTHON
from kg_assets_tests.hostile_repo import arm_git_config, link_indexed_directory_outside

pytestmark = pytest.mark.skipif(not SCIP_PYTHON.exists(), reason="run scripts/setup.sh (npm ci) for scip-python")

OUTSIDE, EXCLUDED, HUGE = "qqoutsideleakqq", "zqxexcludedsecretzqx", "hugefilemarker"
BUILD_BOUND_S = 240  # the whole build, 50 MB file included; before the fix scip-python ran on it for minutes


def hostile_repository(base: Path) -> tuple[Path, Path]:
    """A repository with a symlinked directory in git's index, an excluded secret, a 50 MB Python file and a
    `.git/config` whose settings run commands (each leaves a file in the marks directory); (repo, marks)."""
    outside = base / "outside"
    outside.mkdir()
    (outside / "leak.py").write_text(f'def {OUTSIDE}():\n    """{OUTSIDE} documented."""\n    return "{OUTSIDE}"\n')
    repo = base / "repo"
    (repo / "secret").mkdir(parents=True)
    (repo / "ok.py").write_text(
        'def area(side: int) -> int:\n    """Area of a square of this side."""\n    return side * side\n'
    )
    (repo / "secret" / "creds.py").write_text(f'API_KEY = "{EXCLUDED}"\n\n\ndef {EXCLUDED}():\n    """{EXCLUDED}."""\n')
    with (repo / "huge.py").open("w") as fh:
        fh.write(f'"""{HUGE}"""\n')
        line = f"{HUGE} = 1\n" * 10_000
        for _ in range(50 * 1_000_000 // len(line)):
            fh.write(line)
    link_indexed_directory_outside(repo, "sub", outside)  # commits everything
    marks = base / "marks"
    arm_git_config(repo, marks)  # last: the git commands above would run what it names
    return repo, marks


def catalog_text(path: Path) -> str:
    """Every string value of every table and view of a catalog, joined."""
    with duckdb.connect(str(path), read_only=True) as con:
        columns = con.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE data_type = 'VARCHAR'"
        ).fetchall()
        values = [
            str(v) for table, column in columns for (v,) in con.execute(f'SELECT "{column}" FROM "{table}"').fetchall()
        ]
    return "\n".join(values)


def test_a_hostile_repository_runs_nothing_leaks_nothing_and_builds_within_its_bounds(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    repo, marks = hostile_repository(tmp_path)
    started = time.monotonic()
    done = indexctl(cli_env, "build", "v1", "--repo", str(repo), "--exclude", "secret/*", "--json")
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert seconds < BUILD_BOUND_S
    assert sorted(p.name for p in marks.iterdir()) == []  # nothing the repository's git configuration names ran
    skipped = json.loads(done.stdout)["skipped"]
    assert skipped["excluded (--exclude)"]["examples"] == ["secret/creds.py"]
    assert skipped["larger than 1048576 bytes"]["examples"] == ["huge.py"]
    assert skipped["a symlink on its path (never followed, it could leave the repository)"]["examples"] == [
        "sub/leak.py"
    ]
    vdir = LifecycleRoot(cli_env["KG_INDEXES_DIR"]).version_dir("v1")
    assert [d.relative_path for d in scip.read_index(vdir / SCIP_FILE).documents] == ["ok.py"]
    text = catalog_text(vdir / CATALOG_FILE)
    assert "area" in text and "Area of a square" in text  # what the repository holds is there
    for leaked in (OUTSIDE, EXCLUDED, HUGE, "API_KEY", "creds.py", "huge.py", "leak.py"):
        assert leaked not in text
        for artifact in vdir.iterdir():  # index.scip, lexical.npz (stored, not compressed), the rest
            assert leaked.encode() not in artifact.read_bytes(), (leaked, artifact.name)
