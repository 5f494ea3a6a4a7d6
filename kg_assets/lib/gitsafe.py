"""Run git on a repository that is not trusted: its own configuration runs nothing.

A repository's `.git/config` can name programs that git runs while it only lists files (`core.fsmonitor`, hooks
such as `post-index-change`, `core.sshCommand`, pagers, clean/smudge filters when it refreshes the index). Every
git call of the build goes through `run_git`, which overrides those settings on the command line (command-line
configuration wins over every file), never writes the index (`GIT_OPTIONAL_LOCKS=0`, so no hook fires), allows no
transport, and runs in an environment of its own: no system or global configuration (the same repository lists the
same files whoever builds it), no inherited `GIT_DIR`/`GIT_WORK_TREE`/`GIT_INDEX_FILE` that would point git
elsewhere, no prompt, and a time limit.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

GIT_TIMEOUT_S = 30.0
# Settings that make git run a program, each set to one that runs nothing.
_NEUTRAL = (
    "core.fsmonitor=false",
    "core.hooksPath=/dev/null",
    "core.pager=cat",
    "core.sshCommand=false",
    "core.askPass=",
    "credential.helper=",
    "protocol.allow=never",
    "core.untrackedCache=false",
)


def git_environment() -> dict[str, str]:
    """The environment git runs in: PATH only from ours, everything else fixed."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": "/nonexistent",
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_ATTR_NOSYSTEM": "1",
        "GIT_OPTIONAL_LOCKS": "0",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_NO_REPLACE_OBJECTS": "1",
    }


def run_git(repo: Path, *args: str, timeout: float = GIT_TIMEOUT_S) -> subprocess.CompletedProcess[bytes]:
    """`git -C repo ARGS` with the repository's command-running settings neutralized (see the module docstring);
    output captured as bytes, not checked. OSError when git is missing, TimeoutExpired after `timeout` seconds."""
    overrides = [arg for setting in _NEUTRAL for arg in ("-c", setting)]
    return subprocess.run(
        ["git", "--no-pager", *overrides, "-C", str(repo), *args],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        env=git_environment(),
        timeout=timeout,
        check=False,
    )
