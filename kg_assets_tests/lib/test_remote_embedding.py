"""The OpenAI-compatible embedder against a small HTTP server on loopback that runs the packaged model: batches
with bounded concurrency, retries on 429/5xx, and a shard (not the version) failing on persistent errors."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from kg_assets.lib.embedding import MiniLMOnnx, OpenAICompatible, load_embedder
from kg_assets.lib.errors import ValidationError
from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.helpers import SCIP_PYTHON
from kg_assets_tests.sample_repo import write_repo


class EmbeddingServer(ThreadingHTTPServer):
    """`POST /v1/embeddings` answered by MiniLM; `errors` is a list of status codes the next requests get
    (then normal answers); a request with any input containing `poison` gets 500, always; one containing `hold`
    sets `held` and is left unanswered until `released` is set (its client is mid-embedding meanwhile)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.model = MiniLMOnnx()
        self.model.embed(["warm up"])
        self.lock = threading.Lock()
        self.errors: list[int] = []
        self.poison: str | None = None
        self.hold: str | None = None
        self.held, self.released = threading.Event(), threading.Event()
        self.delay = 0.0
        self.requests = self.in_flight = self.max_in_flight = 0

    @property
    def spec(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}#minilm#384"


class _Handler(BaseHTTPRequestHandler):
    server: EmbeddingServer

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        texts = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["input"]
        server = self.server
        with server.lock:
            server.requests += 1
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
            status = server.errors.pop(0) if server.errors else 200
        try:
            if server.hold and any(server.hold in t for t in texts):
                server.held.set()
                server.released.wait()
                return  # no answer: the client is gone by now
            if server.poison and any(server.poison in t for t in texts):
                status = 500
            time.sleep(server.delay)
            if status != 200:
                self.send_response(status)
                self.send_header("Retry-After", "0")
                self.end_headers()
                return
            vectors = server.model.embed(texts)
            body = json.dumps({"data": [{"index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())
        finally:
            with server.lock:
                server.in_flight -= 1


@contextlib.contextmanager
def serving() -> Iterator[EmbeddingServer]:
    """An EmbeddingServer answering on a loopback port from a thread until the block ends."""
    server = EmbeddingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddingServer]:
    with serving() as running:
        yield running


@pytest.fixture
def remote(server: EmbeddingServer, monkeypatch: pytest.MonkeyPatch) -> OpenAICompatible:
    server.errors, server.poison, server.delay = [], None, 0.0
    server.requests = server.max_in_flight = 0
    monkeypatch.setattr(OpenAICompatible, "backoff_s", 0.01)
    embedder = load_embedder(server.spec)
    assert isinstance(embedder, OpenAICompatible)
    return embedder


TEXTS = [f"def function_{i}(x):\n    return x * {i}  # number {i}" for i in range(40)]


def test_remote_vectors_are_the_packaged_model_s_in_order(remote: OpenAICompatible, server: EmbeddingServer) -> None:
    remote.batch_size = 8
    got = remote.embed(TEXTS)
    expected = server.model.embed(TEXTS)
    assert got.shape == (40, 384) and server.requests == 5
    assert float(np.min(np.sum(got * expected, axis=1))) > 0.999  # the same model (batches differ: int8 rounding)


def test_batches_are_sent_with_bounded_concurrency(remote: OpenAICompatible, server: EmbeddingServer) -> None:
    remote.batch_size, remote.concurrency, server.delay = 2, 3, 0.05
    remote.embed(TEXTS)
    assert server.requests == 20 and 1 < server.max_in_flight <= 3


def test_429_and_5xx_are_retried_with_backoff(remote: OpenAICompatible, server: EmbeddingServer) -> None:
    remote.batch_size, remote.concurrency = 20, 1
    server.errors = [429, 503, 502]
    assert remote.embed(TEXTS).shape == (40, 384)
    assert server.requests == 2 + 3


def test_persistent_errors_fail_after_the_last_attempt(remote: OpenAICompatible, server: EmbeddingServer) -> None:
    server.poison = "number 7"
    with pytest.raises(ValidationError, match=r"failed 6 times \(last: HTTP 500\)"):
        remote.embed(TEXTS)


def build_job() -> dg.JobDefinition:
    from kg_assets.definitions import defs

    return defs.resolve_job_def("build")


@pytest.mark.skipif(not SCIP_PYTHON.exists(), reason="run scripts/setup.sh (npm ci) for scip-python")
def test_a_failing_shard_fails_alone_and_a_re_run_of_the_failed_steps_completes_the_version(
    remote: OpenAICompatible, server: EmbeddingServer, tmp_path: Path
) -> None:
    root, repo = LifecycleRoot(tmp_path / "indexes"), write_repo(tmp_path / "repo")
    server.poison = "def hypotenuse"  # shapes/geometry.py: the last of the two shards
    config = {
        "resources": {
            "lifecycle": {"config": {"root": str(root.root)}},
            "settings": {"config": {"repo": str(repo), "embedder": server.spec, "shards": 2}},
        }
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("index_versions", ["v1"])
        job, tags = dg.reconstructable(build_job), {"dagster/partition": "v1"}
        with dg.execute_job(job, instance, run_config=config, tags=tags) as failed:
            assert not failed.success
            outcome = {
                e.step_key: e.event_type_value for e in failed.all_events if e.is_step_success or e.is_step_failure
            }
        assert outcome["embeddings.embed_shard[s0]"] == "STEP_SUCCESS"
        assert outcome["embeddings.embed_shard[s1]"] == "STEP_FAILURE"
        # s1's failure hook gave the lease up; a step of the run that starts after it (in-process: scip_index) may
        # take it again, naming the failed run, which the re-execution (as from the UI: nothing reclaims it) inherits
        held = root.build_lease("v1")
        assert (held is None or held["run_id"] == failed.run_id) and root.list_versions() == []
        server.poison = None
        again = dg.ReexecutionOptions.from_failure(failed.run_id, instance)
        with dg.execute_job(job, instance, run_config=config, tags=tags, reexecution_options=again) as rerun:
            assert rerun.success
            steps = {e.step_key for e in rerun.all_events if e.is_step_success}
    assert "embeddings.embed_shard[s1]" in steps and "embeddings.embed_shard[s0]" not in steps and "chunks" not in steps
    assert root.list_versions() == ["v1"] and root.verify_version("v1")["attrs"]["chunk_count"] >= 10
    assert root.build_lease("v1") is None
