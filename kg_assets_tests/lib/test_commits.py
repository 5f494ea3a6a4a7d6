"""The watched repository's HEAD and the version ids derived from it, on real git repositories."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kg_assets.lib.commits import head_commit, version_for_commit
from kg_assets.lib.errors import NotFoundError
from kg_assets.lib.lifecycle import check_version_id


def commit_all(repo: Path, when: datetime, message: str = "change") -> str:
    """Commit everything in `repo` (initializing it on first use) at commit time `when`; return the sha."""
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "kg tests",
        "GIT_AUTHOR_EMAIL": "kg@example.invalid",
        "GIT_COMMITTER_NAME": "kg tests",
        "GIT_COMMITTER_EMAIL": "kg@example.invalid",
        "GIT_AUTHOR_DATE": when.isoformat(),
        "GIT_COMMITTER_DATE": when.isoformat(),
    }
    if not (repo / ".git").exists():
        subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "--allow-empty", "-m", message], check=True, env=env)
    done = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, env=env, capture_output=True)
    return done.stdout.decode().strip()


def test_head_commit_and_its_version_id_follow_new_commits(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("A = 1\n")
    first = commit_all(tmp_path, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    commit = head_commit(tmp_path)
    assert commit.sha == first and commit.committed_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    version = version_for_commit(commit)
    assert version == f"c20260102-030405-{first[:10]}" == check_version_id(version)
    (tmp_path / "a.py").write_text("A = 2\n")
    second = commit_all(tmp_path, datetime(2026, 1, 3, tzinfo=UTC))
    assert head_commit(tmp_path).sha == second != first
    assert version_for_commit(head_commit(tmp_path)) > version  # later commits sort later


def test_a_directory_without_commits_has_no_head(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="has no HEAD commit"):
        head_commit(tmp_path)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    with pytest.raises(NotFoundError, match="has no HEAD commit"):
        head_commit(tmp_path)
    with pytest.raises(NotFoundError, match="not found"):
        head_commit(tmp_path / "missing")
