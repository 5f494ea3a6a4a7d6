"""The served search: one retrieval stack used by `indexctl search`, the eval's `hybrid` channel and the servers.

A `VersionHandle` opens a complete version once (its embedder, its FAISS index with the tuning profile applied,
its lexical index, its symbol table, a read-only catalog connection) and answers queries in four modes:
`dense` (the ANN index), `lexical` (BM25 over code-aware tokens), `symbol` (definitions, then references, of the
names the query mentions) and `hybrid`: the three channels' candidates fused by weighted, scaled scores, then
re-ranked with code-aware signals (query kind, prose vs code, test files, path matches, several good chunks in one
file) and diversified so one file does not fill the top k. Every hit says which channels found it and how.

Every hit carries the terms its score is the sum of (`Candidate`): each channel's weighted score, then each prior,
boost and diversity factor as the amount it added, so `indexctl search --explain` can show why a chunk won.

The weights below were chosen on two labelled sets measured together by `scripts/bench.py quality`: our own
`benchmarks/quality` (hand-written questions over pinned open-source repositories, span and file labels) and the
public semble pack (file labels, 17 languages); a rule is kept only when neither set gets worse beyond noise and
their mean improves, as round values where NDCG@10 was flat around them; each comment says what it does and what
it measured.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import numpy as np

from kg_assets.lib import catalog, faiss_index, tuning
from kg_assets.lib.channels import ann_search
from kg_assets.lib.copies import FileCopies
from kg_assets.lib.embedding import Embedder, searchable_embedder
from kg_assets.lib.errors import UsageError, ValidationError
from kg_assets.lib.languages import is_code
from kg_assets.lib.lexical import LEXICAL_FILE, LexicalIndex, code_tokens, path_tokens
from kg_assets.lib.lifecycle import CATALOG_FILE, FAISS_FILE, LifecycleRoot
from kg_assets.lib.symbols import QUALIFIED_NAME, SymbolTable, query_terms

MODES = ("hybrid", "dense", "lexical", "symbol")
MAX_K = 1000
MAX_QUERY_CHARS = 2000  # longer queries are cut: the embedder reads 256 tokens, and BM25 gains nothing from more
CANDIDATES = 50  # per channel, before fusion: the pool held a labelled target for 87% of flask's questions

# Fusion: each channel's candidate scores are min-max scaled to [0, 1] (the best candidate 1, the 50th 0) and summed
# with weights by query kind; the symbol channel's scores are already 0-1 (a definition 1, a reference 0.3). Unlike
# reciprocal-rank fusion this keeps the gaps between candidates: +0.06 NDCG@10 over RRF (k = 60) on flask's
# questions; scaling by the best score alone measured even (+0.006 overall, -0.01 on semantic), z-scores -0.02.
# An identifier query is answered by its definition, then by where the name occurs; a question in words mostly by
# meaning (dense), then by shared words. The set's questions avoid identifiers, so their symbol weight (flat there
# from 0 to 0.6) is set so that a definition a question names outranks a middling dense candidate.
CHANNEL_WEIGHTS = {
    "identifier": {"symbol": 1.0, "lexical": 0.5, "dense": 0.3},
    "natural": {"dense": 1.0, "lexical": 0.4, "symbol": 0.5},
}
# Prose and data files (markdown, rst, yaml...) answer code questions less often than code and crowd it out by
# sheer volume (an sdist's docs): their fused score is scaled down, never to zero. Tests likewise, unless asked for.
# On the set: questions 0.6 -> 0.3 +0.02 NDCG@10, tests 0.7 -> 0.5 +0.01; lookups flat between 0.2 and 0.7.
NON_CODE_WEIGHT = {"identifier": 0.4, "natural": 0.3}
TEST_WEIGHT = 0.5
PATH_BOOST = 0.1  # per query word naming a directory or the file (`routing` -> routing.py), at most two; flat 0-0.25
FILE_BOOST = (
    0.2  # x the fused score of the file's next best candidate: several good chunks lift their file (0-0.4 flat)
)
# Figures below: hybrid NDCG@10 on our set (276 questions, span and file labels) / on the semble pack (file labels;
# the 7 of its 19 repositories built when they were measured: cobra, chi, sinatra, rack, plug, bats-core, zig-clap),
# each with all the other rules as they are: 0.7099 / 0.9298.
# Diversity, for a top k that serves both kinds of labels: a file wanted once (a second chunk of a found file adds
# nothing to a file label) and several spans of one file wanted (43 of our 276 questions). The first HEAD_FILES
# places go to different files unless a chunk beats every other file's by 1 / HEAD_DECAY (each earlier pick of its
# file scales it by HEAD_DECAY there); after them each earlier pick scales by SAME_FILE_DECAY. 0.9 everywhere (the
# old rule): 0.7083 / 0.9196; 0.5 everywhere: 0.6908 / 0.9312; HEAD_FILES 2: 0.7111 / 0.9267, 4: 0.7089 / 0.9308;
# HEAD_DECAY 0.3: 0.7063 / 0.9313.
HEAD_FILES = 3
HEAD_DECAY = 0.5
SAME_FILE_DECAY = 0.9
# A chunk of a copy of a file (`copies`) the question does not point to; the sets' candidates hold no such copy
# (1.0 measured the same), the tests' two-version tree does: its copies no longer interleave.
COPY_WEIGHT = 0.5
# Example, sample, demo and benchmark code answers how to use a library, rarely where it does something; 1.0:
# 0.7081 / 0.9238 (zig-clap's examples/ 0.938 -> 0.890).
EXAMPLE_WEIGHT = 0.5
_EXAMPLE_PATH = re.compile(r"(^|/)_?(examples?|samples?|demos?|docs?_src|benchmarks?)/")
# A question's words naming the file or its folder (equal, or one a prefix of the other: `dependency` meets
# `dependencies`) add NAME_BOOST x the best candidate's score x their share of its words; questions only (lookups
# have PATH_BOOST and the symbol channel). On our set / the pack's 10 repositories then built (those above, monolog,
# trpc, lazy.nvim): 0.5 0.7105 / 0.8968; 0.2 0.7099 / 0.8940, 1.0 0.7076 / 0.8967; 0.2 not scaled by the best score
# 0.7099 / 0.8930. Our set's questions avoid their targets' words by design, so it hardly moves there.
NAME_BOOST = 0.5
# A lookup's definition in a file named after it (`Application` in Application.swift, `SqlMapper` in SqlMapper.cs)
# is the primary one among extensions and partial parts (`extension Application` in Application+HTTP.swift, each
# `partial class SqlMapper` in SqlMapper.Async.cs), as one type per file named after it is the rule in many
# languages: x1.6 (flat to 2.0, 1.3 half as good): pack 0.8580 -> 0.8648 (its symbol questions 0.919 -> 0.967,
# vapor 0.624 -> 0.693, dapper 0.726 -> 0.760), ours unchanged (0.7105).
STEM_DEFINITION = 1.6
NAME_PREFIX_MIN = 4  # shortest word or name part prefix-matched (`conf` meets `config`; `id` only meets `id`)

_TEST_PATH = re.compile(r"(^|/)(tests?|testing|spec|__tests__)/|(^|/)test_[^/]*$|_test\.\w+$|\.(test|spec)\.\w+$")
_TEST_WORDS = frozenset(code_tokens("test tests testing fixture fixtures pytest"))  # as stemmed queries hold them
_CODE_SHAPE = re.compile(r"_|[a-z][A-Z]|\.|::|#|->|\(\)")


@dataclass(frozen=True)
class SearchHit:
    rank: int
    chunk_id: int
    uri: str
    start_line: int
    end_line: int
    score: float
    channels: dict[str, dict[str, float]]  # channel -> {"rank", "score"} for each channel that found the chunk
    first_line: str = ""
    explain: list[dict[str, Any]] = field(default_factory=list)  # hybrid: the terms `score` sums

    def to_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "chunk_id": self.chunk_id,
            "uri": self.uri,
            "start_line": self.start_line,
            "end_line": self.end_line,
            "score": round(self.score, 6),
            "first_line": self.first_line,
            "channels": self.channels,
            "explain": self.explain,
        }


def query_kind(text: str) -> str:
    """`identifier` for a lookup of one to three names (`Blueprint`, `url_for`, `Session.merge`), else `natural`."""
    words = text.replace("()", "").split()
    if not 1 <= len(words) <= 3 or not all(QUALIFIED_NAME.fullmatch(w) for w in words):
        return "natural"
    return "identifier" if len(words) == 1 or any(_CODE_SHAPE.search(w) for w in words) else "natural"


def symbol_terms(text: str, kind: str) -> list[list[str]]:
    """Names to look up: every term of an identifier query; in a sentence, only words shaped like code
    (`snake_case`, `camelCase`, `a.b`, `f()`) or capitalized past the first word (`Blueprint`)."""
    if kind == "identifier":
        return query_terms(text)
    terms = []
    for position, word in enumerate(text.split()):
        word = word.strip(",;:?!'\"`")
        if _CODE_SHAPE.search(word) or (position > 0 and word[:1].isupper() and not word.isupper()):
            terms += query_terms(word)
    return terms


def is_test_path(uri: str) -> bool:
    return bool(_TEST_PATH.search(uri))


@dataclass
class ChunkTable:
    """Per-chunk fields search ranks with, in chunk-id order (`row` finds a chunk id's position)."""

    ids: np.ndarray
    uris: list[str]
    languages: list[str]
    start_lines: np.ndarray
    end_lines: np.ndarray
    _path_tokens: dict[str, frozenset[str]] = field(default_factory=dict)
    _name_tokens: dict[str, tuple[frozenset[str], frozenset[str]]] = field(default_factory=dict)

    @classmethod
    def from_catalog(cls, con: duckdb.DuckDBPyConnection) -> ChunkTable:
        query = "SELECT chunk_id, uri, language, start_line, end_line FROM chunks ORDER BY chunk_id"
        columns = con.sql(query).fetchnumpy()  # numpy, not Arrow: a server need not load pyarrow (~25 MiB)
        return cls(
            np.asarray(columns["chunk_id"]),
            list(columns["uri"]),
            list(columns["language"]),
            np.asarray(columns["start_line"]),
            np.asarray(columns["end_line"]),
        )

    def row(self, chunk_id: int) -> int:
        return int(np.searchsorted(self.ids, chunk_id))

    def path_tokens(self, uri: str) -> frozenset[str]:
        if uri not in self._path_tokens:
            self._path_tokens[uri] = frozenset(path_tokens(uri))
        return self._path_tokens[uri]

    def name_tokens(self, uri: str) -> tuple[frozenset[str], frozenset[str]]:
        """Tokens of a file's name (without extension) and of its folder's name."""
        if uri not in self._name_tokens:
            parts = uri.split("/")
            self._name_tokens[uri] = (
                frozenset(path_tokens(parts[-1])),
                frozenset(path_tokens(parts[-2])) if len(parts) > 1 else frozenset(),
            )
        return self._name_tokens[uri]


class Ranked(NamedTuple):
    """A ranked chunk: its score, the channels that found it (their `rank` and raw `score`) and, in hybrid mode, the
    terms the score is the sum of (`Candidate.explain`)."""

    chunk_id: int
    score: float
    channels: dict[str, dict[str, float]]
    explain: list[dict[str, Any]]


@dataclass
class Candidate:
    """A chunk being re-ranked: which channels found it and the terms its score is the sum of, in the order they
    were applied: each channel's weighted, scaled score, then each prior or boost as the amount it added (a
    factor f applied to a score s adds s x (f - 1)), so the terms always sum to the score."""

    chunk_id: int
    row: int
    uri: str
    channels: dict[str, dict[str, float]] = field(default_factory=dict)
    terms: list[tuple[str, float, float | None]] = field(default_factory=list)  # (what, added, factor or None)
    score: float = 0.0

    def add(self, what: str, amount: float) -> None:
        self.terms.append((what, amount, None))
        self.score += amount

    def scale(self, what: str, factor: float) -> None:
        self.terms.append((what, self.score * (factor - 1), factor))
        self.score *= factor

    def explain(self) -> list[dict[str, Any]]:
        return [
            {"term": what, "value": round(added, 6), **({"factor": round(factor, 6)} if factor is not None else {})}
            for what, added, factor in self.terms
        ]


class VersionHandle:
    """A complete version opened for searching; thread-safe for concurrent `search` calls."""

    def __init__(
        self,
        version: str,
        catalog_path: Path,
        embedder: Embedder,
        index: Any,
        con: duckdb.DuckDBPyConnection,
        chunks: ChunkTable,
        lexical: LexicalIndex | None,
        symbols: SymbolTable | None,
        rerank_factor: float,
        notes: list[str],
        copies: FileCopies | None = None,
    ) -> None:
        self.version, self.catalog_path, self.embedder, self.index = version, catalog_path, embedder, index
        self.chunks, self.lexical, self.symbols = chunks, lexical, symbols
        self.rerank_factor = rerank_factor
        self.notes = notes
        self.copies = copies or FileCopies([])
        self._con = con

    @classmethod
    def open(cls, root: LifecycleRoot, version: str, *, index: Any = None, quick_start: bool = False) -> VersionHandle:
        """Load a complete version; ValidationError naming what is missing or inconsistent. `index`: the version's
        FAISS index already loaded, with its knobs set by the caller (the eval's, which may override them);
        `quick_start`: for a process that answers one query (see `load_embedder`)."""
        vdir = root.version_dir(version)
        con = catalog.connect_read_only(vdir / CATALOG_FILE)
        try:
            tables = catalog.table_names(con)
            if "chunks" not in tables:
                raise ValidationError(f"version {version}: its catalog has no chunks table; it cannot be searched")
            profile = tuning.load_profile_if_any(vdir)
            if index is None:
                index = faiss_index.read_index(vdir / FAISS_FILE)
                knobs = tuning.apply_profile(index, profile) if profile else {}
            else:
                knobs = tuning.current_knobs(index)
            meta = dict(con.execute("SELECT key, value FROM kg_meta").fetchall()) if "kg_meta" in tables else {}
            embedder = searchable_embedder(meta, index.d, version, quick_start=quick_start)
            notes = []
            lexical = None
            if (vdir / LEXICAL_FILE).is_file():
                try:
                    lexical = LexicalIndex.load(vdir / LEXICAL_FILE)
                except ValidationError as exc:
                    notes.append(f"{exc}: lexical channel off")
            else:
                notes.append(f"version {version} has no {LEXICAL_FILE}: lexical channel off (dense and symbol only)")
            columns = {r[0] for r in con.execute("DESCRIBE chunks").fetchall()}
            symbols = SymbolTable.from_catalog(con) if "symbols" in columns else None
            chunks = ChunkTable.from_catalog(con)
            copies = FileCopies.from_catalog(con)
        except BaseException:
            con.close()
            raise
        return cls(
            version,
            vdir / CATALOG_FILE,
            embedder,
            index,
            con,
            chunks,
            lexical,
            symbols,
            faiss_index.rerank_factor(index, knobs.get("k_factor")),
            notes,
            copies,
        )

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> VersionHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- channels -------------------------------------------------------------------------------------

    def dense(self, vectors: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top n of the ANN index as served: its tuning profile, and the profile's exact re-rank factor on an
        index without a re-rank stage of its own (the candidates' stored vectors are read from the catalog)."""
        return ann_search(self.index, self, vectors, n, self.rerank_factor)

    def exact_scores(self, queries: np.ndarray, chunk_ids: np.ndarray) -> np.ndarray:
        """Inner product of each query with each of its candidates' stored vectors (-inf for -1 / unknown ids);
        reads only those rows of the catalog."""
        wanted = np.unique(chunk_ids[chunk_ids != -1]).tolist()
        with self._con.cursor() as cur:
            rows = cur.execute(
                "SELECT chunk_id, embedding FROM chunks WHERE chunk_id IN (SELECT unnest(?::BIGINT[]))", [wanted]
            ).fetchall()
        stored = {chunk_id: np.asarray(vector, dtype=np.float32) for chunk_id, vector in rows}
        scores = np.full(chunk_ids.shape, -np.inf, dtype=np.float32)
        for (i, j), chunk_id in np.ndenumerate(chunk_ids):
            if chunk_id in stored:
                scores[i, j] = stored[chunk_id] @ queries[i]
        return scores

    def lexical_top(self, text: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self.lexical is None:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        return self.lexical.top(code_tokens(text), n)

    def symbol_top(self, text: str, kind: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self.symbols is None:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        # A question's names are answered by their definitions; their references (wherever `Map` or `Error` is
        # used) only crowd them: on the set, TypeScript 0.635 -> 0.648 NDCG@10 once immer had SCIP references.
        return self.symbols.search(symbol_terms(text, kind), n, references=kind == "identifier")

    # ---- the stack ------------------------------------------------------------------------------------

    def search(self, text: str, k: int = 10, mode: str = "hybrid") -> list[SearchHit]:
        """The top k chunks for a query, hydrated (uri, lines, first line); UsageError for a bad request."""
        text = check_query(text, k, mode)
        vector = self.embedder.embed([text]) if mode in ("hybrid", "dense") else None
        ranked = self.rank(text, vector, k, mode)
        rows = self.hydrate([hit.chunk_id for hit in ranked])
        hits = []
        for rank, hit in enumerate(ranked, start=1):
            row = rows[hit.chunk_id]
            first = next((line.strip() for line in row["text"].splitlines() if line.strip()), "")
            where = (row["uri"], row["start_line"], row["end_line"])
            hits.append(SearchHit(rank, hit.chunk_id, *where, hit.score, hit.channels, first, hit.explain))
        return hits

    def rank(self, text: str, vector: np.ndarray | None, k: int, mode: str = "hybrid") -> list[Ranked]:
        """The top k; `vector` is the query's embedding (dense and hybrid)."""
        kind = query_kind(text)
        if mode == "dense":
            scores, ids = self.dense(vector, k)
            return _single("dense", scores[0], ids[0])
        if mode == "lexical":
            return _single("lexical", *self.lexical_top(text, k))
        if mode == "symbol":
            return _single("symbol", *self.symbol_top(text, kind, k))
        return self.rerank(text, kind, self.candidates(text, vector, kind, max(k, CANDIDATES)), k)

    def candidates(
        self, text: str, vector: np.ndarray, kind: str, n: int = CANDIDATES
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each channel's top n (scores, chunk ids) for a query: what `rerank` fuses."""
        dense_scores, dense_ids = self.dense(vector, n)
        return {
            "dense": (dense_scores[0], dense_ids[0]),
            "lexical": self.lexical_top(text, n),
            "symbol": self.symbol_top(text, kind, n),
        }

    def rerank(self, text: str, kind: str, found: dict[str, tuple[np.ndarray, np.ndarray]], k: int) -> list[Ranked]:
        """The top k of the fused, re-ranked candidates, each with the terms its score sums (`Candidate.terms`)."""
        weights = CHANNEL_WEIGHTS[kind]
        pool: dict[int, Candidate] = {}
        for name, (all_scores, all_ids) in found.items():
            scores, ids = all_scores[all_ids != -1], all_ids[all_ids != -1]
            scaled = scores if name == "symbol" else _min_max(scores)
            for rank, (score, value, chunk_id) in enumerate(
                zip(scores.tolist(), scaled.tolist(), ids.tolist(), strict=True), 1
            ):
                if chunk_id not in pool:
                    row = self.chunks.row(chunk_id)
                    pool[chunk_id] = Candidate(chunk_id, row, self.chunks.uris[row])
                pool[chunk_id].channels[name] = {"rank": rank, "score": round(score, 6)}
                pool[chunk_id].add(name, weights[name] * value)
        words = set(code_tokens(text))
        asks_tests = bool(words & _TEST_WORDS)
        for candidate in pool.values():
            if not is_code(self.chunks.languages[candidate.row]):
                candidate.scale("non_code", NON_CODE_WEIGHT[kind])
            if not asks_tests and is_test_path(candidate.uri):
                candidate.scale("test_file", TEST_WEIGHT)
            if _EXAMPLE_PATH.search(candidate.uri):
                candidate.scale("example", EXAMPLE_WEIGHT)
            if self.copies.preferred(candidate.uri, words) != candidate.uri:
                candidate.scale("other_copy", COPY_WEIGHT)
            matched = min(len(words & self.chunks.path_tokens(candidate.uri)), 2)
            if matched:
                candidate.scale("path_words", 1 + PATH_BOOST * matched)
        by_file: dict[str, list[float]] = {}
        for candidate in pool.values():
            by_file.setdefault(candidate.uri, []).append(candidate.score)
        for scores in by_file.values():
            scores.sort(reverse=True)
        for candidate in list(pool.values()):
            others = by_file[candidate.uri]
            if len(others) > 1:
                runner_up = others[1] if others[0] == candidate.score else others[0]
                candidate.add("file_evidence", FILE_BOOST * runner_up)
        if kind == "identifier":
            names = {parts[-1].lower() for parts in symbol_terms(text, kind)}
            for candidate in pool.values():
                stem = candidate.uri.rsplit("/", 1)[-1].rsplit(".", 1)[0].lower().replace("_", "")
                if stem in names and candidate.channels.get("symbol", {}).get("score", 0) >= 1.0:
                    candidate.scale("named_file", STEM_DEFINITION)
        keywords = set(code_tokens(text))
        if keywords and kind == "natural":
            unit = NAME_BOOST * max(c.score for c in pool.values())
            for candidate in pool.values():
                file_words, folder_words = self.chunks.name_tokens(candidate.uri)
                matched = {w for w in keywords if _names(w, file_words) or _names(w, folder_words)}
                if matched:
                    candidate.add("name_match", unit * len(matched) / len(keywords))
        picked = _diversified(list(pool.values()), k)
        return [Ranked(c.chunk_id, c.score, c.channels, c.explain()) for c in picked]

    def chunk(self, chunk_id: int) -> dict[str, Any] | None:
        """One chunk's catalog row (uri, language, lines, text, symbols), or None when the version lacks it."""
        return self.hydrate([chunk_id]).get(chunk_id)

    def find_symbol(self, name: str, limit: int = 50) -> list[dict[str, Any]]:
        """Definitions, then references, of a (possibly qualified) name, each with its chunk's uri and span."""
        terms = query_terms(name)
        if self.symbols is None or not terms:
            return []
        matches = sorted(self.symbols.lookup(terms[0]), key=lambda m: (-m.score, m.name.count("."), m.chunk_id))
        found = []
        for match in matches[:limit]:
            row = self.chunks.row(match.chunk_id)
            found.append(
                {
                    "name": match.name,
                    "role": "definition" if match.definition else "reference",
                    "chunk_id": match.chunk_id,
                    "uri": self.chunks.uris[row],
                    "start_line": int(self.chunks.start_lines[row]),
                    "end_line": int(self.chunks.end_lines[row]),
                }
            )
        return found

    def hydrate(self, chunk_ids: list[int]) -> dict[int, dict[str, Any]]:
        """Catalog rows (uri, language, lines, text, symbols) of the given chunks, keyed by id."""
        with self._con.cursor() as cur:
            return catalog.hydrate_with(cur, chunk_ids)


def _names(word: str, tokens: frozenset[str]) -> bool:
    """Whether a query word names one of a path's tokens: equal, or one a prefix of the other (both stemmed)."""
    if word in tokens:
        return True
    return len(word) >= NAME_PREFIX_MIN and any(
        len(t) >= NAME_PREFIX_MIN and (t.startswith(word) or word.startswith(t)) for t in tokens
    )


def _diversified(pool: list[Candidate], k: int) -> list[Candidate]:
    """The top k by score, each chunk scaled per earlier pick of its file: by HEAD_DECAY while the first HEAD_FILES
    places are filled, by SAME_FILE_DECAY after."""
    pool = sorted(pool, key=lambda c: (-c.score, c.chunk_id))
    picked: list[Candidate] = []
    taken: dict[str, int] = {}

    def factor(c: Candidate) -> float:
        return (HEAD_DECAY if len(picked) < HEAD_FILES else SAME_FILE_DECAY) ** taken.get(c.uri, 0)

    while pool and len(picked) < k:
        best = max(range(len(pool)), key=lambda i: (pool[i].score * factor(pool[i]), -pool[i].chunk_id))
        candidate = pool.pop(best)
        if taken.get(candidate.uri):
            candidate.scale("same_file", factor(candidate))
        picked.append(candidate)
        taken[candidate.uri] = taken.get(candidate.uri, 0) + 1
    return picked


def _min_max(scores: np.ndarray) -> np.ndarray:
    """Scores scaled to [0, 1] over one channel's candidates (all 1 when they tie)."""
    if len(scores) == 0:
        return scores
    low, high = float(scores.min()), float(scores.max())
    return (scores - low) / (high - low) if high > low else np.ones_like(scores)


def _single(channel: str, scores: np.ndarray, ids: np.ndarray) -> list[Ranked]:
    return [
        Ranked(int(i), float(s), {channel: {"rank": rank, "score": round(float(s), 6)}}, [])
        for rank, (s, i) in enumerate(zip(scores, ids, strict=True), start=1)
        if i != -1
    ]


def check_query(text: str, k: int, mode: str) -> str:
    """The query as searched (cut to MAX_QUERY_CHARS); UsageError for an empty one, a bad k or an unknown mode."""
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode[:40]!r}: choose one of {', '.join(MODES)}")
    if not 1 <= k <= MAX_K:
        raise UsageError(f"k must be between 1 and {MAX_K}, got {k}")
    text = text.strip()
    if not text:
        raise UsageError("the query is empty")
    if not any(char.isalnum() for char in text):
        raise UsageError("the query has no letters or digits to search for")
    return text[:MAX_QUERY_CHARS]


def check_chunk_id(chunk_id: int) -> int:
    """`chunk_id` if it can be a chunk id (a signed 64-bit integer); UsageError otherwise."""
    if not -(2**63) <= chunk_id < 2**63:
        raise UsageError(f"chunk id {chunk_id} is not a signed 64-bit integer")
    return chunk_id
