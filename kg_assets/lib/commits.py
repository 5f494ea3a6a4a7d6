"""A watched repository's HEAD commit, and the index version id built from it (what the new-commit sensor uses).

The version id is `c<commit time, UTC, %Y%m%d-%H%M%S>-<first 10 hex digits of the sha>`: valid for
`check_version_id`, unique per commit, and sorted by commit time in `indexctl ls`.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kg_assets.lib import gitsafe
from kg_assets.lib.errors import NotFoundError, UsageError
from kg_assets.lib.lifecycle import check_version_id


@dataclass(frozen=True)
class Commit:
    sha: str
    committed_at: datetime  # UTC


def head_commit(repo: Path) -> Commit:
    """The commit HEAD names in `repo` (`git log -1`); NotFoundError when `repo` is not a git checkout with one."""
    repo = Path(repo)
    if not repo.is_dir():
        raise NotFoundError(f"watched repository not found: {repo}")
    try:
        done = gitsafe.run_git(repo, "log", "-1", "--format=%H %ct", "HEAD")
    except FileNotFoundError:
        raise UsageError("git is not installed; the commit watcher needs it") from None
    except subprocess.TimeoutExpired:
        raise NotFoundError(f"git did not answer within {gitsafe.GIT_TIMEOUT_S:.0f}s in {repo}") from None
    if done.returncode != 0:
        reason = (done.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise NotFoundError(f"{repo} has no HEAD commit ({reason})")
    sha, seconds = done.stdout.decode().split()
    return Commit(sha, datetime.fromtimestamp(int(seconds), UTC))


def version_for_commit(commit: Commit) -> str:
    return check_version_id(f"c{commit.committed_at:%Y%m%d-%H%M%S}-{commit.sha[:10]}")
