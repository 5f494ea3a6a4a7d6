"""The symbol channel: which chunk defines or refers to a name, from what a version knows about definitions.

Definitions come from the chunker (`chunks.symbols`: the names each chunk defines, qualified within its file as
`Class.method`; every language with a grammar supplies them) qualified further by the file's module (`modules`,
else the path); references from SCIP occurrences that are not definitions and, in files no SCIP indexer covered,
from tree-sitter (`ts_references`: names in call, type and import positions) tied to the definitions of the same
version by name and scope (`tie_references`). A query term matches a name when its
dotted parts are a suffix of the name's qualified parts (`merge`, `Session.merge`, `sessions.Session.merge`),
exactly or ignoring case, or its qualifiers appear in order among the name's (`requests.get` for
`src.requests.api.get`); definitions rank before references.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import duckdb
import numpy as np

from kg_assets.lib import catalog

# Scores of one matching entry (the channel ranks by them; fusion only sees the ranks).
EXACT_DEFINITION = 1.0
FOLDED_DEFINITION = 0.6  # same name, other case (`option` for `Option`): below an exact definition by a margin
# the other channels cannot close when both exist (0.9 let click's `option` decorator outrank `class Option`)
REFERENCE = 0.3
MAX_AMBIGUOUS = 3  # a tree-sitter reference to a name defined more often than this, none in its file or folder,
# is left out: which one it means is a guess
QUALIFIED_BONUS = 0.1  # per dotted part matched beyond the last: `Session.merge` over a bare `merge` match

_IDENT = r"[A-Za-z_$][\w$]*"
QUALIFIED_NAME = re.compile(rf"{_IDENT}(?:(?:\.|::|#|->){_IDENT})*")  # `a.b`, `A::b`, `A#b`, `a->b`
_SEPARATORS = re.compile(r"::|#|->")
_SCIP_NAME = re.compile(rf"`([^`]+)`|({_IDENT})")


@dataclass(frozen=True)
class SymbolEntry:
    chunk_id: int
    name: str  # qualified, original case: `flask.app.Flask.route`
    definition: bool


@dataclass(frozen=True)
class SymbolMatch:
    chunk_id: int
    name: str
    definition: bool
    score: float


def query_terms(text: str) -> list[list[str]]:
    """The dotted names a text mentions, each as its parts: `Session.merge()` -> [["Session", "merge"]]."""
    return [_SEPARATORS.sub(".", m).split(".") for m in QUALIFIED_NAME.findall(text)]


@functools.lru_cache(maxsize=1 << 16)
def scip_symbol_name(symbol: str) -> str | None:
    """The in-module qualified name of a SCIP symbol (`... flask.app/Flask#route().` -> `Flask.route`); None for
    locals, parameters and symbols without a name; a constructor is named by its class."""
    if symbol.startswith("local ") or ").(" in symbol:
        return None
    descriptor = symbol.split(" ", 4)[-1]
    cut, quoted = 0, False
    for i, char in enumerate(descriptor):  # past the last namespace separator `/` outside `quoted names`
        if char == "`":
            quoted = not quoted
        elif char == "/" and not quoted:
            cut = i + 1
    names = [a or b for a, b in _SCIP_NAME.findall(descriptor[cut:])]
    if names[-1:] == ["<constructor>"]:  # scip-typescript's `new X()` refers to X's constructor: count it as X
        names.pop()
    return ".".join(names) or None


class SymbolTable:
    """Definitions and references of a version's chunks, looked up by their last name part (lowercase)."""

    def __init__(self, entries: Iterable[SymbolEntry]) -> None:
        self._by_name: dict[str, list[SymbolEntry]] = {}
        for entry in entries:
            self._by_name.setdefault(entry.name.rsplit(".", 1)[-1].lower(), []).append(entry)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_name.values())

    @classmethod
    def from_catalog(cls, con: duckdb.DuckDBPyConnection) -> SymbolTable:
        """Read definitions (chunk symbols qualified by module) and SCIP references from an open catalog."""
        tables = catalog.table_names(con)
        modules = (
            dict(con.execute("SELECT repo_path, module_name FROM modules").fetchall()) if "modules" in tables else {}
        )
        rows = con.execute("SELECT chunk_id, uri, symbols FROM chunks WHERE len(symbols) > 0").fetchall()
        defined = [
            (chunk_id, uri, f"{module_prefix(uri, modules)}{name}") for chunk_id, uri, names in rows for name in names
        ]
        entries = [SymbolEntry(chunk_id, name, True) for chunk_id, _, name in defined]
        if "ts_references" in tables:
            refs = con.execute(
                "SELECT DISTINCT r.chunk_id, c.uri, r.name FROM ts_references r JOIN chunks c USING (chunk_id)"
            ).fetchall()
            entries += tie_references(defined, refs)
        if "scip_occurrences" in tables:
            refs = con.execute(
                """SELECT DISTINCT c.chunk_id, c.uri, o.symbol FROM scip_occurrences o
                JOIN chunks c ON c.uri = o.path AND o.start_line + 1 BETWEEN c.start_line AND c.end_line
                WHERE NOT o.is_definition AND NOT starts_with(o.symbol, 'local ')"""
            ).fetchall()
            for chunk_id, _uri, symbol in refs:
                name = scip_symbol_name(symbol)
                if name:
                    entries.append(SymbolEntry(chunk_id, name, False))
        return cls(entries)

    def lookup(self, parts: Sequence[str]) -> list[SymbolMatch]:
        """Entries named `parts[-1]` whose qualifiers include `parts[:-1]` in order, scored: definitions before
        references, exact case before other case, a qualified match (`Session.merge`) above a bare one, and a
        contiguous one above a match that skips levels (`requests.get` for `requests.api.get`)."""
        if not parts:
            return []
        folded = [p.lower() for p in parts]
        found = []
        for entry in self._by_name.get(folded[-1], ()):
            name_parts = entry.name.split(".")
            positions = _in_order([p.lower() for p in name_parts[:-1]], folded[:-1])
            if positions is None:
                continue
            matched = [name_parts[i] for i in positions] + [name_parts[-1]]
            exact = matched == list(parts)
            score = (EXACT_DEFINITION if exact else FOLDED_DEFINITION) if entry.definition else REFERENCE
            contiguous = positions == list(range(len(name_parts) - len(parts), len(name_parts) - 1))
            score += (QUALIFIED_BONUS if contiguous else QUALIFIED_BONUS / 2) * (len(parts) - 1)
            found.append(SymbolMatch(entry.chunk_id, entry.name, entry.definition, score))
        return found

    def search(
        self, terms: Sequence[Sequence[str]], k: int, *, references: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, chunk ids) of the best k chunks for a query's terms: each chunk scores its best match per term,
        summed over terms; ties go to the shorter (less nested) name, then the smaller chunk id. Without
        `references`, only definitions match."""
        best: dict[int, tuple[float, int]] = {}
        for parts in terms:
            per_chunk: dict[int, tuple[float, int]] = {}
            for match in self.lookup(parts):
                if not (references or match.definition):
                    continue
                depth = match.name.count(".")
                old = per_chunk.get(match.chunk_id)
                if old is None or (match.score, -depth) > (old[0], -old[1]):
                    per_chunk[match.chunk_id] = (match.score, depth)
            for chunk_id, (score, depth) in per_chunk.items():
                total, old_depth = best.get(chunk_id, (0.0, depth))
                best[chunk_id] = (total + score, min(depth, old_depth))
        ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[1][1], item[0]))[:k]
        scores = np.array([s for _, (s, _) in ranked], dtype=np.float32)
        return scores, np.array([chunk_id for chunk_id, _ in ranked], dtype=np.int64)


def tie_references(
    defined: Iterable[tuple[int, str, str]], references: Iterable[tuple[int, str, str]]
) -> list[SymbolEntry]:
    """Reference entries for names found by tree-sitter in reference positions (`treesitter.references`), each
    tied to the definitions of that name in the same version, by scope as far as paths tell: those in the
    reference's own file, else in its folder, else all of them when at most `MAX_AMBIGUOUS`; a name defined nowhere
    (a library's, a local variable's) is no reference, nor is a definition's mention of itself.
    `defined`: (chunk id, uri, qualified name); `references`: (chunk id, uri, name as written)."""
    by_name: dict[str, list[tuple[int, str, str]]] = {}
    for chunk_id, uri, name in defined:
        by_name.setdefault(name.rsplit(".", 1)[-1], []).append((chunk_id, uri, name))
    entries = []
    for chunk_id, uri, written in references:
        targets = by_name.get(_SEPARATORS.sub(".", written).rsplit(".", 1)[-1], [])
        folder = uri.rsplit("/", 1)[0] if "/" in uri else ""
        scoped = [t for t in targets if t[1] == uri] or [
            t for t in targets if (t[1].rsplit("/", 1)[0] if "/" in t[1] else "") == folder
        ]
        if not scoped and len(targets) <= MAX_AMBIGUOUS:
            scoped = targets
        entries += [SymbolEntry(chunk_id, name, False) for target_chunk, _, name in scoped if target_chunk != chunk_id]
    return entries


def _in_order(qualifiers: list[str], wanted: list[str]) -> list[int] | None:
    """Positions in `qualifiers` of each of `wanted` in order, as close to the end as possible; None if absent."""
    positions: list[int] = []
    end = len(qualifiers)
    for part in reversed(wanted):
        end = next((i for i in range(end - 1, -1, -1) if qualifiers[i] == part), -1)
        if end < 0:
            return None
        positions.append(end)
    return positions[::-1]


def module_prefix(uri: str, modules: dict[str, str | None]) -> str:
    """`pkg.mod.` for a Python module, else the path without its extension as dotted parts (`src.router.`)."""
    module = modules.get(uri)
    if not module:
        stem = uri.rsplit(".", 1)[0] if "." in uri.rsplit("/", 1)[-1] else uri
        module = stem.replace("/", ".")
    return f"{module}."
