"""Query sets for tuning and evaluation: seeded self-queries, labelled JSONL files, and labelled queries generated
from the repository's documented definitions. Positives are always `chunk_id`s."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kg_assets.lib import catalog
from kg_assets.lib.errors import NotFoundError, UsageError

MIN_SENTENCE_WORDS = 4
# The query options `tune` and `eval` share (one reader, one flag).
QUERIES_HELP = "Query file: JSONL ({qid, text, positives} or the benchmark format), or plain text, one per line."
GENERATED_HELP = "Add queries generated from documented definitions (a docstring's first sentence)."


@dataclass(frozen=True)
class TextQuery:
    qid: str
    text: str
    positives: frozenset[int]  # empty when the query has no labels
    targets: tuple[frozenset[int], ...] = ()  # the positives grouped by labelled file or span (empty: one each)
    category: str = ""


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring, on one line ('' when it has none); signature lines are skipped."""
    lines = [line.strip() for line in doc.splitlines() if line.strip() and not line.startswith("(")]
    return re.split(r"(?<=[.!?])\s", " ".join(lines))[0].strip() if lines else ""


def docstring_queries(catalog_path: Path, limit: int, seed: int = 0) -> list[TextQuery]:
    """First sentences (at least 4 words) of documented definitions, each labelled with the chunk defining it.

    A sentence shared by several definitions is one query whose positives are all of their chunks. A query's id
    is a hash of its sentence, and when there are more than `limit`, the `limit` with the smallest seeded hashes
    are kept: the same sentence gets the same id and the same fate in every version, so two versions' evals
    share most of their queries even after the repository changed.
    """
    with catalog.connect_read_only(catalog_path) as con:
        if not {"scip_symbols", "v_chunk_symbols"} <= catalog.table_names(con):
            return []
        rows = con.execute(
            """SELECT s.documentation, list(DISTINCT c.chunk_id ORDER BY c.chunk_id)
            FROM scip_symbols s JOIN v_chunk_symbols c USING (symbol)
            WHERE s.documentation <> '' GROUP BY s.documentation ORDER BY s.documentation"""
        ).fetchall()
    labelled: dict[str, set[int]] = {}
    for doc, chunk_ids in rows:
        sentence = first_sentence(doc)
        if len(sentence.split()) >= MIN_SENTENCE_WORDS:
            labelled.setdefault(sentence, set()).update(chunk_ids)
    ranked = sorted(labelled, key=lambda sentence: _digest(f"{seed}|{sentence}"))[:limit]
    return [TextQuery(f"doc:{_digest(s)}", s, frozenset(labelled[s])) for s in sorted(ranked)]


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def self_sample(ids: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """Row numbers of a seeded random sample (sorted, without replacement) of a corpus of `len(ids)` vectors."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(len(ids), size=min(samples, len(ids)), replace=False))


def check_queries_file(path: Path) -> Path:
    """`path` if it is a regular file: NotFoundError when it does not exist, UsageError for a FIFO (whose read
    would block), a directory or a device."""
    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"queries file not found: {path}")
    if not path.is_file():
        raise UsageError(f"queries file {path} is not a regular file")
    return path


def read_labelled_queries(path: Path, catalog_path: Path) -> list[TextQuery]:
    """Queries from a file, the one format of `tune --queries` and `eval --queries`: JSONL, one object per line,
    in either of two shapes, or plain text (a line not starting with `{`: an unlabelled query with id `q<line>`):

    - `{"qid", "text", "positives"}`: a positive is a chunk id (integer) or `path:line` (the chunk of that
      repo-relative file covering the 1-based line);
    - `{"id", "query", "relevant", "category"}` (the benchmark format): a relevant target is a repo-relative
      `path` (every chunk of the file) or `{"path", "start_line", "end_line"}` (the chunks overlapping those
      1-based lines); each target counts once in the metrics.

    UsageError, naming the line, for malformed lines and targets that match no chunk.
    """
    path = check_queries_file(path)
    parsed: list[tuple[int, str, str, list, bool, str]] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if not line.lstrip().startswith("{"):
            parsed.append((lineno, f"q{lineno}", line.strip(), [], False, ""))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
        grouped = isinstance(obj, dict) and "relevant" in obj
        text = obj.get("query" if grouped else "text") if isinstance(obj, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise UsageError(f"{path}:{lineno}: expected an object with a non-empty string 'text' (or 'query')")
        labels = obj.get("relevant" if grouped else "positives", [])
        if not isinstance(labels, list):
            raise UsageError(f"{path}:{lineno}: '{'relevant' if grouped else 'positives'}' must be a list")
        qid = str(obj.get("qid", obj.get("id", f"q{lineno}")))
        parsed.append((lineno, qid, text, labels, grouped, str(obj.get("category", ""))))
    if not parsed:
        raise UsageError(f"{path} holds no queries")
    qids = [qid for _, qid, *_ in parsed]
    if len(set(qids)) != len(qids):
        raise UsageError(f"{path}: qids must be unique")
    with catalog.connect_read_only(catalog_path) as con:
        spans = con.execute("SELECT uri, start_line, end_line, chunk_id FROM chunks").fetchall()
    known = {chunk_id for *_, chunk_id in spans}
    by_uri: dict[str, list[tuple[int, int, int]]] = {}
    for uri, start, end, chunk_id in spans:
        by_uri.setdefault(uri, []).append((start, end, chunk_id))
    queries = []
    for lineno, qid, text, labels, grouped, category in parsed:
        where = f"{path}:{lineno}"
        if grouped:
            targets = tuple(_resolve_target(target, by_uri, where) for target in labels)
        else:
            targets = tuple(frozenset({_resolve_positive(p, known, by_uri, where)}) for p in labels)
        positives = frozenset().union(*targets)
        queries.append(TextQuery(qid, text, positives, targets, category))
    return queries


def _resolve_target(target: object, by_uri: dict[str, list[tuple[int, int, int]]], where: str) -> frozenset[int]:
    """The chunks of a labelled file (`"path"`) or overlapping a labelled span (`{"path", "start_line", ...}`)."""
    if isinstance(target, str):
        uri, first, last = target, 1, None
    elif isinstance(target, dict) and isinstance(target.get("path"), str):
        uri, first, last = target["path"], target.get("start_line", 1), target.get("end_line")
        if not isinstance(first, int) or not isinstance(last, int | None):
            raise UsageError(f"{where}: start_line and end_line must be integers")
    else:
        raise UsageError(f"{where}: a relevant target is a path or an object with 'path', 'start_line', 'end_line'")
    chunk_ids = frozenset(
        chunk_id for start, end, chunk_id in by_uri.get(uri, ()) if end >= first and (last is None or start <= last)
    )
    if not chunk_ids:
        raise UsageError(f"{where}: {uri}{'' if last is None else f':{first}-{last}'} matches no chunk of this version")
    return chunk_ids


def _resolve_positive(
    positive: object, known: set[int], by_uri: dict[str, list[tuple[int, int, int]]], where: str
) -> int:
    if isinstance(positive, int) and not isinstance(positive, bool):
        if positive not in known:
            raise UsageError(f"{where}: chunk id {positive} is not in this version")
        return positive
    if isinstance(positive, str) and ":" in positive:
        uri, _, line = positive.rpartition(":")
        if line.isdigit():
            for start, end, chunk_id in by_uri.get(uri, ()):
                if start <= int(line) <= end:
                    return chunk_id
            raise UsageError(f"{where}: {positive} matches no chunk of this version")
    raise UsageError(f"{where}: positive {positive!r} is neither a chunk id nor 'path:line'")
