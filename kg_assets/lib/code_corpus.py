"""The static embedder's training corpus: source code from registry packages named in a committed manifest.

The manifest (`kg_assets/models/corpus-manifest.json`) pins each package by version and by the sha256 of the file
the registry serves (sdist, npm tarball, .deb). `check_manifest` refuses one that names a repository any
benchmark uses (read from the benchmarks' own `repos.json` files) or a well-known web framework or HTTP client
(which held-out question sets like to use); `fetch_sources` downloads, verifies and extracts; `corpus_chunks`
cuts the trees with the build's chunker and keeps a fixed, seeded sample of each package's chunks.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kg_assets.lib import registry_packages
from kg_assets.lib.embedding import Embedder
from kg_assets.lib.errors import UsageError, ValidationError

if TYPE_CHECKING:
    import pyarrow as pa

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MANIFEST = PROJECT_ROOT / "kg_assets" / "models" / "corpus-manifest.json"
# Every benchmark's repository list (ours, the public pack, and any other pack beside it); a corpus naming any of
# their repositories would leak the test into training. A listed file that is missing is an error, not a pass.
SHARED_BENCHMARKS = PROJECT_ROOT.parent / "shared" / "benchmarks"
BENCHMARK_REPO_FILES = tuple(
    sorted(
        {
            PROJECT_ROOT / "benchmarks" / "quality" / "repos.json",
            SHARED_BENCHMARKS / "semble-public" / "repos.json",
            *SHARED_BENCHMARKS.glob("*/repos.json"),
        }
    )
)
# Kept out of the corpus as well: the projects public code-search question sets are most often written about.
WEB_FRAMEWORKS_AND_HTTP_CLIENTS = (
    "django", "fastapi", "starlette", "aiohttp", "urllib3", "tornado", "sanic", "bottle", "pyramid", "falcon",
    "koa", "axios", "got", "superagent", "undici", "node-fetch", "nestjs", "hapi", "fastify", "next",
    "gin", "echo", "fiber", "spring", "okhttp", "retrofit", "ktor", "rails", "faraday", "httparty",
    "laravel", "symfony", "guzzle", "slim", "actix", "rocket", "warp", "hyper", "reqwest", "phoenix",
)  # fmt: skip
CORPUS_COLUMNS = ("source", "language", "uri", "chunk_id", "text", "symbols")


@dataclass(frozen=True)
class CorpusSource:
    """One pinned registry package and the part of it that is source code."""

    name: str
    language: str  # the main language, for the manifest's reader; chunks carry their own
    source: str  # one of registry_packages.SOURCES
    package: str
    version: str
    sha256: str  # of the downloaded file (sdist, .tgz, .deb)
    subdir: str = ""  # the source root inside the package (required for a .deb)


@dataclass(frozen=True)
class CorpusManifest:
    sources: tuple[CorpusSource, ...]
    max_chunks_per_source: int
    digest: str  # sha256 of the canonical JSON of the above: what a trained model records

    @property
    def languages(self) -> list[str]:
        return sorted({s.language for s in self.sources})


def load_manifest(path: Path = MANIFEST) -> CorpusManifest:
    """The manifest at `path`, each entry checked for the fields fetching needs (UsageError otherwise)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        sources = tuple(CorpusSource(**entry) for entry in raw["sources"])
        cap = int(raw["max_chunks_per_source"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"corpus manifest {path}: {exc}") from None
    for src in sources:
        if src.source not in registry_packages.SOURCES or not re.fullmatch(r"[0-9a-f]{64}", src.sha256):
            raise UsageError(f"corpus manifest {path}: {src.name}: unknown source or no sha256")
        if src.source == "deb" and not src.subdir:
            raise UsageError(f"corpus manifest {path}: {src.name}: a deb source needs a subdir")
    canonical = json.dumps([asdict(s) for s in sources] + [cap], sort_keys=True)
    return CorpusManifest(sources, cap, hashlib.sha256(canonical.encode()).hexdigest())


def _tokens(name: str) -> list[str]:
    """A package or repository name as comparable words: lower case, split at punctuation, a `lib` prefix and a
    version suffix dropped (`libcommons-lang3-java` -> commons, lang, java)."""
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower().removesuffix(".git")) if w]
    return [re.sub(r"(?<=[a-z]{3})\d+$", "", w.removeprefix("lib") if len(w) > 5 else w) for w in words]


def _names(src: CorpusSource) -> list[list[str]]:
    return [_tokens(src.name), _tokens(src.package)]


def _contains(words: list[str], part: list[str]) -> bool:
    return bool(part) and any(words[i : i + len(part)] == part for i in range(len(words) - len(part) + 1))


def benchmark_repositories(files: Iterable[Path] = BENCHMARK_REPO_FILES) -> dict[str, str]:
    """Every repository a benchmark uses, as {name: the file listing it}: the entries' names, packages and URL
    basenames. A file that cannot be read is an error: the corpus could not be checked against it."""
    found: dict[str, str] = {}
    for path in files:
        try:
            entries = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot check the corpus against benchmark list {path}: {exc}") from None
        for entry in entries:
            for key in ("name", "package", "url"):
                if entry.get(key):
                    found.setdefault(str(entry[key]).rstrip("/").rsplit("/", 1)[-1].removesuffix(".git"), str(path))
    return found


def refused_sources(manifest: CorpusManifest, benchmarks: dict[str, str]) -> list[str]:
    """Why each refused source is refused ('<source>: <repository> (<where listed>)'); empty when none is."""
    banned = {name: where for name, where in benchmarks.items()}
    banned.update({name: "web frameworks and HTTP clients" for name in WEB_FRAMEWORKS_AND_HTTP_CLIENTS})
    refused = []
    for src in manifest.sources:
        hits = [f"{b} ({where})" for b, where in banned.items() if any(_contains(n, _tokens(b)) for n in _names(src))]
        refused.extend(f"{src.name}: {hit}" for hit in hits[:1])
    return refused


def check_manifest(manifest: CorpusManifest, benchmark_files: Iterable[Path] = BENCHMARK_REPO_FILES) -> None:
    """Raise UsageError (one line) when the manifest names a benchmark's repository or a refused project."""
    refused = refused_sources(manifest, benchmark_repositories(benchmark_files))
    if refused:
        raise UsageError(f"corpus manifest refused, it names held-out or benchmark code: {'; '.join(refused)}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_source(src: CorpusSource, cache: Path) -> Path:
    """The extracted source root of `src` under `cache`, downloaded and sha256-verified unless already there."""
    target = cache / "src" / f"{src.name}-{src.version}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}-", dir=target.parent) as tmp:
        archive = registry_packages.download(src.source, src.package, src.version, Path(tmp) / "download")
        digest = sha256_file(archive)
        if digest != src.sha256:
            raise ValidationError(
                f"{src.name} {src.version}: {archive.name} has sha256 {digest}, expected {src.sha256}"
            )
        root = registry_packages.extract(archive, src.source, Path(tmp) / "extracted", src.subdir)
        shutil.move(root, target)
    return target


def _sample_key(name: str, chunk_id: int, seed: int) -> bytes:
    return hashlib.blake2b(f"{seed}|{name}|{chunk_id}".encode(), digest_size=8).digest()


def corpus_chunks(
    roots: Sequence[tuple[str, Path]], embedder: Embedder, max_chunks_per_source: int, seed: int = 0
) -> pa.Table:
    """The chunks of each (source name, tree) as a build with `embedder` cuts them, at most
    `max_chunks_per_source` of each, chosen by a seeded hash of the chunk id (so stable across runs)."""
    from kg_assets.lib.build import chunk_for  # the build's modules (DuckDB, FAISS) only when chunking

    columns: dict[str, list] = {name: [] for name in CORPUS_COLUMNS}
    for name, root in roots:
        chunks = sorted(chunk_for(root, embedder).chunks, key=lambda c: _sample_key(name, c.chunk_id, seed))
        for chunk in sorted(chunks[:max_chunks_per_source], key=lambda c: (c.uri, c.start_byte)):
            for column, value in zip(
                CORPUS_COLUMNS,
                (name, chunk.language, chunk.uri, chunk.chunk_id, chunk.text, list(chunk.symbols)),
                strict=True,
            ):
                columns[column].append(value)
    import pyarrow as pa  # here, not at the top: `indexctl` imports this module's settings for every verb

    schema = pa.schema(
        [
            ("source", pa.string()),
            ("language", pa.string()),
            ("uri", pa.string()),
            ("chunk_id", pa.int64()),
            ("text", pa.string()),
            ("symbols", pa.list_(pa.string())),
        ]
    )
    return pa.table(columns, schema=schema)


def corpus_digest(corpus: pa.Table) -> str:
    """sha256 over every chunk's source, path, id and text: what features computed from the corpus are keyed by."""
    digest = hashlib.sha256()
    for row in corpus.select(["source", "uri", "chunk_id", "text"]).to_pylist():
        digest.update(f"{row['source']}\0{row['uri']}\0{row['chunk_id']}\0{row['text']}\0".encode())
    return digest.hexdigest()


# A line of a comment: its marker (line comments of the languages we chunk, a block comment's opening or middle
# line, a Python docstring's quotes), then the words.
_COMMENT_LINE = re.compile(r"^\s*(?:#+|//+!?|--+|;+|/\*+|\*+|\"\"\"|''')\s?(.*?)\s*(?:\*/|\"\"\"|''')?\s*$")
_WORDS = re.compile(r"[A-Za-z]{2,}")


def comment_sentences(corpus: pa.Table, limit: int, seed: int = 0) -> list[str]:
    """Up to `limit` distinct first sentences of the comments and docstrings in the corpus chunks (at least four
    words, mostly words: not code, licence or separator lines), chosen by a seeded hash: text that reads like a
    question about code, for teaching the static model the teacher's view of prose."""
    from kg_assets.lib.query_sets import first_sentence

    found: set[str] = set()
    for text in corpus["text"].to_pylist():
        block: list[str] = []
        for line in [*text.splitlines(), ""]:
            match = _COMMENT_LINE.match(line)
            if match and match.group(1):
                block.append(match.group(1))
                continue
            sentence = first_sentence("\n".join(block)) if block else ""
            block = []
            if _reads_as_prose(sentence):
                found.add(sentence)
    ranked = sorted(found, key=lambda s: hashlib.blake2b(f"{seed}|{s}".encode(), digest_size=8).digest())
    return sorted(ranked[:limit])


def _reads_as_prose(sentence: str) -> bool:
    """4 to 40 words, most of them words, no code punctuation, no licence or link."""
    from kg_assets.lib.query_sets import MIN_SENTENCE_WORDS

    words = sentence.split()
    if not MIN_SENTENCE_WORDS <= len(words) <= 40 or len(_WORDS.findall(sentence)) < 0.7 * len(words):
        return False
    return not re.search(r"copyright|licen[cs]e|SPDX|http|^@|[{};=<>$#]", sentence, re.I)
