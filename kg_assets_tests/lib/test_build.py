"""Build engine steps without Dagster: the SCIP step (real indexers) that runs beside embedding."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from kg_assets.lib import build, chunking, scip
from kg_assets.lib.embedding import MiniLMOnnx
from kg_assets.lib.lifecycle import SCIP_FILE, LifecycleRoot
from kg_assets_tests.helpers import REPO
from kg_assets_tests.lib.test_scip import COMMANDER, needs_indexers
from kg_assets_tests.sample_repo import write_repo

ITOA = sorted((REPO / "build" / "lang-sources").glob("usr/share/cargo/registry/itoa-*/src/lib.rs"))


@pytest.fixture
def staged(root: LifecycleRoot, tmp_path: Path) -> Iterator[tuple[LifecycleRoot, Path, Path]]:
    """A root with the staging directory of v1 (held as a build holds it) and the sample repository."""
    with root.staging_lock("v1"):
        yield root, write_repo(tmp_path / "repo"), root.reset_staging("v1")


def chunked(repo: Path, staging: Path) -> Path:
    """Chunk `repo` into the staging directory's step outputs, as the `chunks` step does; the step-output path."""
    work = staging / build.BUILD_DIR
    build.build_chunks(repo, staging, work, MiniLMOnnx())
    return work


def indexers_running(parent: int) -> set[str]:
    """Names of the SCIP indexers running as children of `parent` (the build's process)."""
    names = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        names |= {i.name for i in scip.INDEXERS if ppid == parent and i.name.encode() in cmdline}
    return names


def add_javascript(repo: Path) -> Path:
    """Real JavaScript beside the sample repository's Python: commander's option.js and argument.js."""
    (repo / "js").mkdir()
    for name in ("option.js", "argument.js"):
        shutil.copyfile(COMMANDER / name, repo / "js" / name)
    return repo


@needs_indexers
def test_scip_step_runs_an_indexer_per_language_while_the_caller_works_and_merges_on_finish(staged: tuple) -> None:
    root, repo, staging = staged
    add_javascript(repo)
    work = chunked(repo, staging)
    with build.scip_started(root, staging, work, "sample") as finish:
        assert indexers_running(os.getpid()) == {"scip-python", "scip-typescript"}  # the caller embeds meanwhile
        assert not (staging / SCIP_FILE).exists()
        stats = finish()
    assert [(r.name, r.tool, r.documents, r.reused_from) for r in stats.indexers] == [
        ("scip-python", "scip-python", 3, None),
        ("scip-typescript", "scip-typescript", 2, None),
    ]
    python = scip.INDEXERS[0]
    files = build.accepted_files(work)
    assert stats.indexers[0].digest == build.sources_digest(files, build.indexer_sources(files, python))
    assert stats.waited <= stats.seconds and stats.summary.documents == 5
    index = scip.read_index(staging / SCIP_FILE)
    assert index.metadata.tool_info.name == "scip-python"  # the first indexer's metadata
    assert [d.language for d in index.documents] == ["Python"] * 3 + ["JavaScript"] * 2
    assert build.recorded_scip(work) == stats  # what the scip_index step reports when the embed step ran it
    record = json.loads((work / build.SCIP_SOURCES_FILE).read_text())
    assert record["project"] == "sample" and set(record["indexers"]) == {"scip-python", "scip-typescript"}


@needs_indexers
def test_leaving_the_scip_step_unfinished_kills_the_indexers(staged: tuple) -> None:
    root, repo, staging = staged
    add_javascript(repo)
    with (
        pytest.raises(RuntimeError, match="embedding failed"),
        build.scip_started(root, staging, chunked(repo, staging), "sample"),
    ):
        assert indexers_running(os.getpid()) == {"scip-python", "scip-typescript"}
        raise RuntimeError("embedding failed")
    assert indexers_running(os.getpid()) == set()
    assert not (staging / SCIP_FILE).exists() and not list((root.root / ".scratch").iterdir())


@needs_indexers
def test_scip_python_sees_nothing_outside_the_repository(staged: tuple, tmp_path: Path) -> None:
    root, repo, staging = staged
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "leak.py").write_text('def outside_secret():\n    """Docstring from outside the repo."""\n')
    (repo / "out").symlink_to(outside)
    (repo / "pw.py").symlink_to("/etc/passwd")
    with build.scip_started(root, staging, chunked(repo, staging), "sample") as finish:
        scratch = next((root.root / ".scratch").glob("scip-*[!k]"))
        stats = finish()
    data = (staging / SCIP_FILE).read_bytes()
    assert b"outside_secret" not in data and b"Docstring from outside" not in data and b"root:x:0" not in data
    paths = {doc.relative_path for doc in scip.read_index(staging / SCIP_FILE).documents}
    assert paths == {"parsing.py", "generated_big.py", "shapes/geometry.py"}  # the empty __init__.py has no chunk
    assert stats.summary.documents == 3
    assert not scratch.exists() and not list((root.root / ".scratch").iterdir())  # its scratch is gone


def test_files_with_bad_names_or_unreadable_are_skipped_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = write_repo(tmp_path / "repo")
    bad_name = os.fsdecode(b"caf\xe9.py")
    (repo / bad_name).write_text("def cafe():\n    return 1\n")
    locked = repo / "locked.py"
    locked.write_text("def locked():\n    return 2\n")
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make the read fail as it does for other users
        open_beneath = chunking.open_beneath
        monkeypatch.setattr(
            chunking, "open_beneath", lambda d, uri: _denied(uri) if uri == "locked.py" else open_beneath(d, uri)
        )
    result = chunking.chunk_repository(repo, lambda texts: [len(t) // 4 for t in texts], 200)
    assert result.skipped["caf\ufffd.py"] == "file name is not valid UTF-8"
    assert result.skipped["locked.py"] == "unreadable (Permission denied)"
    assert "parsing.py" in result.files and all(c.uri.encode() for c in result.chunks)


def _denied(path: str) -> NoReturn:
    raise PermissionError(13, "Permission denied", path)


def _broken_on_path(name: str) -> bool:
    """Whether `name` is on the PATH but fails to run (rustup's proxy for a component that is not installed)."""
    found = shutil.which(name)
    return found is not None and subprocess.run([found, "--version"], capture_output=True).returncode != 0


@needs_indexers
@pytest.mark.skipif(not _broken_on_path("rust-analyzer"), reason="needs a rust-analyzer on the PATH that fails")
@pytest.mark.skipif(not ITOA, reason="run scripts/setup.sh (Debian sources in build/)")
def test_an_indexer_found_on_the_path_that_fails_leaves_only_its_language_without_scip(staged: tuple) -> None:
    root, repo, staging = staged
    (repo / "src").mkdir()
    shutil.copyfile(ITOA[-1], repo / "src" / "lib.rs")  # real Rust, so rust-analyzer is run
    with build.scip_started(root, staging, chunked(repo, staging), "sample") as finish:
        stats = finish()
    results = {r.name: r for r in stats.indexers}
    assert results["scip-python"].documents == 3 and results["scip-python"].error is None
    assert results["rust-analyzer"].error.startswith("rust-analyzer failed with exit code 1: error: ")
    record = json.loads((staging / build.BUILD_DIR / build.SCIP_SOURCES_FILE).read_text())
    assert record["failed"] == {"rust-analyzer": results["rust-analyzer"].error}  # the catalog keeps it for health
    assert {d.language for d in scip.read_index(staging / SCIP_FILE).documents} == {"Python"}
