"""Copies of one file kept side by side (`v3/` beside `v4/`, `compat/`, `legacy/`, a vendored copy, a generated
`.d.ts` beside its source): found at build time by name and content, recorded in the catalog (`file_copies`), so
search can answer with the copy a question points to, else the canonical one, instead of filling its top k with
near-identical chunks of every copy.

Two files are copies when they share a file name (a `.d.ts` declaration file matching its `.ts`/`.js` source) and
their contents are similar: the Jaccard similarity of their sets of non-blank lines (whitespace trimmed) is at least
`MIN_LINE_SIMILARITY`, or, for a declaration file beside its source, `MIN_DECLARED_SHARE` of the declaration's
identifiers occur in the source. Copies group transitively. The canonical copy of a group is the one not under an
old-copy directory (`legacy`, `compat`, `deprecated`, ...), not a declaration file, with the highest version in its
path (`v4` over `v3`, `2.1` over `2.0`), then the shortest path. Each copy records the path words that tell it apart
from the others (`v3`, `legacy`), which a question may use to point to it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

import pyarrow as pa

from kg_assets.lib.lexical import code_tokens

# Measured on the two-version tree of the tests and the benchmark repositories: copies of one module across major
# versions keep 60-95% of their lines; unrelated files sharing a name (`index.ts`, `utils.go`) under 20%.
MIN_LINE_SIMILARITY = 0.5
MIN_DECLARED_SHARE = 0.8
MIN_LINES = 5  # smaller files (a re-export, a stub) say too little to call them copies
MAX_SAME_NAME = 64  # files compared pairwise per name; more (`__init__.py`, `index.ts` in a monorepo) are not copies
OLD_COPY_DIRS = frozenset({"legacy", "compat", "deprecated", "old", "obsolete", "backup", "vendor", "vendored"})
SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("canonical", pa.string()),  # the group's canonical copy (itself for the canonical one)
        ("similarity", pa.float32()),  # to the canonical copy (1 for itself)
        ("distinct_words", pa.list_(pa.string())),  # path tokens no other copy of the group has
    ]
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


def similarity(a_uri: str, a_text: str, b_uri: str, b_text: str) -> float:
    """How much two same-named files are one: line Jaccard, or for a declaration file beside a source the share of
    the declaration's identifiers the source has (scaled so `MIN_DECLARED_SHARE` meets `MIN_LINE_SIMILARITY`)."""
    a_decl, b_decl = bool(_DECLARATION.search(a_uri)), bool(_DECLARATION.search(b_uri))
    if a_decl != b_decl:
        declared, source = (a_text, b_text) if a_decl else (b_text, a_text)
        names = set(_IDENT.findall(declared))
        share = len(names & set(_IDENT.findall(source))) / len(names) if names else 0.0
        return share * MIN_LINE_SIMILARITY / MIN_DECLARED_SHARE if share >= MIN_DECLARED_SHARE else 0.0
    a, b = _lines(a_text), _lines(b_text)
    return len(a & b) / len(a | b) if a | b else 0.0


def _rank_key(uri: str) -> tuple:
    """Sort key putting a group's canonical copy first."""
    parts = uri.split("/")
    old = any(p.lower() in OLD_COPY_DIRS for p in parts[:-1])
    versions = [tuple(int(n) for n in re.split(r"[._]", m.group(1))) for p in parts[:-1] if (m := _VERSION.match(p))]
    newest = max(versions, default=())
    return (old, bool(_DECLARATION.search(uri)), tuple(-n for n in newest), len(parts), len(uri), uri)


def find_copies(files: Mapping[str, str]) -> pa.Table:
    """Rows of `SCHEMA` for every file that has a copy (`files`: repo-relative path -> text)."""
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
                if similarity(a, files[a], b, files[b]) >= MIN_LINE_SIMILARITY:
                    parent.setdefault(a, a)
                    parent.setdefault(b, b)
                    parent[find(a)] = find(b)
    groups: dict[str, list[str]] = {}
    for uri in parent:
        groups.setdefault(find(uri), []).append(uri)
    rows: dict[str, list] = {name: [] for name in SCHEMA.names}
    for members in groups.values():
        members.sort(key=_rank_key)
        canonical = members[0]
        words = {uri: set(code_tokens(uri.rsplit("/", 1)[0].replace("/", " "))) for uri in members}
        for uri in members:
            others = set().union(*(words[u] for u in members if u != uri))
            rows["uri"].append(uri)
            rows["canonical"].append(canonical)
            if uri == canonical:
                rows["similarity"].append(1.0)
            else:
                rows["similarity"].append(similarity(uri, files[uri], canonical, files[canonical]))
            rows["distinct_words"].append(sorted(words[uri] - others))
    return pa.table(rows, schema=SCHEMA)
