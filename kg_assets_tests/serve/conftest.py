"""Real servers on loopback over real built versions: `indexctl serve --port 0` as a subprocess."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.conftest import INDEXCTL

READY = re.compile(r"serving (\S+).* on (http://\S+)")
# Loopback only: no proxy from the environment may see these requests.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(url: str, body: bytes | None = None, timeout: float = 60) -> tuple[int, Any]:
    """(status, parsed JSON body) of a GET, or a POST of `body`."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


class Server:
    """`indexctl serve` on a free loopback port; its stderr is collected line by line."""

    def __init__(self, env: dict[str, str], timeout: float = 180) -> None:
        self.proc = subprocess.Popen(
            [*INDEXCTL, "serve", "--port", "0"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.url = ""
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(timeout):
            self.proc.kill()
            raise AssertionError(f"server not ready after {timeout} s: {self.lines}")

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if match := READY.search(line):
                self.url = match.group(2)
                self.ready.set()

    def get(self, path: str) -> tuple[int, Any]:
        return http(self.url + path)

    def post(self, path: str, body: bytes) -> tuple[int, Any]:
        return http(self.url + path, body)

    def wait_for_version(self, version: str, timeout: float) -> float:
        """Seconds until /health reports `version`; AssertionError after `timeout`."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            status, state = self.get("/health")
            if status == 200 and state["version"] == version:
                return time.monotonic() - start
            time.sleep(0.02)
        raise AssertionError(f"/health still reports {state} {timeout} s after {version} was published")

    def stop(self) -> int:
        """SIGTERM, then the exit code (the server finishes in-flight requests first)."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(60)


@pytest.fixture
def served_root(built_pair: LifecycleRoot, tmp_path: Path) -> LifecycleRoot:
    """A private copy of the built pair (v1 and v2 of the sample repository) at `cli_env`'s root, v1 published."""
    shutil.copytree(built_pair.root, tmp_path / "indexes", symlinks=True)
    root = LifecycleRoot(tmp_path / "indexes")
    if root.current() != "v1":
        root.publish("v1")
    return root


@pytest.fixture
def server(served_root: LifecycleRoot, cli_env: dict[str, str]) -> Any:
    """A server of `served_root`, stopped (SIGTERM, exit 0 expected) after the test."""
    running = Server(cli_env)
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            assert running.stop() == 0, running.lines
