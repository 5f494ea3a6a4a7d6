"""Lexical retrieval over chunk text: code-aware tokens and a BM25 index (the `bm25s` library does the scoring).

Identifiers are kept whole and also split on underscores and case changes (`parseConfig`, `parse_config` ->
`parseconfig`/`parse_config`, `parse`, `config`), which measured far better on code than plain word tokens.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import bm25s
import numpy as np

from kg_assets.lib.fsutil import fsync_dir, temp_sibling

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")
_PART = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
IDS_FILE = "chunk_ids.npy"
STOP_WORDS = frozenset(
    {
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "cls",
        "def",
        "false",
        "for",
        "from",
        "if",
        "import",
        "in",
        "into",
        "is",
        "it",
        "none",
        "of",
        "on",
        "or",
        "return",
        "self",
        "the",
        "this",
        "to",
        "true",
        "with",
    }
)


def code_tokens(text: str) -> list[str]:
    """Lowercase tokens of code or prose: each identifier whole, plus its parts when it has several."""
    tokens = []
    for word in _WORD.findall(text):
        parts = [p.lower() for p in _PART.findall(word)]
        whole = word.lower().strip("_")
        for token in (whole, *parts) if len(parts) > 1 else (whole,):
            if len(token) > 1 and token not in STOP_WORDS:
                tokens.append(token)
    return tokens


class LexicalIndex:
    """BM25 (Lucene variant, k1 1.5, b 0.75) over texts keyed by chunk id."""

    def __init__(self, ids: np.ndarray, bm25: bm25s.BM25) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self._bm25 = bm25

    @classmethod
    def build(cls, ids: np.ndarray, texts: Sequence[str]) -> LexicalIndex:
        bm25 = bm25s.BM25()
        bm25.index([code_tokens(t) for t in texts], show_progress=False)
        return cls(ids, bm25)

    @classmethod
    def load_or_build(cls, cache_dir: Path, corpus: Callable[[], tuple[np.ndarray, list[str]]]) -> LexicalIndex:
        """The index saved in `cache_dir` (a directory that names the corpus, e.g. by its catalog's sha256), else
        one built from `corpus()` and saved there (into a temporary directory renamed into place)."""
        if (cache_dir / IDS_FILE).is_file():
            return cls(np.load(cache_dir / IDS_FILE), bm25s.BM25.load(str(cache_dir), show_progress=False))
        index = cls.build(*corpus())
        tmp = temp_sibling(cache_dir)
        tmp.mkdir(parents=True)
        try:
            index._bm25.save(str(tmp), show_progress=False)
            np.save(tmp / IDS_FILE, index.ids)  # last: its presence marks a complete cache
            os.rename(tmp, cache_dir)
            fsync_dir(cache_dir.parent)
        except OSError:  # another process saved it first; ours is equivalent
            pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return index

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, chunk ids) of the top k per query; -1 ids where fewer than k chunks share a token."""
        k = min(k, len(self.ids))
        rows, scores = self._bm25.retrieve([code_tokens(q) for q in queries], k=k, show_progress=False)
        found = np.where(scores > 0, self.ids[rows], -1)
        return scores.astype(np.float32), found
