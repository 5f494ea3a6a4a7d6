"""`indexctl` as operators run it: a real subprocess, a real Dagster instance under the root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.conftest import INDEXCTL, published_state


def indexctl(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*INDEXCTL, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def stage_args(version: str, sample: dict[str, Path]) -> list[str]:
    return [
        "stage",
        version,
        str(sample["faiss"]),
        str(sample["duckdb"]),
        str(sample["scip"]),
        "--faiss-idmap",
        str(sample["idmap"]),
        "--tuning",
        str(sample["tuning"]),
    ]


@pytest.fixture(scope="module")
def staged_template(tmp_path_factory: pytest.TempPathFactory, samples: dict) -> Path:
    """A root with v1 (sample a) and v2 (sample b) staged and v1 published, all through indexctl; built once."""
    base = tmp_path_factory.mktemp("staged")
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CODEINTEL_INDEXES_DIR")}
    env["KG_INDEXES_DIR"] = str(base / "indexes")
    for version, sample in (("v1", samples["a"]), ("v2", samples["b"])):
        done = indexctl(env, *stage_args(version, sample))
        assert done.returncode == 0, done.stderr
        assert f"Staged {version} ->" in done.stdout
    done = indexctl(env, "publish", "v1")
    assert done.returncode == 0, done.stderr
    return base / "indexes"


@pytest.fixture
def staged(staged_template: Path, tmp_path: Path) -> LifecycleRoot:
    """A private copy of the staged template root (Dagster instance included) at this test's root."""
    shutil.copytree(staged_template, tmp_path / "indexes", symlinks=True)
    return LifecycleRoot(tmp_path / "indexes")


def test_runbook_round_trip(staged: LifecycleRoot, cli_env: dict[str, str]) -> None:
    done = indexctl(cli_env, "publish", "v2")
    assert done.returncode == 0 and "Published v2 (was v1)" in done.stdout
    done = indexctl(cli_env, "rollback", "v1")
    assert done.returncode == 0 and "Rolled back to v1 (was v2)" in done.stdout
    done = indexctl(cli_env, "rollback", "v1")
    assert done.returncode == 0 and "already current" in done.stdout

    status = json.loads(indexctl(cli_env, "status", "--json").stdout)
    assert status["current"] == "v1"
    assert [(v["version"], v["state"]) for v in status["versions"]] == [("v1", "current"), ("v2", "published")]
    text = indexctl(cli_env, "status").stdout
    assert text.startswith("current: v1\n") and "published" in text
    assert indexctl(cli_env, "ls").stdout.split() == ["v1", "v2"]
    assert json.loads(indexctl(cli_env, "ls", "--json").stdout) == ["v1", "v2"]

    done = indexctl(cli_env, "gc", "--keep", "0", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["removed_versions"] == []  # current and previous are protected


def test_every_flip_is_a_dagster_run_with_from_and_to(staged: LifecycleRoot, cli_env: dict[str, str]) -> None:
    assert indexctl(cli_env, "publish", "v2").returncode == 0
    probe = (
        "import dagster as dg\n"
        "inst = dg.DagsterInstance.get()\n"
        "for run in inst.get_runs():\n"
        "    recs = inst.get_records_for_run(run.run_id).records\n"
        "    events = [r.event_log_entry.dagster_event for r in recs if r.event_log_entry.dagster_event]\n"
        "    outs = [e.step_output_data.metadata for e in events if e.event_type_value == 'STEP_OUTPUT']\n"
        "    meta = {k: v.value for k, v in outs[0].items()} if outs else {}\n"
        "    print(run.job_name, run.status.value, meta.get('from', '-'), meta.get('to', '-'))\n"
    )
    env = {**cli_env, "DAGSTER_HOME": str(staged.root / ".dagster")}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [
        "publish SUCCESS v1 v2",
        "publish SUCCESS <none> v1",
        "stage SUCCESS - -",
        "stage SUCCESS - -",
    ]


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("missing_file", 3, "input for faiss.index not found"),
        ("truncated_faiss", 4, "not a readable FAISS index"),
        ("short_idmap", 4, "ID map has 10 rows but the FAISS index has 500"),
        ("garbage_tuning", 4, "is not valid JSON"),
        ("bad_version", 2, "invalid version id"),
        ("duplicate_stage", 5, "version v2 already exists"),
        ("unknown_version", 3, "unknown version v7"),
        ("stale_expect", 5, "CURRENT is v1, expected v2"),
        ("bad_extra", 2, "--extra expects name=path"),
        ("unknown_option", 2, "No such option"),
    ],
)
def test_errors_have_distinct_codes_and_change_nothing(
    staged: LifecycleRoot, cli_env: dict[str, str], samples: dict, tmp_path: Path, case: str, code: int, message: str
) -> None:
    bad = {kind: tmp_path / "bad" / path.name for kind, path in samples["b"].items()}
    shutil.copytree(samples["b"]["faiss"].parent, tmp_path / "bad")
    args = stage_args("v3", bad)
    if case == "missing_file":
        bad["faiss"].unlink()
    elif case == "truncated_faiss":
        bad["faiss"].write_bytes(bad["faiss"].read_bytes()[:2048])
    elif case == "short_idmap":
        from kg_assets.lib import idmap

        idmap.write_idmap(idmap.read_idmap(bad["idmap"]).slice(0, 10), bad["idmap"])
    elif case == "garbage_tuning":
        bad["tuning"].write_text("\x00garbage")
    elif case == "bad_version":
        args[1] = "../escape"
    elif case == "duplicate_stage":
        args[1] = "v2"
    elif case == "unknown_version":
        args = ["publish", "v7"]
    elif case == "stale_expect":
        args = ["publish", "v2", "--expect-current", "v2"]
    elif case == "bad_extra":
        args += ["--extra", "nopath"]
    elif case == "unknown_option":
        args = ["publish", "v2", "--no-such-flag"]
    before = published_state(staged)
    done = indexctl(cli_env, *args)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert published_state(staged) == before


def test_read_only_verbs_do_not_import_dagster_or_create_anything(tmp_path: Path, cli_env: dict[str, str]) -> None:
    probe = (
        "import sys\n"
        "from kg_assets.cli.main import main\n"
        "verbs = (['status'], ['status', '--json'], ['ls'], ['ls', '--json'], ['show-profile'], ['search', 'x'],\n"
        "         ['health'], ['health', '--json'], ['diff', 'v1', 'v2'], ['mcp'])  # mcp: stdin is empty\n"
        "for verb in verbs:\n"
        "    try:\n"
        "        main(verb)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code in (0, 3), exc.code  # 3: nothing published yet\n"
        "assert 'dagster' not in sys.modules, 'read-only verbs must not import dagster'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env=cli_env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert "current: <none>" in done.stdout
    assert not (tmp_path / "indexes").exists()


def test_root_option_wins_over_environment(cli_env: dict[str, str], samples: dict, tmp_path: Path) -> None:
    other = tmp_path / "other-root"
    done = indexctl(cli_env, "--root", str(other), *stage_args("v1", samples["a"]))
    assert done.returncode == 0, done.stderr
    assert (other / "versions" / "v1" / "manifest.json").is_file()
    assert (other / ".dagster" / "dagster.yaml").is_file()
    assert not (tmp_path / "indexes").exists()


def test_help_lists_the_exit_codes(cli_env: dict[str, str]) -> None:
    done = indexctl(cli_env, "--help")
    assert done.returncode == 0
    assert "3 version or file not found" in done.stdout
    for verb in ("stage", "publish", "rollback", "status", "ls", "gc"):
        assert verb in done.stdout
