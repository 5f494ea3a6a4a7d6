"""The OpenAI-compatible embedder against a small HTTP server on loopback that runs the packaged model: batches
with bounded concurrency, retries on 429/5xx, and a shard (not the version) failing on persistent errors."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from kg_assets.lib.embedding import MiniLMOnnx, OpenAICompatible, load_embedder
from kg_assets.lib.errors import UsageError, ValidationError
from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.helpers import SCIP_PYTHON
from kg_assets_tests.sample_repo import write_repo


class EmbeddingServer(ThreadingHTTPServer):
    """`POST /v1/embeddings` answered by MiniLM; `errors` is a list of status codes the next requests get
    (then normal answers); a request with any input containing `poison` gets 500, always; one containing `hold`
    sets `held` and is left unanswered until `released` is set (its client is mid-embedding meanwhile); `answer`
    replaces the answer's body (given the inputs); `trickle` seconds of one byte every 0.1 s, or `silent` seconds of
    nothing, instead of an answer."""

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
        self.answer: Callable[[list[str]], bytes] | None = None
        self.trickle = self.silent = 0.0
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
            if server.silent or server.trickle:
                self._stall(server.silent, server.trickle)
                return
            if server.poison and any(server.poison in t for t in texts):
                status = 500
            time.sleep(server.delay)
            if status != 200:
                self.send_response(status)
                self.send_header("Retry-After", "0")
                self.end_headers()
                return
            if server.answer is not None:
                body = server.answer(texts)
            else:
                vectors = server.model.embed(texts)
                data = [{"index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]
                body = json.dumps({"data": data}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)
        finally:
            with server.lock:
                server.in_flight -= 1

    def _stall(self, silent: float, trickle: float) -> None:
        """Say nothing for `silent` seconds, or start a 200 answer and send one byte every 0.1 s for `trickle`."""
        if silent:
            time.sleep(silent)
            return
        self.send_response(200)
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        end = time.monotonic() + trickle
        with contextlib.suppress(OSError):
            while time.monotonic() < end:
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.1)


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
    server.answer, server.trickle, server.silent = None, 0.0, 0.0
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


@pytest.mark.parametrize("stall", ["trickle", "silent"])
def test_a_server_that_trickles_or_stays_silent_fails_within_the_deadline_naming_the_endpoint(
    remote: OpenAICompatible, server: EmbeddingServer, stall: str
) -> None:
    setattr(server, stall, 4.0)  # per request; before the fix a trickle held a build without bound
    remote.request_timeout_s, remote.batch_budget_s = 0.5, 2.0
    started = time.monotonic()
    with pytest.raises(ValidationError) as caught:
        remote.embed(TEXTS[:3])
    assert time.monotonic() - started < 3.5
    endpoint = server.spec.split("#")[0] + "/v1/embeddings"
    assert str(caught.value).startswith(f"embedding endpoint {endpoint} failed ")
    assert re.search(r"\(last: no complete answer within 0\.\d s\)$", str(caught.value))


def _vectors(texts: list[str], value: float = 0.1) -> list[dict]:
    return [{"index": i, "embedding": [value] * 384} for i in range(len(texts))]


BAD_ANSWERS = {
    "all-zero vector": (lambda t: {"data": _vectors(t, 0.0)}, r"answered 3 all-zero vector\(s\) \(input 0 first\)"),
    "every index 0": (
        lambda t: {"data": [{**v, "index": 0} for v in _vectors(t)]},
        r"answered indices that are not 0 to 2 once each",
    ),
    "one vector short": (lambda t: {"data": _vectors(t)[:-1]}, r"answered 2 vectors for 3 inputs"),
    "no data": (lambda t: {"object": "list"}, r'answered JSON without a "data" list of objects'),
    "not a number": (
        lambda t: {"data": [{**v, "embedding": ["x"] * 384} for v in _vectors(t)]},
        r"answered vectors that are not lists of numbers",
    ),
    "NaN": (lambda t: {"data": _vectors(t, float("nan"))}, r"answered a vector with a non-finite number"),
}


@pytest.mark.parametrize("case", [*BAD_ANSWERS, "malformed JSON", "deeply nested JSON"])
def test_an_answer_that_is_not_one_sound_vector_per_input_is_refused_naming_the_endpoint(
    remote: OpenAICompatible, server: EmbeddingServer, case: str
) -> None:
    if case in BAD_ANSWERS:
        make, expected = BAD_ANSWERS[case]
        server.answer = lambda texts: json.dumps(make(texts)).encode()
    else:
        body = b'{"data": [' if case == "malformed JSON" else b"[" * 100_000 + b"]" * 100_000
        server.answer, expected = (lambda texts: body), r"answered something that is not JSON"
    endpoint = server.spec.split("#")[0] + "/v1/embeddings"
    with pytest.raises(ValidationError, match=f"^embedding endpoint {re.escape(endpoint)} {expected}"):
        remote.embed(TEXTS[:3])


@pytest.mark.parametrize("dim", ["-1", "0", "1000000000"])
def test_an_embedder_dimension_out_of_range_is_a_usage_error(dim: str) -> None:
    with pytest.raises(UsageError, match=f"embedder dimension {dim} for http://127.0.0.1:9 is out of range"):
        load_embedder(f"http://127.0.0.1:9#model#{dim}")


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
