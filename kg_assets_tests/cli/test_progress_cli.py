"""Long-running verbs draw a progress bar when stderr is a terminal (a real pseudo-terminal here) and stay quiet
with --json."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
from pathlib import Path

import pytest

from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.conftest import INDEXCTL, stage_sample
from kg_assets_tests.helpers import SCIP_PYTHON
from kg_assets_tests.sample_repo import write_repo


def on_terminal(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """Run indexctl with stderr on a pseudo-terminal; (exit code, stdout, what the terminal received)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*INDEXCTL, *args], env=env, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    received = bytearray()
    while True:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            received += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    stdout = proc.stdout.read() if proc.stdout else ""
    return proc.wait(timeout=300), stdout, received.decode(errors="replace")


def test_tune_draws_a_bar_on_a_terminal_and_is_quiet_with_json(
    root: LifecycleRoot, samples: dict, cli_env: dict[str, str]
) -> None:
    stage_sample(root, "v1", samples["a"])
    code, _, terminal = on_terminal(cli_env, "tune", "--version", "v1", "--samples", "50")
    assert code == 0, terminal
    frames = [f for f in terminal.split("\r") if f.startswith("tuning sweep [")]
    assert frames and "100% " in frames[-1] and frames[-1].rstrip().endswith("/s")
    code, stdout, terminal = on_terminal(cli_env, "tune", "--version", "v1", "--samples", "50", "--json")
    assert code == 0 and terminal == ""
    assert json.loads(stdout)["version"] == "v1"


@pytest.mark.skipif(not SCIP_PYTHON.exists(), reason="run scripts/setup.sh (npm ci) for scip-python")
def test_build_with_json_keeps_the_terminal_quiet(tmp_path: Path, cli_env: dict[str, str]) -> None:
    repo = write_repo(tmp_path / "repo")
    code, stdout, terminal = on_terminal(cli_env, "build", "v1", "--repo", str(repo), "--json")
    assert code == 0, terminal
    assert terminal == "" and json.loads(stdout)["embedded"] > 0  # it did embed, silently
