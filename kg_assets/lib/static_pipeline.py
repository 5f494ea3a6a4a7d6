"""The steps of the static embedder's training job, one function per asset, their files in one work directory.

Each step writes its output and a small JSON report (`<step>.json`: counts, seconds) under `TrainSettings.work_dir`;
the last step gathers the reports into the model's `provenance.json`. The two slow results are cached by what
they are computed from, so a re-fit does not redo them: the distilled vocabulary by the teacher's fingerprint, the
teacher's corpus features by the corpus digest and the teacher's fingerprint.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterable
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
    languages: dict[str, int] = {}
    for language in corpus["language"].to_pylist():
        languages[language] = languages.get(language, 0) + 1
    report = {
        "manifest": str(settings.manifest),
        "manifest_digest": manifest.digest,
        "corpus_digest": code_corpus.corpus_digest(corpus),
        "sources": len(manifest.sources),
        "source_languages": manifest.languages,
        "chunks": corpus.num_rows,
        "chunk_languages": dict(sorted(languages.items(), key=lambda kv: -kv[1])),
        "max_chunks_per_source": manifest.max_chunks_per_source,
        "fetch_seconds": round(fetched, 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return _report(settings.work_dir, "corpus", report)


def _features_path(settings: TrainSettings, teacher: MiniLMOnnx) -> Path:
    digest = read_report(settings.work_dir, "corpus")["corpus_digest"]
    return settings.work_dir / "features" / f"{digest[:16]}-{teacher.fingerprint}.npy"


def featurize(settings: TrainSettings, teacher: MiniLMOnnx, progress: Progress | None = None) -> dict[str, Any]:
    """The teacher's vectors of the corpus chunks (the slow step; cached per corpus digest and teacher)."""
    path, t0 = _features_path(settings, teacher), time.perf_counter()
    cached = path.is_file()
    if not cached:
        path.parent.mkdir(parents=True, exist_ok=True)
        corpus = pq.read_table(settings.work_dir / "corpus.parquet")
        atomic_write_npy(path, static_training.teacher_features(corpus, teacher, progress=progress))
    features = np.load(path, mmap_mode="r")
    seconds = time.perf_counter() - t0
    report = {"path": str(path), "chunks": features.shape[0], "cached": cached, "seconds": round(seconds, 1)}
    if not cached:
        report["chunks_per_second"] = round(features.shape[0] / seconds, 1)
    return _report(settings.work_dir, "features", report)


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
    corpus = pq.read_table(work / "corpus.parquet")
    counts = static_training.token_counts(static_training.corpus_texts(corpus), tokenizer)
    features = np.load(_features_path(settings, teacher))
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
