"""`indexctl build V --publish --progressive`: V-fast published first (static embedder, no SCIP), V after it,
under a running server, through a failing full build and a SIGKILL between the two publishes."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kg_assets.lib import catalog, scip
from kg_assets.lib.lifecycle import CATALOG_FILE, SCIP_FILE, LifecycleRoot
from kg_assets_tests.cli.test_indexctl import indexctl
from kg_assets_tests.conftest import INDEXCTL
from kg_assets_tests.helpers import SCIP_PYTHON
from kg_assets_tests.lib.test_remote_embedding import serving
from kg_assets_tests.sample_repo import write_repo
from kg_assets_tests.serve.conftest import Server

pytestmark = pytest.mark.skipif(not SCIP_PYTHON.exists(), reason="run scripts/setup.sh (npm ci) for scip-python")


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


def test_progressive_build_publishes_the_fast_version_then_the_full_one(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    repo = write_repo(tmp_path / "repo")
    done = indexctl(cli_env, "build", "v1", "--repo", str(repo), "--publish", "--progressive")
    assert done.returncode == 0, done.stderr
    assert "Published v1-fast (was <none>)" in done.stdout and "Published v1 (was v1-fast)" in done.stdout
    # The same chunks, but another embedder's vectors are never reused: v1 embeds every chunk again.
    full_out = done.stdout.split("v1-fast answers searches now")[1]
    embedded = [line.strip() for line in full_out.splitlines() if line.strip().startswith("embedded ")]
    assert embedded and embedded[0].endswith("reused 0 from earlier versions (1 shard)"), embedded
    root = LifecycleRoot(cli_env["KG_INDEXES_DIR"])
    assert root.current() == "v1" and [h["to"] for h in root.history()][-2:] == ["v1-fast", "v1"]
    fast, full = root.read_manifest("v1-fast")["attrs"], root.read_manifest("v1")["attrs"]
    assert (fast["kind"], fast["full_version"], fast["embedder_name"]) == ("fast", "v1", "static")
    assert (full["kind"], full["embedder_name"]) == ("full", "minilm") and "full_version" not in full
    assert scip.summarize(scip.read_index(root.version_dir("v1-fast") / SCIP_FILE)).documents == 0
    assert scip.summarize(scip.read_index(root.version_dir("v1") / SCIP_FILE)).documents > 0
    assert catalog.read_meta(root.version_dir("v1-fast") / CATALOG_FILE)["kind"] == "fast"
    # Both answer, each with its own embedder; the two versions hold the same chunks.
    for version in ("v1-fast", "v1"):
        hits = json.loads(indexctl(cli_env, "search", "area of a circle", "--version", version, "--json").stdout)
        assert hits["hits"][0]["uri"] == "shapes/geometry.py"
    status = indexctl(cli_env, "status")
    assert "current: v1\n" in status.stdout and "(fast)" in status.stdout
    health = json.loads(indexctl(cli_env, "health", "--version", "v1-fast", "--json").stdout)
    kind = next(c for c in health["checks"] if c["name"] == "kind")
    assert kind["detail"].startswith("fast version") and "full version v1 is current" in kind["detail"]
    # What progressive publishing cannot do is a usage error before any run.
    for args, message in (
        (["v2", "--progressive"], "add --publish"),
        (["v2", "--progressive", "--publish", "--embedder", "static"], "another embedder"),
    ):
        refused = indexctl(cli_env, "build", *args, "--repo", str(repo))
        assert refused.returncode == 2 and message in refused.stderr
    assert root.list_versions() == ["v1", "v1-fast"]


def test_a_failing_full_build_leaves_the_fast_version_published(cli_env: dict[str, str], tmp_path: Path) -> None:
    repo = write_repo(tmp_path / "repo")
    with serving() as server:
        server.errors = [400] * 1000  # the full version's embedder refuses every batch
        done = indexctl(
            cli_env, "build", "v1", "--repo", str(repo), "--publish", "--progressive", "--embedder", server.spec
        )
    assert done.returncode == 4 and "v1-fast stays published" in done.stderr  # the refusal: exit 4
    assert "Published v1-fast" in done.stdout
    root = LifecycleRoot(cli_env["KG_INDEXES_DIR"])
    assert root.current() == "v1-fast" and root.list_versions() == ["v1-fast"]
    status = indexctl(cli_env, "status")
    assert status.returncode == 0
    assert "current: v1-fast (fast: the full build of v1 failed or was interrupted" in status.stdout
    assert "`indexctl build v1 --resume` finishes it" in status.stdout
    assert indexctl(cli_env, "health").returncode == 0


def test_progressive_publish_under_a_server_survives_sigkill_between_the_two_publishes(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """A server answers throughout (0 failed requests) while V-fast is published, the build is killed while the
    full version embeds, `--resume` finishes it and publishes V, and the server follows both."""
    repo = write_repo(tmp_path / "repo")
    assert indexctl(cli_env, "build", "v0", "--repo", str(repo), "--publish", "--embedder", "static").returncode == 0
    root = LifecycleRoot(cli_env["KG_INDEXES_DIR"])
    server = Server(cli_env)
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            statuses.append(server.post("/search", json.dumps({"query": "area of a circle", "k": 3}).encode())[0])

    loader = threading.Thread(target=load)
    loader.start()
    try:
        with serving() as embedding:
            embedding.hold = "def hypotenuse"  # the full build's embedding blocks on this chunk's batch
            spec = embedding.spec
            build = subprocess.Popen(
                [*INDEXCTL, "build", "v1", "--repo", str(repo), "--publish", "--progressive", "--embedder", spec],
                env=cli_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                _wait_for(embedding.held.is_set, 300, "the full build reaching the embedding server")
                assert root.current() == "v1-fast"
                server.wait_for_version("v1-fast", 60)
                build.send_signal(signal.SIGKILL)
                build.wait(60)
            finally:
                if build.poll() is None:
                    build.kill()
            assert root.current() == "v1-fast" and "v1" not in root.list_versions()
            status = indexctl(cli_env, "status")
            assert status.returncode == 0 and "`indexctl build v1 --resume` finishes it" in status.stdout
            assert indexctl(cli_env, "health").returncode == 0
            embedding.hold = None
            embedding.released.set()
            resumed = indexctl(cli_env, "build", "v1", "--resume")
        assert resumed.returncode == 0, resumed.stderr
        assert "Published v1 (was v1-fast)" in resumed.stdout and root.current() == "v1"
        server.wait_for_version("v1", 60)
    finally:
        stop.set()
        loader.join()
        server.stop()
    assert [h["to"] for h in root.history()] == ["v0", "v1-fast", "v1"]
    assert statuses and set(statuses) == {200}, f"{len(statuses)} requests: {sorted(set(statuses))}"
