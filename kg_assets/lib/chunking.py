"""Repository files to chunks: definition-aligned for Python (its `ast`) and every language with a tree-sitter
grammar (`treesitter`), line windows for other text, stable ids.

Every chunk is a byte span `[start_byte, end_byte)` of one file; the spans of a file partition it (nothing is
dropped, nothing overlaps). Sizes are budgeted in the embedder's tokens, measured per line and summed, so a chunk
fits the embedder's window together with its path header. A chunk's `symbols` are the names it defines,
qualified by their enclosing definitions (`Router.handle`).

Longer than our 450-line guide: which files are indexed (git's list, default skips, globs) and how a file is cut
share the per-file contract above; the per-language parsing is in `treesitter` and `languages`.
"""

from __future__ import annotations

import ast
import errno
import fnmatch
import hashlib
import os
import re
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kg_assets.lib import gitsafe, treesitter
from kg_assets.lib.fsutil import open_beneath
from kg_assets.lib.treesitter import Definition

# Directory names never indexed (vendored, generated, environments, VCS).
SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "node_modules",
        "vendor",
        "third_party",
        "__pycache__",
        ".venv",
        "venv",
        ".tox",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        "build",
        "dist",
        "site-packages",
        ".eggs",
    }
)
MAX_FILE_BYTES = 1 << 20
# Files that are generated or pinned rather than written: lock files by name, minified code and source maps,
# generated code by suffix, and minified-looking files (mostly lines longer than `LONG_LINE_BYTES`).
LOCK_FILES = frozenset(
    {
        "package-lock.json",
        "npm-shrinkwrap.json",
        "yarn.lock",
        "pnpm-lock.yaml",
        "bun.lock",
        "Cargo.lock",
        "poetry.lock",
        "uv.lock",
        "Pipfile.lock",
        "pdm.lock",
        "go.sum",
        "composer.lock",
        "Gemfile.lock",
        "mix.lock",
        "Podfile.lock",
        "packages.lock.json",
        "gradle.lockfile",
        "flake.lock",
    }
)
MINIFIED_SUFFIXES = (".min.js", ".min.mjs", ".min.css", ".map")
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", ".pb.go", ".pb.cc", ".pb.h", ".g.dart", ".designer.cs")
LONG_LINE_BYTES = 1000
LANGUAGES = {
    ".py": "python",
    ".pyi": "python",
    ".md": "markdown",
    ".rst": "rst",
    ".txt": "text",
    ".toml": "toml",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".json": "json",
    ".cfg": "ini",
    ".ini": "ini",
    ".sh": "shell",
    ".bash": "shell",
    ".js": "javascript",
    ".jsx": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".ts": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".tsx": "tsx",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".c": "c",
    ".h": "c",
    ".cpp": "cpp",
    ".cc": "cpp",
    ".cxx": "cpp",
    ".hpp": "cpp",
    ".hh": "cpp",
    ".hxx": "cpp",
    ".cs": "csharp",
    ".rb": "ruby",
    ".rake": "ruby",
    ".php": "php",
    ".kt": "kotlin",
    ".kts": "kotlin",
    ".swift": "swift",
    ".scala": "scala",
    ".sc": "scala",
    ".lua": "lua",
    ".ex": "elixir",
    ".exs": "elixir",
    ".hs": "haskell",
    ".zig": "zig",
    ".sql": "sql",
    ".html": "html",
    ".css": "css",
}

TokenCounter = Callable[[Sequence[str]], list[int]]


@dataclass(frozen=True)
class Chunk:
    """One span of one file. Lines are 1-based and inclusive; bytes are 0-based, end exclusive."""

    chunk_id: int
    uri: str
    language: str
    start_line: int
    end_line: int
    start_byte: int
    end_byte: int
    text: str
    content_hash: str
    symbols: tuple[str, ...] = field(default=())


def chunk_id_for(uri: str, start_byte: int, end_byte: int) -> int:
    """Signed int64 from the first 8 bytes (little-endian) of BLAKE2b over `uri|start|end`."""
    digest = hashlib.blake2b(f"{uri}|{start_byte}|{end_byte}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def content_hash(data: bytes) -> str:
    """Hash of a chunk's text as stored (UTF-8, undecodable bytes replaced), so it can be re-checked from it."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def list_files(repo: Path) -> list[str]:
    """Repo-relative paths of candidate files outside vendored, generated and environment directories, sorted."""
    return [p for p in _candidates(repo) if _skipped_dir(p) is None]


def is_utf8_name(uri: str) -> bool:
    """False for a path whose bytes are not UTF-8 (listed with surrogate escapes)."""
    try:
        uri.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _candidates(repo: Path) -> list[str]:
    """Repo-relative paths of all files, sorted: `git ls-files` (honours .gitignore) or a walk that prunes
    `SKIP_DIRS`."""
    repo = Path(repo)
    paths = _git_files(repo)
    if paths is None:
        paths = list(_walk(repo, _gitignore_patterns(repo)))
    return sorted(p for p in paths if (repo / p).is_file() and not (repo / p).is_symlink())


def _git_files(repo: Path) -> list[str] | None:
    """`git ls-files` of the repository (tracked and untracked, .gitignore honoured), or None when git cannot
    list it: not a work tree, or a directory that an enclosing repository ignores (a checkout under its build/),
    where git would list nothing although the files are the user's content. Git runs with the repository's own
    configuration neutralized (`gitsafe.run_git`): listing an untrusted repository runs nothing of it."""
    try:
        if gitsafe.run_git(repo, "check-ignore", "-q", ".").returncode == 0:
            return None
        listed = gitsafe.run_git(repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listed.returncode != 0:
        return None
    return [p for p in listed.stdout.decode("utf-8", "surrogateescape").split("\0") if p]


def _skipped_dir(uri: str) -> str | None:
    return next((part for part in Path(uri).parts[:-1] if part in SKIP_DIRS), None)


def default_skip_reason(uri: str) -> str | None:
    """Why a path is not indexed by default (vendored, generated, minified or a lock file), or None."""
    if (directory := _skipped_dir(uri)) is not None:
        return f"vendored, build or environment directory ({directory}/)"
    name = uri.rsplit("/", 1)[-1]
    if name in LOCK_FILES:
        return "lock file"
    if name.endswith(MINIFIED_SUFFIXES):
        return "minified code or source map"
    if name.endswith(GENERATED_SUFFIXES):
        return "generated code"
    return None


def looks_minified(data: bytes) -> bool:
    """Most of the bytes are in lines longer than `LONG_LINE_BYTES`, as in minified or generated bundles."""
    long_bytes = sum(len(line) for line in data.split(b"\n") if len(line) > LONG_LINE_BYTES)
    return long_bytes * 2 > len(data)


def matches(uri: str, globs: Sequence[str]) -> bool:
    """Whether a repo-relative path matches any glob (`fnmatch`: `*` also matches `/`; a glob without `/` also
    matches the file name, so `*.min.js` and `vendor/*` both work)."""
    name = uri.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(uri, g) or ("/" not in g and fnmatch.fnmatchcase(name, g)) for g in globs)


def _gitignore_patterns(repo: Path) -> list[str]:
    try:
        lines = (read_file(repo, ".gitignore") or b"").decode("utf-8", errors="replace").splitlines()
    except OSError:
        return []
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith(("#", "!"))]


def _walk(repo: Path, ignore: list[str]) -> Iterator[str]:
    def ignored(rel: str) -> bool:
        name = rel.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(rel, p.lstrip("/")) for p in ignore)

    for dirpath, dirnames, filenames in os.walk(repo):
        rel_dir = os.path.relpath(dirpath, repo)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = sorted(
            d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".") and not ignored(rel_dir + d)
        )
        for name in filenames:
            if not ignored(rel_dir + name):
                yield rel_dir + name


def read_file(repo: Path, uri: str) -> bytes | None:
    """The bytes of the repository file `uri`, None when it is larger than `MAX_FILE_BYTES`. The file must be a
    regular file inside `repo` (no symlink on its path, whatever git lists; see `fsutil.open_beneath`): OSError
    otherwise."""
    with open_beneath(repo, uri) as fh:
        if os.fstat(fh.fileno()).st_size > MAX_FILE_BYTES:
            return None
        data = fh.read(MAX_FILE_BYTES + 1)
    return None if len(data) > MAX_FILE_BYTES else data


def _unread_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symlink on its path (never followed, it could leave the repository)"
    return f"unreadable ({exc.strerror or type(exc).__name__})"


def is_text(data: bytes) -> bool:
    """Heuristic used by git and most indexers: no NUL byte in the first 8 KiB."""
    return b"\0" not in data[:8192]


@dataclass(frozen=True)
class _Segment:
    start: int  # first line index (0-based)
    end: int  # one past the last line index
    symbols: tuple[str, ...] = ()
    head: int | None = None  # the line defining `symbols` when it is not `start` (a doc comment comes first)


def chunk_file(
    uri: str, data: bytes, count_tokens: TokenCounter, budget: int, *, header_tokens: int = 0
) -> list[Chunk]:
    """Split one file's bytes into chunks of at most `budget` tokens (each line counted once)."""
    if not data.strip():
        return []
    lines = data.splitlines(keepends=True)
    texts = [line.decode("utf-8", errors="replace") for line in lines]
    per_line = count_tokens(texts)
    limit = max(budget - header_tokens, 8)
    language = language_of(uri, data)
    found = _python_definitions(data) if language == "python" else treesitter.definitions(data, language)
    segments = _segments_of(found or [], 0, len(lines), "")
    pieces = _merge(_fit(segments, per_line, texts, limit), per_line, limit)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    chunks = []
    for seg in pieces:
        start_byte, end_byte = offsets[seg.start], offsets[seg.end]
        text = data[start_byte:end_byte].decode("utf-8", errors="replace")
        chunks.append(
            Chunk(
                chunk_id=chunk_id_for(uri, start_byte, end_byte),
                uri=uri,
                language=language,
                start_line=seg.start + 1,
                end_line=seg.end,
                start_byte=start_byte,
                end_byte=end_byte,
                text=text,
                content_hash=content_hash(text.encode("utf-8")),
                symbols=seg.symbols,
            )
        )
    return chunks


# A `.h` file is C++ when a line starts with what only C++ has (a class, namespace or template, an access label).
_CPP_HEADER = re.compile(rb"^[ \t]*(?:(?:class|namespace|template)\b|(?:public|private|protected)[ \t]*:)", re.M)


def language_of(uri: str, data: bytes = b"") -> str:
    """The language a file is chunked and searched as: by its extension ('text' when unknown), and for a `.h`
    file by its first 64 KiB of content (`data`), C or C++."""
    language = LANGUAGES.get(Path(uri).suffix.lower(), "text")
    if language == "c" and uri.lower().endswith(".h") and _CPP_HEADER.search(data[:65536]):
        return "cpp"
    return language


def _python_definitions(data: bytes) -> list[Definition] | None:
    """Top-level definitions of a Python file through `ast` (None if it does not parse)."""
    try:
        tree = ast.parse(data)
    except (SyntaxError, ValueError):
        return None
    return _python_body(tree.body)


def _python_body(body: list[ast.stmt]) -> list[Definition]:
    found = []
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1
            members = _python_body(node.body) if isinstance(node, ast.ClassDef) else None
            found.append(Definition(start, node.end_lineno or node.lineno, node.name, members, node.lineno - 1))
    return found


def _segments_of(found: Sequence[Definition], start: int, end: int, prefix: str) -> list[_Segment]:
    """Partition lines [start, end) into segments: one per definition, one per run of other code."""
    segments: list[_Segment] = []
    cursor = start
    for definition in found:
        node_start, node_end = max(definition.start, cursor), min(definition.end, end)
        if node_end <= node_start:
            continue
        if node_start > cursor:
            segments.append(_Segment(cursor, node_start))
        name = f"{prefix}{definition.name}" if definition.name else ""
        own = (name,) if name else ()
        if definition.members is not None:
            inner = _segments_of(definition.members, node_start, node_end, f"{name}." if name else prefix)
            inner[0] = _Segment(inner[0].start, inner[0].end, own + inner[0].symbols)
            symbols = tuple(s for seg in inner for s in seg.symbols)
            segments.append(_ClassSegment(node_start, node_end, symbols, parts=tuple(inner)))
        else:
            head = definition.head if definition.head is not None and definition.head > node_start else None
            segments.append(_Segment(node_start, node_end, own, head))
        cursor = node_end
    if cursor < end:
        segments.append(_Segment(cursor, end))
    return segments


@dataclass(frozen=True)
class _ClassSegment(_Segment):
    """A class, with the segments of its body for when the whole class does not fit."""

    parts: tuple[_Segment, ...] = ()


def _fit(segments: list[_Segment], per_line: list[int], texts: list[str], limit: int) -> list[_Segment]:
    """Replace every segment larger than `limit` by smaller ones: a class by its members, else at blank lines."""
    fitted: list[_Segment] = []
    for seg in segments:
        if sum(per_line[seg.start : seg.end]) <= limit:
            fitted.append(_Segment(seg.start, seg.end, seg.symbols, seg.head))
        elif isinstance(seg, _ClassSegment) and len(seg.parts) > 1:
            fitted.extend(_fit(list(seg.parts), per_line, texts, limit))
        else:
            fitted.extend(_split_lines(seg, per_line, texts, limit))
    return fitted


# Lines as good as blank to cut after: the empty lines of a comment paragraph (` *`, `//`) and a comment's end, so
# an oversized doc comment splits between paragraphs and a definition's body starts a piece.
_CUT_AFTER = frozenset({"", "*", "*/", "//", "///", "#", "--"})


def _split_lines(seg: _Segment, per_line: list[int], texts: list[str], limit: int) -> list[_Segment]:
    """Greedy pieces of at most `limit` tokens, cut preferably after a blank line (`_CUT_AFTER`), else at any
    line."""
    pieces: list[_Segment] = []
    start = seg.start
    while start < seg.end:
        total, stop, last_blank = 0, start, None
        while stop < seg.end and (total + per_line[stop] <= limit or stop == start):
            total += per_line[stop]
            if texts[stop].strip() in _CUT_AFTER:
                last_blank = stop + 1
            stop += 1
        if stop < seg.end and last_blank and last_blank > start:
            stop = last_blank
        head = seg.start if seg.head is None else seg.head  # the piece holding the definition's own line
        pieces.append(_Segment(start, stop, seg.symbols if start <= head < stop else ()))
        start = stop
    return pieces


def _merge(segments: list[_Segment], per_line: list[int], limit: int) -> list[_Segment]:
    """Greedily join neighbouring segments while they fit, so small definitions and glue code share a chunk."""
    merged: list[_Segment] = []
    size = 0
    for seg in segments:
        seg_size = sum(per_line[seg.start : seg.end])
        if merged and size + seg_size <= limit:
            last = merged[-1]
            merged[-1] = _Segment(last.start, seg.end, last.symbols + seg.symbols)
            size += seg_size
        else:
            merged.append(seg)
            size = seg_size
    return merged


@dataclass
class RepoChunks:
    """Chunks of a repository plus what was skipped and why."""

    chunks: list[Chunk]
    files: dict[str, str]  # uri -> language, for every file that produced chunks
    skipped: dict[str, str]  # uri -> reason
    # Languages with a tree-sitter grammar whose wheel did not load: their files were cut into line windows.
    fallback_languages: set[str] = field(default_factory=set)


def chunk_repository(
    repo: Path,
    count_tokens: TokenCounter,
    budget: int,
    *,
    header: Callable[[str], str] = lambda uri: "",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> RepoChunks:
    """Chunk every indexable file of `repo` (sorted by path, so output order is stable).

    A path matching an `exclude` glob is skipped; with `include` globs only matching paths are indexed, and they
    are indexed even where the default rules (`default_skip_reason`, `looks_minified`) would skip them. Binary,
    empty and oversized files are always skipped.
    """
    repo = Path(repo)
    result = RepoChunks([], {}, {})
    for uri in _candidates(repo):
        if not is_utf8_name(uri):  # ids, the catalog and every output are UTF-8; shown with U+FFFD
            result.skipped[os.fsencode(uri).decode("utf-8", "replace")] = "file name is not valid UTF-8"
            continue
        included = matches(uri, include)
        if matches(uri, exclude):
            result.skipped[uri] = "excluded (--exclude)"
            continue
        if include and not included:
            result.skipped[uri] = "not included (--include)"
            continue
        if not included and (reason := default_skip_reason(uri)) is not None:
            result.skipped[uri] = reason
            continue
        try:
            data = read_file(repo, uri)
        except OSError as exc:  # one unreadable file must not stop the build of the rest
            result.skipped[uri] = _unread_reason(exc)
            continue
        if data is None:
            result.skipped[uri] = f"larger than {MAX_FILE_BYTES} bytes"
            continue
        if not is_text(data):
            result.skipped[uri] = "binary"
            continue
        if not included and looks_minified(data):
            result.skipped[uri] = f"long lines (minified or generated; most bytes in lines over {LONG_LINE_BYTES})"
            continue
        head = header(uri)
        head_tokens = count_tokens([head])[0] if head else 0
        chunks = chunk_file(uri, data, count_tokens, budget, header_tokens=head_tokens)
        if not chunks:
            result.skipped[uri] = "empty"
            continue
        result.chunks.extend(chunks)
        result.files[uri] = language = chunks[0].language
        if treesitter.has_grammar(language) and not treesitter.grammar_available(language):
            result.fallback_languages.add(language)
    return result


def skipped_summary(skipped: dict[str, str], examples: int = 5) -> dict[str, dict]:
    """Skipped files by reason: how many, and the first few paths (sorted) as examples."""
    summary: dict[str, dict] = {}
    for uri in sorted(skipped):
        entry = summary.setdefault(skipped[uri], {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < examples:
            entry["examples"].append(uri)
    return summary
