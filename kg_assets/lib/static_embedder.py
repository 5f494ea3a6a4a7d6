"""A static code embedder: a table of token vectors, no transformer at run time (numpy and `tokenizers` only).

embed(text) = L2-normalize(sum of the table rows of the text's token ids). Each row already carries its token's
weight (frequency weighting is folded in at training), so the sum is the weighted mean up to its length, which
normalization removes. Tokens that must not count ([UNK], [PAD], [CLS], [SEP]) have zero rows.

A model is a directory, written by `write_model` (the `embedder` Dagster job, `kg_assets/lib/static_training.py`):

- `vectors.npz`: `codes` int8 (V x d) and `scales` float32 (V,); row i = codes[i] * scales[i];
- `tokenizer.json`: a `tokenizers` JSON, used with no special tokens, no truncation and no padding;
- `config.json`: `format`, `dim`, `vocab_size`, `max_tokens` (the chunk budget: 256, as MiniLM's, so both
  embedders cut the same chunks);
- `provenance.json`: what made it (teacher, corpus manifest digest, settings, commit, evaluation figures).

The committed model is `MODEL_DIR`; `--embedder static` uses it and `--embedder static:DIR` any other.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kg_assets.lib.errors import UsageError, ValidationError
from kg_assets.lib.fsutil import atomic_file, atomic_write_json, atomic_write_text
from kg_assets.lib.progress import Progress

if TYPE_CHECKING:
    from tokenizers import Tokenizer

MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "static-code"
FORMAT = 1
FILES = ("vectors.npz", "tokenizer.json", "config.json", "provenance.json")
BATCH = 4096  # texts tokenized per call: `encode_batch` runs them on every core
BLOCK = 256  # texts summed per matrix product (its counts matrix: BLOCK x distinct tokens of the block)


def _int8_rows(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8 quantization: codes and the scale that maps them back."""
    peak = np.abs(vectors).max(axis=1)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    codes = np.clip(np.rint(vectors / scales[:, None]), -127, 127).astype(np.int8)
    return codes, scales


def write_model(
    directory: Path, vectors: np.ndarray, tokenizer_path: Path, provenance: dict[str, Any], *, max_tokens: int = 256
) -> Path:
    """Write a model directory: `vectors` (V x d float32, weights folded in) quantized to int8 per row, the
    tokenizer without truncation or padding, its config and `provenance`. Each file is written atomically."""
    vectors = np.asarray(vectors, dtype=np.float32)
    tokenizer = json.loads(Path(tokenizer_path).read_text(encoding="utf-8"))
    tokenizer["truncation"] = None
    tokenizer["padding"] = None
    vocab_size = len(tokenizer["model"]["vocab"])
    if vectors.ndim != 2 or vectors.shape[0] != vocab_size:
        raise ValidationError(f"static model: {vectors.shape} vectors for a vocabulary of {vocab_size} tokens")
    if not np.isfinite(vectors).all():
        raise ValidationError("static model: the token vectors hold NaN or infinity")
    directory.mkdir(parents=True, exist_ok=True)
    codes, scales = _int8_rows(vectors)
    config = {"format": FORMAT, "dim": int(vectors.shape[1]), "vocab_size": vocab_size, "max_tokens": max_tokens}
    with atomic_file(directory / "vectors.npz") as fh:
        np.savez(fh, codes=codes, scales=scales)
    atomic_write_text(directory / "tokenizer.json", json.dumps(tokenizer, ensure_ascii=False))
    atomic_write_json(directory / "config.json", config)
    atomic_write_json(directory / "provenance.json", provenance)
    return directory


class StaticEmbedder:
    """A static model directory (see the module docstring), loaded once, embedding on the CPU."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else MODEL_DIR
        self.name = "static" if directory is None else f"static:{self.directory}"
        missing = [name for name in FILES if not (self.directory / name).is_file()]
        if missing:
            raise UsageError(f"static model {self.directory}: missing {', '.join(missing)}")
        try:
            config = json.loads((self.directory / "config.json").read_text(encoding="utf-8"))
            self.dim, self.max_tokens = int(config["dim"]), int(config["max_tokens"])
            version = config["format"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValidationError(f"static model {self.directory}: unreadable config.json ({exc})") from None
        if version != FORMAT:
            raise ValidationError(f"static model {self.directory}: format {version}, this code reads {FORMAT}")

    @cached_property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(b"static|sum|l2")
        for name in ("config.json", "tokenizer.json", "vectors.npz"):
            digest.update((self.directory / name).read_bytes())
        return digest.hexdigest()[:16]

    @cached_property
    def provenance(self) -> dict[str, Any]:
        return json.loads((self.directory / "provenance.json").read_text(encoding="utf-8"))

    @cached_property
    def _tokenizer(self) -> Tokenizer:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.directory / "tokenizer.json"))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return tokenizer

    @cached_property
    def _table(self) -> tuple[np.ndarray, np.ndarray]:
        """The token table as stored: int8 codes (V x d) and float32 scales (V,). Kept as int8 in memory (a
        quarter of float32: a server holds 7.8 MB instead of 31 MB); rows are scaled when looked up."""
        with np.load(self.directory / "vectors.npz", allow_pickle=False) as data:
            codes, scales = data["codes"], data["scales"]
        if codes.shape != (self._tokenizer.get_vocab_size(), self.dim) or scales.shape != codes.shape[:1]:
            raise ValidationError(f"static model {self.directory}: vectors.npz does not match its config")
        return codes, scales.astype(np.float32)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """The float32 table rows of token `ids`."""
        codes, scales = self._table
        return codes[ids].astype(np.float32) * scales[ids, None]

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self.token_ids(texts)]

    def embed(self, texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), BATCH):
            ids = self.token_ids(texts[start : start + BATCH])
            for offset in range(0, len(ids), BLOCK):
                block = ids[offset : offset + BLOCK]
                out[start + offset : start + offset + len(block)] = self._sums(block)
            if progress:
                progress(min(start + BATCH, len(texts)), len(texts))
        return out

    def _sums(self, ids: list[list[int]]) -> np.ndarray:
        """L2-normalized sums of the rows of each text's token ids, as one matrix product: (texts x distinct
        tokens) counts times those tokens' rows, in float64 so that a text's vector does not depend on the other
        texts of its block beyond float32 rounding (gathering every token's row and summing segments was 15x
        slower: a 4,000-chunk build spent 13.9 s here, 0.5 s now)."""
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
        tokens, column = np.unique(flat, return_inverse=True)
        row = np.repeat(np.arange(len(ids)), lengths)
        counts = np.bincount(row * len(tokens) + column, minlength=len(ids) * len(tokens))
        sums = counts.reshape(len(ids), len(tokens)).astype(np.float64) @ self.rows(tokens).astype(np.float64)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        return (sums / np.where(norms == 0, 1, norms)).astype(np.float32)
