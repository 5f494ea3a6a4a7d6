"""Issue 11 through `indexctl`: hostile ids and inputs, broken roots and pointers never lose or move `CURRENT`."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from kg_assets.lib.lifecycle import MANIFEST, MAX_VERSION_LEN, LifecycleRoot
from kg_assets_tests.cli import test_indexctl
from kg_assets_tests.cli.test_indexctl import indexctl, stage_args
from kg_assets_tests.conftest import INDEXCTL, published_state

staged_template, staged = test_indexctl.staged_template, test_indexctl.staged  # the v1 (current) + v2 root


def _one_line_error(done, code: int, message: str) -> None:
    assert done.returncode == code, (done.stdout, done.stderr)
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_publish_with_a_corrupt_history_fails_without_moving_current(
    staged: LifecycleRoot, cli_env: dict[str, str]
) -> None:
    staged.history_file.write_text('{"events": [')
    before = published_state(staged)
    _one_line_error(indexctl(cli_env, "publish", "v2"), 4, "history.json is malformed")
    assert published_state(staged) == before


def test_rollback_to_a_never_published_version_is_refused(staged: LifecycleRoot, cli_env: dict[str, str]) -> None:
    before = published_state(staged)
    _one_line_error(indexctl(cli_env, "rollback", "v2"), 4, "never current; publish it instead")
    assert published_state(staged) == before
    assert indexctl(cli_env, "publish", "v2").returncode == 0
    assert indexctl(cli_env, "rollback", "v1").returncode == 0  # v1 was current before
    assert staged.current() == "v1"


def test_a_hostile_current_is_not_trusted_and_a_dry_run_writes_nothing(
    staged: LifecycleRoot, cli_env: dict[str, str]
) -> None:
    staged.current_file.write_text("../../../tmp/x")
    before = published_state(staged)
    for args in (("gc", "--dry-run"), ("status",)):
        _one_line_error(indexctl(cli_env, *args), 4, "does not hold a version id")
    assert published_state(staged) == before
    assert os.readlink(staged.current_link) == "versions/v1"


def test_publish_repairs_a_current_link_replaced_by_a_directory(staged: LifecycleRoot, cli_env: dict[str, str]) -> None:
    staged.current_link.unlink()
    staged.current_link.mkdir()
    (staged.current_link / "stray").write_text("x")
    done = indexctl(cli_env, "health")
    assert done.returncode == 4 and "publish v1` repairs it" in done.stdout
    done = indexctl(cli_env, "publish", "v2")
    assert done.returncode == 0, done.stderr
    assert os.readlink(staged.current_link) == "versions/v2"
    assert indexctl(cli_env, "health").returncode == 0
    assert indexctl(cli_env, "gc").returncode == 0
    assert not list(staged.versions_dir.glob(".trash-*"))


def test_one_malformed_version_does_not_break_the_root(staged: LifecycleRoot, cli_env: dict[str, str]) -> None:
    source = staged.version_dir("v2")
    breakages = {
        "nosize": lambda m: m["files"]["faiss.index"].pop("size"),
        "fileslist": lambda m: m.update(files=list(m["files"])),
        "validationstr": lambda m: m.update(validation="ok"),
    }
    for name, damage in breakages.items():
        shutil.copytree(source, staged.versions_dir / name)
        manifest = json.loads((source / MANIFEST).read_text())
        manifest["version"] = name
        damage(manifest)
        (staged.versions_dir / name / MANIFEST).write_text(json.dumps(manifest))
    shutil.copytree(source, staged.versions_dir / "dirmanifest")
    (staged.versions_dir / "dirmanifest" / MANIFEST).unlink()
    (staged.versions_dir / "dirmanifest" / MANIFEST).mkdir()
    shutil.copytree(source, staged.versions_dir / "nantuning")
    manifest = json.loads((source / MANIFEST).read_text())
    (staged.versions_dir / "nantuning" / MANIFEST).write_text(json.dumps({**manifest, "version": "nantuning"}))
    (staged.versions_dir / "nantuning" / "tuning.json").write_text('{"nprobe": NaN}')
    broken = {*breakages, "dirmanifest", "nantuning"}

    done = indexctl(cli_env, "status", "--json")
    assert done.returncode == 0, done.stderr
    states = {v["version"]: v["state"] for v in json.loads(done.stdout)["versions"]}
    assert states == {"v1": "current", "v2": "staged", **dict.fromkeys(broken, "broken")}
    done = indexctl(cli_env, "gc", "--keep", "0", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["removed_versions"] == ["v2"]
    assert set(staged.list_versions()) == {"v1", *broken}

    staged.history_file.write_text("[]")
    assert indexctl(cli_env, "status").returncode == 0
    _one_line_error(indexctl(cli_env, "gc"), 4, "history.json is malformed")


def test_version_ids_have_a_maximum_length(staged: LifecycleRoot, cli_env: dict[str, str], samples: dict) -> None:
    for length in (MAX_VERSION_LEN + 1, 247, 300):
        _one_line_error(indexctl(cli_env, *stage_args("v" * length, samples["a"])), 2, "invalid version id")
    longest = "v" * MAX_VERSION_LEN
    assert indexctl(cli_env, *stage_args(longest, samples["a"])).returncode == 0
    done = indexctl(cli_env, "gc", "--keep", "0", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["removed_versions"] == [longest, "v2"]


def test_inputs_that_are_not_regular_files_are_refused(
    staged: LifecycleRoot, cli_env: dict[str, str], samples: dict, tmp_path: Path
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    args = stage_args("v3", samples["a"])
    args[2] = str(fifo)
    _one_line_error(indexctl(cli_env, *args), 4, f"input for faiss.index is not a regular file: {fifo}")
    args[2] = str(tmp_path)
    _one_line_error(indexctl(cli_env, *args), 4, f"input for faiss.index is a directory, not a file: {tmp_path}")
    assert not staged.staging_dir("v3").exists()


def test_a_busy_pool_is_waited_for_with_a_limit_and_signals_end_the_wait(
    staged: LifecycleRoot, cli_env: dict[str, str], samples: dict
) -> None:
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(staged.root / ".dagster")))
    instance.event_log_storage.claim_concurrency_slot("lifecycle", "f" * 32, "stage_version")  # a stuck stage
    before = published_state(staged)
    started = time.monotonic()
    done = indexctl(cli_env, "--wait", "1", "rollback", "v1")
    holder = f"run {'f' * 8} (unknown job step stage_version)"
    assert done.returncode == 5 and done.stderr.splitlines() == [
        f"indexctl: waiting up to 1 s for the lifecycle pool: {holder} holds it",
        f"indexctl: error: the lifecycle pool is busy: {holder} holds its slot; retry when it ends, or wait longer "
        "with `indexctl --wait SECONDS`",
    ]
    assert time.monotonic() - started < 15
    waiting = subprocess.Popen(
        [*INDEXCTL, "--wait", "600", "publish", "v2"], env=cli_env, stderr=subprocess.PIPE, text=True
    )
    note = waiting.stderr.readline()  # it says whom it waits for
    assert note.startswith(f"indexctl: waiting up to 600 s for the lifecycle pool: run {'f' * 8}"), note
    time.sleep(1)
    waiting.send_signal(signal.SIGTERM)
    assert waiting.wait(timeout=10) == 130
    assert waiting.stderr.read().strip() == "indexctl: interrupted (SIGTERM)"  # README: exit 130, its cause
    assert published_state(staged) == before
    instance.event_log_storage.free_concurrency_slots_for_run("f" * 32)
    assert indexctl(cli_env, "publish", "v2").returncode == 0


def test_a_second_stage_of_a_version_being_staged_exits_5_at_once(
    staged: LifecycleRoot, cli_env: dict[str, str], samples: dict
) -> None:
    with staged.staging_lock("v3"):
        started = time.monotonic()
        done = indexctl(cli_env, *stage_args("v3", samples["a"]))
        _one_line_error(done, 5, "version v3 is being staged or built (pid ")
        assert time.monotonic() - started < 15


def test_no_output_path_may_write_into_a_sealed_version(
    staged: LifecycleRoot, cli_env: dict[str, str], tmp_path: Path
) -> None:
    before = published_state(staged)
    done = indexctl(cli_env, "eval", "--out-dir", str(staged.versions_dir), "--samples", "5")
    _one_line_error(done, 2, f"is inside {staged.versions_dir}, whose versions are immutable; pass another --")
    linked = tmp_path / "catalog.duckdb"
    os.link(staged.version_dir("v1") / "catalog.duckdb", linked)
    idmap = str(staged.version_dir("v1") / "faiss_idmap.parquet")
    done = indexctl(cli_env, "materialize-join", idmap, "--duckdb", str(linked))
    _one_line_error(done, 2, f"{linked} is a hard link to a file of version v1, which is immutable")
    assert published_state(staged) == before


def test_control_characters_in_file_names_cannot_spoof_output_lines(
    staged: LifecycleRoot, cli_env: dict[str, str], samples: dict, tmp_path: Path
) -> None:
    import duckdb

    sample = {kind: tmp_path / "evil" / path.name for kind, path in samples["b"].items()}
    shutil.copytree(samples["b"]["faiss"].parent, tmp_path / "evil")
    with duckdb.connect(str(sample["duckdb"])) as con:
        con.execute("UPDATE chunks SET uri = 'pkg/evil\n  + spoofed.py' WHERE uri = 'pkg/mod1.py'")
    assert indexctl(cli_env, *stage_args("v3", sample)).returncode == 0
    done = indexctl(cli_env, "diff", "v2", "v3")
    assert done.returncode == 0, done.stderr
    assert "  + pkg/evil\\n  + spoofed.py" in done.stdout.splitlines()
    assert not any(line.lstrip().startswith("+ spoofed") for line in done.stdout.splitlines())


def test_a_catalog_held_by_another_process_is_a_conflict(staged: LifecycleRoot, cli_env: dict[str, str]) -> None:
    catalog = staged.version_dir("v1") / "catalog.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, sys; con = duckdb.connect({str(catalog)!r}); print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for args in (
            ("search", "parse"),
            ("diff", "v1", "v2"),
            ("tune", "--quick", "--samples", "10"),
            ("eval", "--samples", "5"),
        ):
            _one_line_error(indexctl(cli_env, *args), 5, "is held by another process")
        done = indexctl(cli_env, "health")
        assert done.returncode == 4 and "is held by another process" in done.stdout and "corrupt" not in done.stdout
    finally:
        holder.communicate("")


def test_an_empty_repository_says_so_and_stages_nothing(cli_env: dict[str, str], tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(64))
    _one_line_error(indexctl(cli_env, "build", "v1", "--repo", str(repo)), 4, f"no indexable files in {repo}")
    root = LifecycleRoot(cli_env["KG_INDEXES_DIR"])
    assert not root.staging_dir("v1").exists() and not root.list_versions()


def test_stage_and_publish_refuse_what_health_fails(
    staged: LifecycleRoot, cli_env: dict[str, str], samples: dict, tmp_path: Path
) -> None:
    from kg_assets.lib import catalog

    sample = {kind: tmp_path / "views" / path.name for kind, path in samples["a"].items()}
    shutil.copytree(samples["a"]["faiss"].parent, tmp_path / "views")
    catalog.refresh_join(sample["duckdb"], samples["b"]["idmap"])  # views that map FAISS rows to other ids
    done = indexctl(cli_env, *stage_args("v3", sample))
    _one_line_error(done, 4, "idmap_views_resolve failed: faiss_idmap external_id values differ")
    assert not staged.staging_dir("v3").exists() and "v3" not in staged.list_versions()

    before = published_state(staged)
    (staged.version_dir("v2") / "tuning.json").write_text(json.dumps({"factory": "HNSW32", "ntotal": 7, "nprobe": 4}))
    done = indexctl(cli_env, "health", "--version", "v2")
    assert done.returncode == 4 and "tuning_fits_index" in done.stdout
    _one_line_error(indexctl(cli_env, "publish", "v2"), 4, "v2 is unhealthy, not publishing it: tuning_fits_index")
    assert staged.current() == "v1" and published_state(staged)["history"] == before["history"]


def test_knob_values_are_validated_against_the_index(
    staged: LifecycleRoot, cli_env: dict[str, str], samples: dict, tmp_path: Path
) -> None:
    before = published_state(staged)
    done = indexctl(cli_env, "tune", "--nprobe", "3000000000")
    _one_line_error(done, 2, "nprobe=3000000000 is out of range for IVF8,Flat: use 1 to 8")
    assert published_state(staged) == before
    sample = {kind: tmp_path / "knobs" / path.name for kind, path in samples["a"].items()}
    shutil.copytree(samples["a"]["faiss"].parent, tmp_path / "knobs")
    sample["tuning"].write_text(json.dumps({"nprobe": 3000000000}))
    _one_line_error(indexctl(cli_env, *stage_args("v3", sample)), 4, "tuning_fits_index failed: nprobe=3000000000")
    sample["tuning"].write_text(json.dumps({"nprobe": 4, "k_factor": 0.5}))
    _one_line_error(indexctl(cli_env, *stage_args("v3", sample)), 4, "k_factor must be at least 1")


SECRET = "TOPSECRET:x:0:0:a line of a private file"


def test_errors_name_paths_never_file_contents(
    staged: LifecycleRoot, cli_env: dict[str, str], samples: dict, tmp_path: Path
) -> None:
    secret = tmp_path / "private.txt"
    secret.write_text(SECRET + "\n" + "more private lines\n" * 3)
    staged.current_file.unlink()
    staged.current_file.symlink_to(secret)
    sample = samples["a"]
    for args in (
        ("status",),
        ("health",),
        ("stage", "v3", str(secret), str(sample["duckdb"]), str(sample["scip"])),  # the secret as the index
    ):
        done = indexctl(cli_env, *args)
        assert done.returncode == 4, (args, done.stderr)
        assert "TOPS" not in done.stderr + done.stdout and "x:0:0" not in done.stderr, (args, done.stderr)
        assert str(staged.current_file) in done.stderr or str(staged.root) in done.stderr, done.stderr


def test_bad_inputs_are_one_line_errors_with_their_exit_code_and_leave_the_root(
    staged: LifecycleRoot, cli_env: dict[str, str], tmp_path: Path
) -> None:
    fifo, a_file = tmp_path / "fifo", tmp_path / "a-file"
    os.mkfifo(fifo)
    a_file.write_text("x")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.py").write_text("A = 1\n")
    cases = [
        (("build", "v3", "--repo", str(fifo)), 2, f"--repo {fifo} is not a directory"),
        (("build", "v3", "--repo", str(repo), "--embedder", "http://127.0.0.1:9#x#-1"), 2, "dimension -1 for"),
        (("build", "v3", "--repo", str(repo), "--embedder", "http://127.0.0.1:9#x#0"), 2, "is out of range"),
        (("build", "v3", "--repo", str(repo), "--work-dir", str(a_file)), 2, f"--work-dir {a_file} is not a directory"),
        (("build", "v1", "--resume"), 5, "version v1 is already built and sealed: there is no failed build"),
        (("publish", "v2", "--expect-current", "../x"), 2, "invalid version id '../x'"),
        (("serve", "--host", "999.1.1.1", "--port", "0"), 2, "--host '999.1.1.1' is not an address to listen on"),
        (("eval", "--queries", str(fifo)), 2, f"queries file {fifo} is not a regular file"),
    ]
    before = published_state(staged)
    for args, code, message in cases:
        _one_line_error(indexctl(cli_env, *args), code, message)
    assert published_state(staged) == before


def _versions(root: LifecycleRoot) -> dict[str, bytes]:
    """Every file of every version directory, by path: what gc must leave when it refuses."""
    return {str(p.relative_to(root.root)): p.read_bytes() for p in sorted(root.versions_dir.rglob("*")) if p.is_file()}


def test_a_current_that_cannot_be_trusted_makes_gc_remove_nothing_and_status_and_health_fail(
    staged: LifecycleRoot, cli_env: dict[str, str]
) -> None:
    """Issue 20 item 3: CURRENT naming no complete version, or hand-edited so that it disagrees with the history
    (`v1` and blank lines after a publish of v2): gc removes nothing and says why, status and health exit 4."""
    assert indexctl(cli_env, "publish", "v2").returncode == 0
    for text, cause in (
        ("v9", "names v9, which is not a complete version"),
        ("v1\n\n\n", "the last flip in"),
    ):
        staged.current_file.write_text(text)
        before = _versions(staged)
        _one_line_error(indexctl(cli_env, "gc", "--keep", "0"), 4, cause)
        _one_line_error(indexctl(cli_env, "gc", "--keep", "0", "--dry-run"), 4, cause)
        assert _versions(staged) == before
        done = indexctl(cli_env, "status")
        _one_line_error(done, 4, cause)
        assert "v1" in done.stdout and "v2" in done.stdout  # the listing still comes first
        done = indexctl(cli_env, "health")
        assert done.returncode == 4 and cause in done.stderr, (done.stdout, done.stderr)
        done = indexctl(cli_env, "health", "--version", "v2")
        assert done.returncode == 4 and re.search(rf"FAILED +pointer_consistent +.*{cause}", done.stdout), done.stdout
    assert indexctl(cli_env, "publish", "v2").returncode == 0  # a flip records where the pointer goes: trusted again
    assert indexctl(cli_env, "status").returncode == 0 and indexctl(cli_env, "health").returncode == 0
    done = indexctl(cli_env, "gc", "--keep", "0", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["removed_versions"] == [], done.stderr


def _ends_in_time(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*INDEXCTL, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_a_fifo_the_root_or_an_option_names_hangs_no_command(
    staged: LifecycleRoot, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Issue 20 item 9: a FIFO as CURRENT, history.json or a manifest, or given as `eval --duckdb`, is refused at
    once with a one-line error (before: every command blocked opening it)."""
    before = published_state(staged)
    staged.current_file.unlink()
    os.mkfifo(staged.current_file)
    for args in (("status",), ("health",), ("gc",), ("publish", "v2"), ("rollback", "v1"), ("search", "parse")):
        _one_line_error(_ends_in_time(cli_env, *args), 4, "CURRENT is unreadable (not a regular file)")
    staged.current_file.unlink()
    staged.current_file.write_text("v1")
    assert published_state(staged) == before
    fifo = tmp_path / "analytics.duckdb"
    os.mkfifo(fifo)
    done = _ends_in_time(cli_env, "eval", "--duckdb", str(fifo), "--samples", "5", timeout=120)
    _one_line_error(done, 2, f"{fifo} is not a regular file; pass another --duckdb")
    manifest = staged.version_dir("v2") / MANIFEST
    manifest.unlink()
    os.mkfifo(manifest)
    done = _ends_in_time(cli_env, "status", "--json")
    assert done.returncode == 0, done.stderr
    assert {v["version"]: v["state"] for v in json.loads(done.stdout)["versions"]}["v2"] == "broken"
    staged.history_file.unlink()
    os.mkfifo(staged.history_file)
    _one_line_error(_ends_in_time(cli_env, "gc"), 4, "history.json is malformed")


def test_deep_json_and_names_that_are_no_version_ids_break_nothing(
    staged: LifecycleRoot, cli_env: dict[str, str]
) -> None:
    """Issue 20 item 11: deeply nested JSON (a manifest, tuning.json, the history, an eval record, a build lease)
    is malformed input, not a RecursionError; staging leftovers whose names are not version ids (`.staging`,
    `x.staging.staging`, `bad name.staging`) are left alone by gc; `ls` lists only version ids, one a line."""
    deep = "[" * 100_000
    for name in ("v3", "v4"):
        shutil.copytree(staged.version_dir("v2"), staged.versions_dir / name)
        manifest = json.loads((staged.version_dir(name) / MANIFEST).read_text())
        (staged.version_dir(name) / MANIFEST).write_text(json.dumps({**manifest, "version": name}))
    (staged.version_dir("v3") / MANIFEST).write_text(deep)
    (staged.version_dir("v4") / "tuning.json").write_text(deep)
    (staged.root / ".eval").mkdir(exist_ok=True)
    (staged.root / ".eval" / "v2.json").write_text(deep)
    (staged.root / ".locks" / "v5.lease").write_text(deep)
    (staged.versions_dir / "v5.staging").mkdir()
    odd = [".staging", "x.staging.staging", "bad name.staging", "a\nb"]
    for name in odd:
        (staged.versions_dir / name).mkdir()
    for path in staged.versions_dir.iterdir():
        os.utime(path, (time.time() - 7 * 86400,) * 2)  # old enough for gc to consider

    done = indexctl(cli_env, "status", "--json")
    assert done.returncode == 0, done.stderr
    states = {v["version"]: v["state"] for v in json.loads(done.stdout)["versions"]}
    assert states["v3"] == states["v4"] == "broken" and states["v5.staging"] == "staging"
    assert indexctl(cli_env, "ls").stdout.splitlines() == ["v1", "v2", "v3", "v4"]
    done = indexctl(cli_env, "gc", "--keep", "5", "--staging-max-age", "0", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["removed_staging"] == ["v5.staging"]  # its unreadable lease names no live run
    assert all((staged.versions_dir / name).is_dir() for name in odd)
    _one_line_error(indexctl(cli_env, "publish", "v2"), 4, "v2.json is not a readable eval record")
    staged.history_file.write_text(deep)
    _one_line_error(indexctl(cli_env, "gc"), 4, "history.json is malformed (JSON nested too deeply)")


def test_a_stray_file_where_the_root_keeps_a_directory_is_a_one_line_error(
    staged: LifecycleRoot, cli_env: dict[str, str], samples: dict
) -> None:
    """Issue 20 item 13: a stray file named `.locks` is a one-line error naming it (exit 4), not a
    NotADirectoryError."""
    before = published_state(staged)
    shutil.rmtree(staged.root / ".locks")
    (staged.root / ".locks").write_text("stray")
    assert indexctl(cli_env, "status").returncode == 0
    for args in (("gc", "--staging-max-age", "0"), stage_args("v3", samples["a"])):
        _one_line_error(indexctl(cli_env, *args), 4, f"{staged.root / '.locks'} is not a directory")
    assert published_state(staged) == before
    (staged.root / ".locks").unlink()


def test_stage_refuses_symbolic_links_inside_an_extra_directory(
    staged: LifecycleRoot, cli_env: dict[str, str], samples: dict, tmp_path: Path
) -> None:
    """Issue 20 item 13: `stage --extra NAME=DIR` copied what links inside DIR point to (a loop 40 levels deep, a
    link to / the filesystem); now it refuses them (exit 4) and stages nothing."""
    before = published_state(staged)
    extra = tmp_path / "docs"
    (extra / "sub").mkdir(parents=True)
    (extra / "sub" / "notes.md").write_text("notes")
    for link, target in (("loop", ".."), ("root", "/")):
        (extra / "sub" / link).symlink_to(target)
        done = indexctl(cli_env, *stage_args("v3", samples["a"]), "--extra", f"docs={extra}")
        _one_line_error(done, 4, f"input for docs/sub/{link} is a symbolic link")
        (extra / "sub" / link).unlink()
    assert not staged.staging_dir("v3").exists() and published_state(staged) == before


def test_stage_and_health_refuse_a_scip_index_made_from_another_repository(
    staged: LifecycleRoot, cli_env: dict[str, str], samples: dict, tmp_path: Path
) -> None:
    """Issue 20 item 13: an index.scip most of whose documents are no file of the catalog describes another
    repository: stage refuses it (exit 4) and health fails `scip_matches_catalog`."""
    from kg_assets_tests.sample_artifacts import scip_bytes

    before = published_state(staged)
    foreign = tmp_path / "foreign.scip"
    foreign.write_bytes(scip_bytes([f"other/project/file{i}.py" for i in range(7)]))
    done = indexctl(cli_env, *stage_args("v3", {**samples["a"], "scip": foreign}))
    _one_line_error(done, 4, "scip_matches_catalog failed: index.scip was made from another repository")
    assert published_state(staged) == before
    shutil.copytree(staged.version_dir("v2"), staged.versions_dir / "v4")  # v2 with a foreign SCIP index
    manifest = json.loads((staged.version_dir("v4") / MANIFEST).read_text())
    shutil.copyfile(foreign, staged.version_dir("v4") / "index.scip")
    entry = {"size": foreign.stat().st_size, "sha256": hashlib.sha256(foreign.read_bytes()).hexdigest()}
    manifest["files"]["index.scip"].update(entry)
    (staged.version_dir("v4") / MANIFEST).write_text(json.dumps({**manifest, "version": "v4"}))
    done = indexctl(cli_env, "health", "--version", "v4")
    assert done.returncode == 4 and re.search(r"FAILED +scip_matches_catalog +index.scip was made", done.stdout)
    assert indexctl(cli_env, "health", "--version", "v2").returncode == 0
