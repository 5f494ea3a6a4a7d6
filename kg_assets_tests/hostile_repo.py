"""Parts of a repository an attacker controls, for the tests that build one: a `.git/config` whose settings run
commands, and a directory of git's index that is a symlink out of the repository in the work tree."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

_GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "kg tests",
    "GIT_AUTHOR_EMAIL": "kg@example.invalid",
    "GIT_COMMITTER_NAME": "kg tests",
    "GIT_COMMITTER_EMAIL": "kg@example.invalid",
}


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, env=_GIT_ENV, capture_output=True)


def commit_all(repo: Path) -> None:
    """`git init` (once), add everything, commit."""
    if not (repo / ".git").exists():
        subprocess.run(["git", "init", "-q", str(repo)], check=True, capture_output=True)
    git(repo, "add", "-A", "-f")
    git(repo, "commit", "-q", "--allow-empty", "-m", "commit")


def arm_git_config(repo: Path, marks: Path) -> None:
    """Settings of `repo`'s own `.git/config` that make git run a command (each creates a file in `marks` when run):
    fsmonitor, pager, ssh command, clean/smudge/process filters and textconv for every path (`.gitattributes`), and
    hooks (a hooks path of the repository's own, with every hook that fires without a commit)."""
    marks.mkdir(parents=True, exist_ok=True)
    hooks = repo / ".git" / "evil-hooks"
    hooks.mkdir()
    for hook in ("post-index-change", "post-checkout", "pre-auto-gc", "reference-transaction", "fsmonitor-watchman"):
        (hooks / hook).write_text(f"#!/bin/sh\ntouch {marks}/hook-{hook}\n")
        (hooks / hook).chmod(0o755)
    settings = {
        "core.fsmonitor": f"touch {marks}/fsmonitor; false",
        "core.pager": f"touch {marks}/pager; cat",
        "core.sshCommand": f"touch {marks}/ssh",
        "core.hooksPath": str(hooks),
        "filter.evil.clean": f"touch {marks}/clean; cat",
        "filter.evil.smudge": f"touch {marks}/smudge; cat",
        "filter.evil.process": f"touch {marks}/process",
        "diff.evil.textconv": f"touch {marks}/textconv; cat",
        "core.editor": f"touch {marks}/editor",
    }
    for key, value in settings.items():
        git(repo, "config", key, value)
    (repo / ".gitattributes").write_text("* filter=evil diff=evil\n")


def link_indexed_directory_outside(repo: Path, name: str, outside: Path) -> None:
    """Commit `outside`'s files as `repo/<name>/...`, then make `<name>` a symlink to `outside` in the work tree:
    git's index still lists `<name>/<file>`, which the link resolves outside the repository."""
    shutil.copytree(outside, repo / name)
    commit_all(repo)
    shutil.rmtree(repo / name)
    (repo / name).symlink_to(outside, target_is_directory=True)
