"""Embedders: the packaged MiniLM model and an OpenAI-compatible server on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from kg_assets.lib.embedding import MiniLMOnnx, load_embedder
from kg_assets.lib.errors import UsageError


def test_minilm_vectors_are_normalized_and_meaningful() -> None:
    embedder = MiniLMOnnx()
    texts = ["def add(a, b): return a + b", "add two numbers", "parse a JSON config file", "read settings from json"]
    vectors = embedder.embed(texts)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] and sims[2, 3] > sims[1, 3]
    # Batching and ordering do not change a text's vector.
    again = embedder.embed(list(reversed(texts)))[::-1]
    assert np.allclose(again, vectors, atol=1e-5)
    assert embedder.count_tokens(["hello world"]) == [2]
    assert len(embedder.fingerprint) == 16


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        data = [{"index": i, "embedding": [float(len(t)), 1.0, 0.0]} for i, t in enumerate(body["input"])]
        payload = json.dumps({"data": list(reversed(data)), "model": body["model"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_openai_compatible_endpoint(server: str) -> None:
    embedder = load_embedder(f"{server}#tiny#3")
    vectors = embedder.embed(["ab", "abcd"])
    expected = np.array([[2, 1, 0], [4, 1, 0]], dtype=np.float32)
    assert np.allclose(vectors, expected / np.linalg.norm(expected, axis=1, keepdims=True))


@pytest.mark.parametrize("spec", ["nope", "http://host#model", "http://host#model#x"])
def test_bad_embedder_specs_are_usage_errors(spec: str) -> None:
    with pytest.raises(UsageError):
        load_embedder(spec)
