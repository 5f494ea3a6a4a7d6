"""The steps of the static embedder's training job, one function per asset, their files in one work directory.

Each step writes its output and a small JSON report (`<step>.json`: counts, seconds) under `TrainSettings.work_dir`;
the last step gathers the reports into the model's `provenance.json`. The two slow results are cached by what
they are computed from, so a re-fit does not redo them: the distilled vocabulary by the teacher's fingerprint, the
teacher's corpus features by the corpus digest and the teacher's fingerprint.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from kg_assets.lib import code_corpus, static_training
from kg_assets.lib.commits import head_commit
from kg_assets.lib.embedding import MiniLMOnnx
from kg_assets.lib.errors import NotFoundError
from kg_assets.lib.fsutil import atomic_write_json, atomic_write_npy, atomic_write_parquet
from kg_assets.lib.progress import Progress
from kg_assets.lib.settings import to_values
from kg_assets.lib.static_embedder import StaticEmbedder, write_model
from kg_assets.lib.static_training import RIDGE_GRID, TrainSettings

REBUILD_COMMAND = "indexctl embedder train"
FEATURE_BLOCK = 256  # corpus chunks per cached block of teacher features (~10-60 s of the teacher each)
Log = Callable[[str], None]


def _report(work: Path, step: str, report: dict[str, Any]) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / f"{step}.json", report)
    return report


def read_report(work: Path, step: str) -> dict[str, Any]:
    path = work / f"{step}.json"
    if not path.is_file():
        raise NotFoundError(f"{path} does not exist: materialize the embedder group's earlier steps first")
    return json.loads(path.read_text(encoding="utf-8"))


def describe_teacher(settings: TrainSettings, teacher: MiniLMOnnx) -> dict[str, Any]:
    """The teacher's identity (what every later step is computed from)."""
    tokenizer = static_training.load_tokenizer(teacher.tokenizer_path)
    return _report(
        settings.work_dir,
        "teacher",
        {
            "name": teacher.name,
            "fingerprint": teacher.fingerprint,
            "model_sha256": teacher.model_sha256,
            "dim": teacher.dim,
            "max_tokens": teacher.max_tokens,
            "vocab_size": tokenizer.get_vocab_size(),
            "tokenizer": teacher.tokenizer_path.name,
        },
    )


def _distilled_path(settings: TrainSettings, teacher: MiniLMOnnx) -> Path:
    return settings.work_dir / "distilled" / f"{teacher.fingerprint}.npy"


def distill(settings: TrainSettings, teacher: MiniLMOnnx, progress: Progress | None = None) -> dict[str, Any]:
    """Every vocabulary token through the teacher (cached per teacher fingerprint)."""
    path, t0 = _distilled_path(settings, teacher), time.perf_counter()
    cached = path.is_file()
    if not cached:
        path.parent.mkdir(parents=True, exist_ok=True)
        tokenizer = static_training.load_tokenizer(teacher.tokenizer_path)
        atomic_write_npy(path, static_training.distill_token_vectors(teacher, tokenizer, progress=progress))
    tokens = np.load(path, mmap_mode="r")
    report = {"path": str(path), "tokens": tokens.shape[0], "dim": tokens.shape[1], "cached": cached}
    return _report(settings.work_dir, "distilled", {**report, "seconds": round(time.perf_counter() - t0, 1)})


def build_corpus(
    settings: TrainSettings, teacher: MiniLMOnnx, benchmark_files: Iterable[Path] = code_corpus.BENCHMARK_REPO_FILES
) -> dict[str, Any]:
    """Check the manifest, fetch and verify its packages, chunk them: `corpus.parquet`."""
    t0 = time.perf_counter()
    manifest = code_corpus.load_manifest(settings.manifest)
    code_corpus.check_manifest(manifest, benchmark_files)
    roots = [(src.name, code_corpus.fetch_source(src, settings.work_dir / "sources")) for src in manifest.sources]
    fetched = time.perf_counter() - t0
    corpus = code_corpus.corpus_chunks(roots, teacher, manifest.max_chunks_per_source, settings.seed)
    atomic_write_parquet(settings.work_dir / "corpus.parquet", corpus)
    sentences = code_corpus.comment_sentences(corpus, settings.sentences, settings.seed)
    atomic_write_json(settings.work_dir / "sentences.json", sentences)
    languages: dict[str, int] = {}
    for language in corpus["language"].to_pylist():
        languages[language] = languages.get(language, 0) + 1
    report = {
        "manifest": _project_relative(settings.manifest),
        "manifest_digest": manifest.digest,
        "corpus_digest": code_corpus.corpus_digest(corpus),
        "sentences": len(sentences),
        "sentences_digest": hashlib.sha256(json.dumps(sentences).encode()).hexdigest(),
        "sources": len(manifest.sources),
        "source_languages": manifest.languages,
        "chunks": corpus.num_rows,
        "chunk_languages": dict(sorted(languages.items(), key=lambda kv: -kv[1])),
        "max_chunks_per_source": manifest.max_chunks_per_source,
        "fetch_seconds": round(fetched, 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return _report(settings.work_dir, "corpus", report)


def featurize(settings: TrainSettings, teacher: MiniLMOnnx, progress: Progress | None = None) -> dict[str, Any]:
    """The teacher's vectors of the corpus chunks (the slow step), then of its sentences: `features.npy`, one row
    per text in that order. Each text's vector is cached by the text and the teacher, so a smaller or changed
    corpus, or a re-fit, embeds only what no earlier run did."""
    t0 = time.perf_counter()
    chunks = static_training.corpus_texts(pq.read_table(settings.work_dir / "corpus.parquet"))
    texts = chunks + _read_sentences(settings)
    features, computed = cached_features(texts, settings.work_dir / "features" / teacher.fingerprint, teacher, progress)
    atomic_write_npy(settings.work_dir / "features.npy", features)
    seconds = time.perf_counter() - t0
    report = {"chunks": len(chunks), "sentences": len(texts) - len(chunks), "computed": computed}
    report.update(reused=len(texts) - computed, seconds=round(seconds, 1))
    if computed:
        report["texts_per_second"] = round(computed / seconds, 2)
    return _report(settings.work_dir, "features", report)


def _read_sentences(settings: TrainSettings) -> list[str]:
    return json.loads((settings.work_dir / "sentences.json").read_text(encoding="utf-8"))


def _text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest().encode()


def cached_features(
    texts: list[str], cache: Path, teacher: MiniLMOnnx, progress: Progress | None = None
) -> tuple[np.ndarray, int]:
    """The teacher's vectors of `texts` and how many were computed now (the rest came from `cache`).

    The cache holds blocks: `<name>.npy` (vectors) beside `<name>.keys.npy` (a hash of each text). Texts it lacks
    are embedded in blocks of `FEATURE_BLOCK`, each written once done, under a lock of its own: a killed run
    resumes where it stopped, and processes running this at once share the blocks."""
    cache.mkdir(parents=True, exist_ok=True)
    keys = [_text_key(t) for t in texts]
    first: dict[bytes, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    known = _cache_index(cache)
    missing = [(key, i) for key, i in first.items() if key not in known]
    blocks = [missing[start : start + FEATURE_BLOCK] for start in range(0, len(missing), FEATURE_BLOCK)]
    for wait in (False, True):  # first the blocks nobody is on, then wait for (or redo) the others'
        for done, block in enumerate(blocks, start=1):
            name = hashlib.sha256(b"".join(k for k, _ in block)).hexdigest()[:24]
            with _block_lock(cache / f"{name}.npy", wait) as mine:
                if mine and not (cache / f"{name}.keys.npy").is_file():
                    atomic_write_npy(cache / f"{name}.npy", teacher.embed([texts[i] for _, i in block]))
                    atomic_write_npy(cache / f"{name}.keys.npy", np.array([k for k, _ in block]))
            if progress and wait:
                progress(min(done * FEATURE_BLOCK, len(missing)), len(missing))
    known = _cache_index(cache)
    out = np.empty((len(texts), teacher.dim), dtype=np.float32)
    for name, rows, into in _group(known, keys):
        out[into] = np.load(cache / f"{name}.npy", mmap_mode="r")[rows]
    return out, len(missing)


def _cache_index(cache: Path) -> dict[bytes, tuple[str, int]]:
    """Text hash -> (block name, row) of every complete block in the cache."""
    index: dict[bytes, tuple[str, int]] = {}
    for path in sorted(cache.glob("*.keys.npy")):
        name = path.name.removesuffix(".keys.npy")
        index.update((key, (name, row)) for row, key in enumerate(np.load(path).tolist()))
    return index


def _group(known: dict[bytes, tuple[str, int]], keys: list[bytes]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Where each text's vector is, grouped by block: (block name, rows in the block, rows of the output)."""
    by_block: dict[str, tuple[list[int], list[int]]] = {}
    for out_row, key in enumerate(keys):
        name, row = known[key]
        rows, into = by_block.setdefault(name, ([], []))
        rows.append(row)
        into.append(out_row)
    return [(name, np.array(rows), np.array(into)) for name, (rows, into) in by_block.items()]


@contextlib.contextmanager
def _block_lock(block: Path, wait: bool) -> Iterator[bool]:
    """An exclusive lock on `block`'s lock file, released when the block ends or the process dies: whether it was
    taken (without `wait`, False at once when another process holds it)."""
    with open(block.with_suffix(".lock"), "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def stdlib_sources(limit_bytes: int = 200_000) -> list[tuple[str, str]]:
    """(uri, text) of this interpreter's standard library modules: held-out Python (no corpus package is CPython);
    tests, idlelib, tkinter, lib2to3 and site-packages left out, as in the research note's A1 set."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = ("test", "tests", "idlelib", "tkinter", "lib2to3", "site-packages", "ensurepip", "turtledemo")
    files = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if any(part in skip for part in rel.parts) or path.stat().st_size > limit_bytes:
            continue
        files.append((f"Lib/{rel.as_posix()}", path.read_text(encoding="utf-8", errors="replace")))
    return files


def _teacher_eval(
    settings: TrainSettings, teacher: MiniLMOnnx, pairs: list[static_training.DocPair]
) -> dict[str, float]:
    """The teacher's figures on the held-out pairs (its vectors cached per pair set and teacher)."""
    key = static_training.pairs_digest(pairs)
    path = settings.work_dir / "eval" / f"{key[:16]}-{teacher.fingerprint}.npz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        docs, queries = static_training.pair_vectors(teacher, pairs, settings.eval_queries)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, docs=docs, queries=queries)
        tmp.replace(path)
    with np.load(path) as data:
        return static_training.retrieval_scores(data["queries"], data["docs"])


def _project_relative(path: Path) -> str:
    """`path` relative to the project when inside it (what provenance records), else as given."""
    path = Path(path).absolute()
    return (
        str(path.relative_to(code_corpus.PROJECT_ROOT)) if path.is_relative_to(code_corpus.PROJECT_ROOT) else str(path)
    )


def _commit() -> dict[str, Any]:
    root = code_corpus.PROJECT_ROOT
    try:
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return {"commit": head_commit(root).sha, "dirty": bool(dirty)}
    except (NotFoundError, OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def train(settings: TrainSettings, teacher: MiniLMOnnx, log: Log = lambda message: None) -> dict[str, Any]:
    """Fit the token table, write the model to `settings.out` (and the untrained, distilled one beside the
    caches), evaluate both and the teacher on held-out stdlib functions; the provenance written with it."""
    work = settings.work_dir
    reports = {step: read_report(work, step) for step in ("teacher", "distilled", "corpus", "features")}
    t0 = time.perf_counter()
    tokenizer = static_training.load_tokenizer(teacher.tokenizer_path)
    texts = static_training.corpus_texts(pq.read_table(work / "corpus.parquet")) + _read_sentences(settings)
    counts = static_training.token_counts(texts, tokenizer)  # chunks and sentences alike: one row each
    features = np.load(work / "features.npy")
    tokens = np.load(_distilled_path(settings, teacher))
    zero = static_training.special_ids(tokenizer)
    distilled, table, fit = static_training.train_table(tokens, counts, features, zero, settings, log)
    fit_seconds = time.perf_counter() - t0

    t1 = time.perf_counter()
    pairs = static_training.docstring_pairs(stdlib_sources(), settings.eval_pool, settings.seed)
    baseline_dir = work / "distilled-model"
    write_model(baseline_dir, distilled, teacher.tokenizer_path, {"note": "untrained baseline of the embedder job"})
    written = write_model(settings.out, table, teacher.tokenizer_path, {"note": "being evaluated"})
    evaluation = {
        "set": f"held-out docstring->code retrieval, CPython {sys.version.split()[0]} stdlib (not in the corpus): "
        f"{min(settings.eval_queries, len(pairs))} first sentences against {len(pairs)} functions",
        "minilm": _teacher_eval(settings, teacher, pairs),
        "distilled": static_training.docstring_retrieval(StaticEmbedder(baseline_dir), pairs, settings.eval_queries),
        "static": static_training.docstring_retrieval(StaticEmbedder(written), pairs, settings.eval_queries),
        "heldout_corpus_cosine": fit.heldout_cosine,
    }
    metric = "mrr_at_10"
    evaluation["static_vs_minilm"] = round(evaluation["static"][metric] / evaluation["minilm"][metric], 3)
    log(
        f"held-out MRR@10: minilm {evaluation['minilm'][metric]}, distilled {evaluation['distilled'][metric]}, "
        f"static {evaluation['static'][metric]}"
    )
    provenance = {
        "model": "static-code",
        "recipe": "model2vec distillation (every token through the teacher, PCA, SIF) + tokenlearn-style fit to the "
        "teacher's chunk vectors (ridge toward the distilled table, conjugate gradients)",
        "teacher": reports["teacher"],
        "corpus": {k: v for k, v in reports["corpus"].items() if k not in ("seconds", "fetch_seconds")},
        "settings": {
            **{k: v for k, v in to_values(settings).items() if k not in ("out", "work_dir", "manifest")},
            "ridge_grid": list(RIDGE_GRID),
            "ridge": fit.ridge,
            "pooling": "sum of rows (weights folded in), L2-normalized",
        },
        **_commit(),
        "evaluation": evaluation,
        "seconds": {
            "distill": reports["distilled"]["seconds"],
            "corpus": reports["corpus"]["seconds"],
            "teacher_features": reports["features"]["seconds"],
            "fit": round(fit_seconds, 1),
            "evaluation": round(time.perf_counter() - t1, 1),
            "fit_detail": fit.seconds,
        },
        "teacher_features": {k: v for k, v in reports["features"].items() if k != "path"},
        "rebuild": REBUILD_COMMAND,
    }
    write_model(settings.out, table, teacher.tokenizer_path, provenance)
    return {**provenance, "out": str(settings.out), "bytes": sum(p.stat().st_size for p in settings.out.iterdir())}


def record_evaluation(model: Path, name: str, figures: dict[str, Any], command: str) -> dict[str, Any]:
    """Add figures measured outside the job (e.g. the labelled benchmarks through real builds) to a model's
    provenance under `evaluation.<name>`, with the command that measured them; the model's vectors, and so its
    fingerprint, do not change."""
    path = Path(model) / "provenance.json"
    provenance = json.loads(path.read_text(encoding="utf-8"))
    provenance.setdefault("evaluation", {})[name] = {**figures, "command": command}
    atomic_write_json(path, provenance)
    return provenance
