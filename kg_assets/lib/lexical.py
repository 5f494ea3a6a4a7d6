"""The lexical channel: code-aware tokens and a BM25 index over a version's chunks, saved as one file.

Tokens: every identifier whole and, when it has several, its parts split at `_`, case changes, digits and dots
(`parseConfig`, `parse_config` -> `parseconfig`/`parse_config`, `parse`, `config`); parts are lightly stemmed
(`routing`, `routes` -> `rout`) so prose questions meet code words. Reserved words of the chunk's language and
English function words are not content. A chunk's document is its text plus its path components and the names
it defines, each counted `FIELD_REPEAT` times, so a file or definition named like the question ranks well.

The index (`lexical.npz`) holds the BM25 weight of every (term, chunk) pair, precomputed, as term-major postings:
a query sums the postings of its terms. `LexicalIndex.search` is exact BM25 (Lucene's idf, k1 1.2, b 0.75).
"""

from __future__ import annotations

import functools
import io
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kg_assets.lib.errors import ValidationError

if TYPE_CHECKING:
    import pyarrow as pa
from kg_assets.lib.fsutil import atomic_write_bytes
from kg_assets.lib.languages import keywords

LEXICAL_FILE = "lexical.npz"
FORMAT = 2  # bumped whenever tokenization changes: an index must be queried with the tokens it was built from
K1, B = 1.2, 0.75  # BM25's usual defaults (Robertson; Lucene)
FIELD_REPEAT = 3  # path and defined names count 3x; 1x, 3x and 5x were within 0.01 NDCG@10 on the labelled set
MAX_TOKEN = 64  # longer "words" are hashes, base64 or minified code, never looked up

_WORD = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*|[0-9]+")
_PART = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
ENGLISH_STOP_WORDS = frozenset(
    {
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "been",
        "being",
        "but",
        "by",
        "can",
        "could",
        "do",
        "does",
        "did",
        "doing",
        "for",
        "from",
        "had",
        "has",
        "have",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "me",
        "my",
        "of",
        "on",
        "or",
        "our",
        "over",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "to",
        "under",
        "up",
        "us",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
    }
)


def _stem(word: str) -> str:
    """A light English suffix strip (plural, -ing, -ed, -er, then a final e), applied alike to queries and chunks:
    `routing`, `routes`, `router`, `route` -> `rout`."""
    for suffix, keep in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("er", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            word = word[: -len(suffix)] + keep
            break
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


@functools.lru_cache(maxsize=1 << 18)
def _word_tokens(word: str) -> tuple[str, ...]:
    parts = [p.lower() for p in _PART.findall(word)]
    whole = word.lower().strip("_$")
    if len(parts) <= 1:
        return (_stem(whole),) if whole.isalpha() else (whole,)
    return (whole, *(_stem(p) for p in parts))


def code_tokens(text: str, language: str = "") -> list[str]:
    """Lowercase content tokens of code or prose: identifiers whole plus their (stemmed) parts, without the
    language's reserved words and English function words."""
    skip = keywords(language)
    tokens = []
    for word in _WORD.findall(text):
        lower = word.lower()
        if lower in skip or lower in ENGLISH_STOP_WORDS:
            continue
        tokens += (token for token in _word_tokens(word) if 1 < len(token) <= MAX_TOKEN)
    return tokens


def path_tokens(uri: str) -> list[str]:
    """Tokens of a repo-relative path's directories and file stem (not the extension)."""
    stem = uri.rsplit(".", 1)[0] if "." in uri.rsplit("/", 1)[-1] else uri
    return code_tokens(stem.replace("/", " "))


def document_tokens(uri: str, language: str, text: str, symbols: Iterable[str]) -> list[str]:
    """A chunk as the lexical index sees it: text, plus path and defined names repeated `FIELD_REPEAT` times."""
    named = path_tokens(uri) + [t for s in symbols for t in code_tokens(s.replace(".", " "))]
    return code_tokens(text, language) + named * FIELD_REPEAT


class LexicalIndex:
    """BM25 over a corpus of chunks, as term-major postings of precomputed weights."""

    def __init__(self, ids: np.ndarray, vocab: dict[str, int], indptr: np.ndarray, rows: np.ndarray, weights):
        self.ids = np.asarray(ids, dtype=np.int64)
        self._vocab, self._indptr, self._rows, self._weights = vocab, indptr, rows, weights

    @classmethod
    def build(cls, ids: np.ndarray, documents: Sequence[Sequence[str]]) -> LexicalIndex:
        """Index `documents[i]` (token lists, see `document_tokens`) under chunk id `ids[i]`."""
        counts = [Counter(doc) for doc in documents]
        lengths = np.array([len(doc) for doc in documents], dtype=np.float32)
        avg = float(lengths.mean()) if len(lengths) and lengths.mean() > 0 else 1.0
        postings: dict[str, list[tuple[int, int]]] = {}
        for row, counter in enumerate(counts):
            for term, tf in counter.items():
                postings.setdefault(term, []).append((row, tf))
        terms = sorted(postings)
        n = len(documents)
        indptr = np.zeros(len(terms) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(postings[t]) for t in terms])
        rows = np.empty(indptr[-1], dtype=np.int32)
        weights = np.empty(indptr[-1], dtype=np.float32)
        for i, term in enumerate(terms):
            block = np.array(postings[term], dtype=np.int64)
            doc_rows, tf = block[:, 0], block[:, 1].astype(np.float32)
            idf = np.log1p((n - len(doc_rows) + 0.5) / (len(doc_rows) + 0.5))
            norm = K1 * (1 - B + B * lengths[doc_rows] / avg)
            rows[indptr[i] : indptr[i + 1]] = doc_rows
            weights[indptr[i] : indptr[i + 1]] = idf * tf * (K1 + 1) / (tf + norm)
        return cls(ids, {t: i for i, t in enumerate(terms)}, indptr, rows, weights)

    @property
    def terms(self) -> int:
        return len(self._vocab)

    @classmethod
    def from_chunks(cls, chunks: pa.Table) -> LexicalIndex:
        """Index a table of chunks (`chunk_id`, `uri`, `language`, `text`, `symbols`), as the build does."""
        columns = (chunks.column(c).to_pylist() for c in ("uri", "language", "text", "symbols"))
        documents = [document_tokens(*row) for row in zip(*columns, strict=True)]
        return cls.build(chunks.column("chunk_id").to_numpy(), documents)

    def save(self, path: Path) -> None:
        """Write the index to one `.npz` file, atomically."""
        terms = sorted(self._vocab, key=self._vocab.__getitem__)
        blob = "\n".join(terms).encode("utf-8")
        buffer = io.BytesIO()
        np.savez(
            buffer,
            format=np.array([FORMAT]),
            ids=self.ids,
            vocab=np.frombuffer(blob, dtype=np.uint8),
            indptr=self._indptr,
            rows=self._rows,
            weights=self._weights,
        )
        atomic_write_bytes(Path(path), buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> LexicalIndex:
        """Read an index written by `save`; ValidationError when the file is not one."""
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                if int(data["format"][0]) != FORMAT:
                    found = int(data["format"][0])
                    raise ValidationError(f"{path} has format {found}, this search reads {FORMAT}; rebuild the version")
                blob = data["vocab"].tobytes().decode("utf-8")
                terms = blob.split("\n") if blob else []
                index = cls(data["ids"], {}, data["indptr"], data["rows"], data["weights"])
        except (OSError, ValueError, KeyError, UnicodeDecodeError) as exc:
            raise ValidationError(f"{path} is not a readable lexical index ({exc})") from None
        if len(terms) + 1 != len(index._indptr) or index._indptr[-1] != len(index._rows):
            raise ValidationError(f"{path}: lexical index postings do not match its vocabulary")
        index._vocab = {t: i for i, t in enumerate(terms)}
        return index

    def scores(self, tokens: Sequence[str]) -> np.ndarray:
        """BM25 score of every chunk (in `ids` order) for a query's tokens (each distinct token once)."""
        total = np.zeros(len(self.ids), dtype=np.float32)
        for token in dict.fromkeys(tokens):
            term = self._vocab.get(token)
            if term is not None:
                lo, hi = self._indptr[term], self._indptr[term + 1]
                total[self._rows[lo:hi]] += self._weights[lo:hi]
        return total

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, chunk ids) of the top k per query text; -1 ids where fewer than k chunks share a token."""
        k = min(k, len(self.ids))
        out_scores = np.zeros((len(queries), k), dtype=np.float32)
        out_ids = np.full((len(queries), k), -1, dtype=np.int64)
        for row, query in enumerate(queries):
            scores, ids = self.top(code_tokens(query), k)
            out_scores[row, : len(ids)], out_ids[row, : len(ids)] = scores, ids
        return out_scores, out_ids

    def top(self, tokens: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, chunk ids) of the best k chunks with a positive score, best first (ties by chunk id)."""
        total = self.scores(tokens)
        hits = np.flatnonzero(total > 0)
        if len(hits) > k:
            hits = hits[np.argpartition(-total[hits], k - 1)[:k]]
        order = np.lexsort((self.ids[hits], -total[hits]))
        return total[hits[order]], self.ids[hits[order]]
