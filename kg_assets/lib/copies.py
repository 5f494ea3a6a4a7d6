"""Copies of one file kept side by side (`v3/` beside `v4/`, `compat/`, `legacy/`, a vendored copy, a generated
`.d.ts` beside its source): found at build time by name and content, recorded in the catalog (`file_copies`), so
search can answer with the copy a question points to, else the canonical one, instead of filling its top k with
near-identical chunks of every copy.

Two files are copies when they share a file name (a `.d.ts` declaration file matching its `.ts`/`.js` source) and
either their contents are nearly one (line Jaccard at least `SAME_LINES`), or their paths differ by a version or an
old-copy directory (`v3/` and `v4/`, `legacy/`, `compat/`, `vendor/`, ...) and their contents are alike
(`RELATED`: the larger of the share of the smaller file's lines the other has and the Jaccard similarity of their
identifiers), or one declares what the other defines (`MIN_DECLARED_SHARE` of a `.d.ts` file's identifiers occur in
the source). Copies group transitively. The canonical copy of a group is the one not under an old-copy directory,
not a declaration file, with the highest version in its path (`v4` over `v3`, `2.1` over `2.0`), then the shortest
path. Each copy records the path words that tell it apart from the others (`v3`, `legacy`), which a question may use
to point to it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import duckdb

from kg_assets.lib import catalog
from kg_assets.lib.lexical import code_tokens

if TYPE_CHECKING:
    import pyarrow as pa

# Measured on packaging 21.3 (setuptools' vendored copy) beside 26.4, the tests' two-version tree: per module
# `RELATED` 0.35-0.68 (one of ten, rewritten, 0.22); on the benchmark repositories' same-named files that are not
# copies, at most 0.33 (`request.rb` of rack's two layers) where the paths differ by no version, and platform
# variants (libuv's `unix/dl.c`, `win/dl.c`) 0.6-0.8, which is why a plain pair needs nearly identical lines.
SAME_LINES = 0.8
RELATED = 0.3
MIN_DECLARED_SHARE = 0.8
MIN_LINES = 5  # smaller files (a re-export, a stub) say too little to call them copies
MAX_SAME_NAME = 64  # files compared pairwise per name; more (`__init__.py`, `index.ts` in a monorepo) are not copies
OLD_COPY_DIRS = frozenset({"legacy", "compat", "deprecated", "old", "obsolete", "backup", "vendor", "vendored"})
COLUMNS = (
    "uri",
    "canonical",  # the group's canonical copy (itself for the canonical one)
    "distinct_words",  # path tokens no other copy of the group has
)

_DECLARATION = re.compile(r"\.d\.[cm]?ts$")
_SOURCE_EXT = re.compile(r"\.[cm]?[jt]sx?$")
_VERSION = re.compile(r"^v?(\d+(?:[._]\d+)*)$", re.IGNORECASE)
_IDENT = re.compile(r"[A-Za-z_$][\w$]{2,}")


def _name_key(uri: str) -> str:
    """What two copies' file names have in common: the name, with a declaration's `.d.ts` as its source's stem."""
    name = uri.rsplit("/", 1)[-1]
    if _DECLARATION.search(name):
        return _DECLARATION.sub("", name) + ".<js>"
    return _SOURCE_EXT.sub(".<js>", name)


@functools.lru_cache(maxsize=4096)
def _lines(text: str) -> frozenset[str]:
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


def _identifiers(text: str) -> set[str]:
    return set(_IDENT.findall(text))


def are_copies(a_uri: str, a_text: str, b_uri: str, b_text: str) -> bool:
    """Whether two same-named files are copies of one (see the module's docstring)."""
    a_decl, b_decl = bool(_DECLARATION.search(a_uri)), bool(_DECLARATION.search(b_uri))
    if a_decl != b_decl:
        declared, source = (a_text, b_text) if a_decl else (b_text, a_text)
        names = _identifiers(declared)
        return bool(names) and len(names & _identifiers(source)) / len(names) >= MIN_DECLARED_SHARE
    a, b = _lines(a_text), _lines(b_text)
    if not a or not b:
        return False
    if len(a & b) / len(a | b) >= SAME_LINES:
        return True
    if not (_copy_dirs(a_uri) ^ _copy_dirs(b_uri)):
        return False
    a_ids, b_ids = _identifiers(a_text), _identifiers(b_text)
    related = max(len(a & b) / min(len(a), len(b)), len(a_ids & b_ids) / max(len(a_ids | b_ids), 1))
    return related >= RELATED


def _copy_dirs(uri: str) -> set[str]:
    """The directories of a path that name a version or an old copy."""
    return {p.lower() for p in uri.split("/")[:-1] if p.lower() in OLD_COPY_DIRS or _VERSION.match(p)}


def _rank_key(uri: str) -> tuple:
    """Sort key putting a group's canonical copy first."""
    parts = uri.split("/")
    old = any(p.lower() in OLD_COPY_DIRS for p in parts[:-1])
    versions = [tuple(int(n) for n in re.split(r"[._]", m.group(1))) for p in parts[:-1] if (m := _VERSION.match(p))]
    newest = max(versions, default=())
    return (old, bool(_DECLARATION.search(uri)), tuple(-n for n in newest), len(parts), len(uri), uri)


def find_copies(files: Mapping[str, str]) -> pa.Table:
    """Rows of `COLUMNS` for every file that has a copy (`files`: repo-relative path -> text)."""
    by_name: dict[str, list[str]] = {}
    for uri, text in files.items():
        if len(_lines(text)) >= MIN_LINES:
            by_name.setdefault(_name_key(uri), []).append(uri)
    parent: dict[str, str] = {}

    def find(uri: str) -> str:
        while parent.get(uri, uri) != uri:
            uri = parent[uri]
        return uri

    for uris in by_name.values():
        if len(uris) > MAX_SAME_NAME:
            continue
        for i, a in enumerate(uris):
            for b in uris[i + 1 :]:
                if are_copies(a, files[a], b, files[b]):
                    parent.setdefault(a, a)
                    parent.setdefault(b, b)
                    parent[find(a)] = find(b)
    groups: dict[str, list[str]] = {}
    for uri in parent:
        groups.setdefault(find(uri), []).append(uri)
    rows: dict[str, list] = {name: [] for name in COLUMNS}
    for members in groups.values():
        members.sort(key=_rank_key)
        canonical = members[0]
        words = {uri: set(code_tokens(uri.rsplit("/", 1)[0].replace("/", " "))) for uri in members}
        for uri in members:
            others = set().union(*(words[u] for u in members if u != uri))
            rows["uri"].append(uri)
            rows["canonical"].append(canonical)
            rows["distinct_words"].append(sorted(words[uri] - others))
    import pyarrow as pa  # here: only a build finds copies, and a reader (a server) need not load pyarrow

    schema = pa.schema([("uri", pa.string()), ("canonical", pa.string()), ("distinct_words", pa.list_(pa.string()))])
    return pa.table(rows, schema=schema)


class FileCopies:
    """A version's `file_copies`, for search: which copy of a file a question means."""

    def __init__(self, rows: list[tuple[str, str, list[str]]]) -> None:
        self._group: dict[str, str] = {}
        self._members: dict[str, list[tuple[str, frozenset[str]]]] = {}
        for uri, canonical, words in rows:
            self._group[uri] = canonical
            self._members.setdefault(canonical, []).append((uri, frozenset(words)))

    def __len__(self) -> int:
        return len(self._group)

    @classmethod
    def from_catalog(cls, con: duckdb.DuckDBPyConnection) -> FileCopies:
        """The catalog's copies (none for a version built before they were recorded)."""
        if "file_copies" not in catalog.table_names(con):
            return cls([])
        return cls(con.execute("SELECT uri, canonical, distinct_words FROM file_copies").fetchall())

    def preferred(self, uri: str, words: set[str]) -> str:
        """The copy of `uri`'s file a question with these (lexical) words means: the one whose distinguishing path
        words it uses most, else the canonical one; `uri` itself when the file has no copy."""
        canonical = self._group.get(uri)
        if canonical is None:
            return uri
        best, used = canonical, 0
        for member, distinct in self._members[canonical]:
            if len(distinct & words) > used:
                best, used = member, len(distinct & words)
        return best
