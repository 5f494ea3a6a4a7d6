"""Build engine steps without Dagster: the SCIP step that runs beside embedding (a stand-in indexer)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kg_assets.lib import build, chunking, scip
from kg_assets.lib.lifecycle import SCIP_FILE, LifecycleRoot
from kg_assets_tests.helpers import SCIP_PYTHON
from kg_assets_tests.lib.test_scip import fake_scip_python
from kg_assets_tests.sample_repo import write_repo


@pytest.fixture
def staged(root: LifecycleRoot, tmp_path: Path) -> Iterator[tuple[LifecycleRoot, Path, Path]]:
    """A root with the staging directory of v1 (held as a build holds it) and the sample repository."""
    with root.staging_lock("v1"):
        yield root, write_repo(tmp_path / "repo"), root.reset_staging("v1")


def test_scip_step_indexes_while_the_caller_works_and_records_on_finish(
    staged: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, repo, staging = staged
    gate = tmp_path / "go"
    monkeypatch.setattr(scip, "scip_python_command", lambda: fake_scip_python(tmp_path / "bin", gate=gate))
    with build.scip_started(root, repo, staging, staging / build.BUILD_DIR, "sample") as finish:
        assert not (staging / SCIP_FILE).exists()  # the indexer is still running; the caller embeds meanwhile
        gate.touch()
        stats = finish()
    assert (stats.summary.documents, stats.reused_from) == (2, None)
    assert stats.digest == build.python_sources_digest(repo) and stats.waited <= stats.seconds
    assert scip.read_index(staging / SCIP_FILE).metadata.tool_info.name == "kg-assets-tests"
    record = json.loads((staging / build.BUILD_DIR / build.SCIP_SOURCES_FILE).read_text())
    assert record == {"digest": stats.digest, "project": "sample", "reused_from": None}


def test_leaving_the_scip_step_unfinished_kills_the_indexer(
    staged: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, repo, staging = staged
    bin_dir = tmp_path / "bin"
    monkeypatch.setattr(scip, "scip_python_command", lambda: fake_scip_python(bin_dir, gate=tmp_path / "never"))
    with (
        pytest.raises(RuntimeError, match="embedding failed"),
        build.scip_started(root, repo, staging, staging / build.BUILD_DIR, "sample"),
    ):
        while not (bin_dir / "indexer.pid").exists():  # the indexer has started (it writes its pid first)
            time.sleep(0.01)
        raise RuntimeError("embedding failed")
    with pytest.raises(ProcessLookupError):
        os.kill(int((bin_dir / "indexer.pid").read_text()), 0)
    assert not (staging / SCIP_FILE).exists()


@pytest.mark.skipif(not SCIP_PYTHON.exists(), reason="run scripts/setup.sh (npm ci) for scip-python")
def test_scip_python_sees_nothing_outside_the_repository(staged: tuple, tmp_path: Path) -> None:
    root, repo, staging = staged
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "leak.py").write_text('def outside_secret():\n    """Docstring from outside the repo."""\n')
    (repo / "out").symlink_to(outside)
    (repo / "pw.py").symlink_to("/etc/passwd")
    with build.scip_started(root, repo, staging, staging / build.BUILD_DIR, "sample") as finish:
        scratch = next((root.root / ".scratch").glob("scip-*[!k]"))
        stats = finish()
    data = (staging / SCIP_FILE).read_bytes()
    assert b"outside_secret" not in data and b"Docstring from outside" not in data and b"root:x:0" not in data
    paths = {doc.relative_path for doc in scip.read_index(staging / SCIP_FILE).documents}
    assert paths == {"parsing.py", "generated_big.py", "shapes/__init__.py", "shapes/geometry.py"}
    assert stats.summary.documents == 4
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
        read_bytes = Path.read_bytes
        monkeypatch.setattr(Path, "read_bytes", lambda p: _denied(p) if p == locked else read_bytes(p))
        monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked)
    result = chunking.chunk_repository(repo, lambda texts: [len(t) // 4 for t in texts], 200)
    assert result.skipped["caf\ufffd.py"] == "file name is not valid UTF-8"
    assert result.skipped["locked.py"] == "unreadable (Permission denied)"
    assert "parsing.py" in result.files and all(c.uri.encode() for c in result.chunks)
    assert set(build.python_sources(repo)) == {
        "parsing.py",
        "generated_big.py",
        "shapes/__init__.py",
        "shapes/geometry.py",
    }


def _denied(path: Path) -> bytes:
    raise PermissionError(13, "Permission denied", str(path))
