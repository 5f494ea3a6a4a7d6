"""Training the static code embedder: a token-vector table fitted to the packaged MiniLM (the teacher).

The recipe is model2vec's distillation followed by tokenlearn's fit, done with numpy alone:

1. distill: every vocabulary token alone through the teacher ([CLS] token [SEP], mean-pooled, normalized);
2. reduce: PCA to `dim` dimensions, fitted on the teacher's vectors of the corpus chunks (the space the fit
   targets), so distilled tokens and teacher chunk vectors share one centred basis;
3. weight: SIF, a / (a + p(token)) with p from the corpus token counts; the distilled table with these weights
   is the starting point (`distilled_table`);
4. fit: token directions E such that the SIF-weighted mean of a text's rows, sum_t w_t E_t / sum_t w_t, matches
   its teacher vector in that basis, ridge-regularized toward the (rescaled) distilled directions:
   min |X E - Y|^2 + lam |E - s E0|^2, X the texts' weighted token frequencies; the rows kept are w_t E_t.
   Solved exactly by conjugate gradients on the normal equations, all columns at once; tokens the corpus never
   shows keep their distilled rows. The texts are the corpus chunks and the first sentences of its comments and
   docstrings (prose, as questions are). `lam` is chosen on held-out texts.

The run-time model only sums rows and L2-normalizes (`static_embedder`), so the weights live in the rows.
"""

from __future__ import annotations

import ast
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kg_assets.lib.code_corpus import MANIFEST, PROJECT_ROOT
from kg_assets.lib.embedding import Embedder, MiniLMOnnx, embedding_text, normalize
from kg_assets.lib.progress import Progress
from kg_assets.lib.query_sets import MIN_SENTENCE_WORDS, first_sentence
from kg_assets.lib.settings import setting
from kg_assets.lib.static_embedder import MODEL_DIR

if TYPE_CHECKING:
    import pyarrow as pa
    from tokenizers import Tokenizer

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # zero rows: never counted


# lam candidates, relative to the mean diagonal of X^T X; the held-out chunks choose one.
RIDGE_GRID = (0.01, 0.1)
WORK_DIR = Path("build") / "embedder"  # relative to the project: caches of the steps (features take minutes)


@dataclass(frozen=True)
class TrainSettings:
    """How the static model is trained (recorded in its provenance); `indexctl embedder train` options."""

    manifest: Path = setting(MANIFEST, "Corpus manifest (registry packages pinned by version and sha256).")
    out: Path = setting(MODEL_DIR, "Model directory to write (default: the committed model).")
    work_dir: Path = setting(PROJECT_ROOT / WORK_DIR, "Where downloads, corpus and cached teacher features go.")
    dim: int = setting(256, "Dimensions of the token vectors (PCA of the teacher's 384).", minimum=8, maximum=384)
    sif_a: float = setting(1e-3, "SIF weight parameter a: a token with corpus share p weighs a/(a+p).", minimum=0)
    iterations: int = setting(50, "Conjugate-gradient steps of the fit.", minimum=0)
    holdout: float = setting(0.1, "Share of corpus chunks that choose the ridge.", minimum=0.01, maximum=0.5)
    sentences: int = setting(2000, "Comment and docstring sentences of the corpus fitted too (0: none).", minimum=0)
    seed: int = setting(0, "Seed of the corpus sample, the held-out split and the evaluation sample.")
    eval_pool: int = setting(500, "Held-out evaluation: documented stdlib functions in the pool.", minimum=10)
    eval_queries: int = setting(200, "Held-out evaluation: how many of them are asked for.", minimum=1)
    benchmarks: bool = setting(
        True, "Run both labelled sets through real builds and searches (the embedder_eval check; off: a trial run)."
    )


@dataclass
class FitReport:
    """What the fit measured: the chosen ridge, held-out agreement with the teacher per candidate, timings."""

    ridge: float
    heldout_cosine: dict[str, float]  # "distilled" and "ridge=<lam>" -> mean cosine to the teacher
    seconds: dict[str, float] = field(default_factory=dict)


def load_tokenizer(path: Path) -> Tokenizer:
    """The teacher's WordPiece tokenizer as the static model uses it: no truncation, no padding."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def special_ids(tokenizer: Tokenizer) -> list[int]:
    return [i for token in SPECIAL_TOKENS if (i := tokenizer.token_to_id(token)) is not None]


def distill_token_vectors(
    teacher: MiniLMOnnx,
    tokenizer: Tokenizer,
    *,
    ids: np.ndarray | None = None,
    batch: int = 512,
    progress: Progress | None = None,
) -> np.ndarray:
    """Every vocabulary token (or only `ids`) alone through the teacher, as `[CLS] token [SEP]`: (V x teacher
    dim) float32; special tokens' rows, and those not in `ids`, zero."""
    vocab = tokenizer.get_vocab_size()
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    wanted = np.arange(vocab) if ids is None else np.unique(ids)
    out = np.zeros((vocab, teacher.dim), dtype=np.float32)
    for start in range(0, len(wanted), batch):
        rows = wanted[start : start + batch]
        sequences = np.stack([np.full_like(rows, cls), rows, np.full_like(rows, sep)], axis=1)
        out[rows] = teacher.embed_token_ids(sequences)
        if progress:
            progress(min(start + batch, len(wanted)), len(wanted))
    out[special_ids(tokenizer)] = 0
    return out


def teacher_features(corpus: pa.Table, teacher: Embedder, *, progress: Progress | None = None) -> np.ndarray:
    """The teacher's vectors of the corpus chunks, embedded exactly as a build embeds them (path header first)."""
    return teacher.embed(corpus_texts(corpus), progress=progress)


def corpus_texts(corpus: pa.Table) -> list[str]:
    """What is embedded for each corpus chunk (`embedding_text`: the path line, then the chunk)."""
    return [embedding_text(u, t) for u, t in zip(corpus["uri"].to_pylist(), corpus["text"].to_pylist(), strict=True)]


@dataclass(frozen=True)
class TokenCounts:
    """A (texts x V) sparse matrix in CSR form (numpy only): `data[indptr[i]:indptr[i+1]]` are row i's values at
    columns `indices[...]`. Products go in row blocks, so memory stays at ~`BLOCK_NNZ` x d floats."""

    data: np.ndarray  # float32
    indices: np.ndarray  # int64 column of each value
    indptr: np.ndarray  # int64, len rows + 1
    columns: int

    BLOCK_NNZ = 1 << 16

    @property
    def rows(self) -> int:
        return len(self.indptr) - 1

    def take(self, rows: np.ndarray) -> TokenCounts:
        """The given rows, in that order."""
        lengths = np.diff(self.indptr)[rows]
        indptr = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        picks = np.concatenate([np.arange(self.indptr[r], self.indptr[r + 1]) for r in rows] or [np.zeros(0, int)])
        return TokenCounts(self.data[picks], self.indices[picks], indptr, self.columns)

    def scale(self, rows: np.ndarray | None = None, columns: np.ndarray | None = None) -> TokenCounts:
        """Each value times its row's and its column's factor."""
        data = self.data
        if rows is not None:
            data = data * np.repeat(rows, np.diff(self.indptr)).astype(np.float32)
        if columns is not None:
            data = data * columns[self.indices]
        return TokenCounts(data.astype(np.float32), self.indices, self.indptr, self.columns)

    def row_sums(self) -> np.ndarray:
        return np.add.reduceat(np.append(self.data, 0), self.indptr[:-1]) * (np.diff(self.indptr) > 0)

    def column_sums(self, squared: bool = False) -> np.ndarray:
        values = self.data * self.data if squared else self.data
        return np.bincount(self.indices, weights=values, minlength=self.columns)

    def dot(self, dense: np.ndarray) -> np.ndarray:
        """self @ dense, (rows x d) float32."""
        out = np.zeros((self.rows, dense.shape[1]), dtype=np.float32)
        filled = np.flatnonzero(np.diff(self.indptr))  # reduceat needs non-empty segments
        start = 0
        while start < len(filled):
            first = self.indptr[filled[start]]
            stop = int(np.searchsorted(self.indptr[filled + 1], first + self.BLOCK_NNZ, side="right"))
            stop = max(stop, start + 1)
            rows = filled[start:stop]
            end = self.indptr[rows[-1] + 1]
            products = self.data[first:end, None] * dense[self.indices[first:end]]
            out[rows] = np.add.reduceat(products, self.indptr[rows] - first, axis=0)
            start = stop
        return out

    @cached_property
    def transposed(self) -> TokenCounts:
        order = np.argsort(self.indices, kind="stable")
        row_of = np.repeat(np.arange(self.rows), np.diff(self.indptr))
        indptr = np.concatenate(([0], np.cumsum(np.bincount(self.indices, minlength=self.columns)))).astype(np.int64)
        return TokenCounts(self.data[order], row_of[order], indptr, self.rows)


def token_counts(texts: Sequence[str], tokenizer: Tokenizer) -> TokenCounts:
    """(texts x V) token counts of each text, tokenized as the static model does (no special tokens)."""
    rows = [np.unique(e.ids, return_counts=True) for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]
    indptr = np.concatenate(([0], np.cumsum([len(ids) for ids, _ in rows]))).astype(np.int64)
    indices = np.concatenate([ids for ids, _ in rows] or [np.zeros(0)]).astype(np.int64)
    data = np.concatenate([counts for _, counts in rows] or [np.zeros(0)]).astype(np.float32)
    return TokenCounts(data, indices, indptr, tokenizer.get_vocab_size())


def sif_weights(counts: TokenCounts, a: float) -> np.ndarray:
    """Per token a / (a + p), p its share of all corpus tokens (1 for tokens the corpus never shows)."""
    per_token = counts.column_sums()
    return (a / (a + per_token / max(per_token.sum(), 1.0))).astype(np.float32)


def pca_basis(x: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean of `x`'s rows and its top `dim` principal directions (dim x D), signs fixed for determinism."""
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    components = vt[:dim]
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
    return mean.astype(np.float32), (components * signs[:, None]).astype(np.float32)


def distilled_table(
    tokens: np.ndarray, weights: np.ndarray, mean: np.ndarray, components: np.ndarray, zero: Sequence[int]
) -> np.ndarray:
    """The untrained model: each token's teacher vector in the PCA basis, times its weight; `zero` rows zero."""
    table = ((tokens - mean) @ components.T) * weights[:, None]
    table[list(zero)] = 0
    return table.astype(np.float32)


def fit_table(counts: TokenCounts, targets: np.ndarray, init: np.ndarray, ridge: float, iterations: int) -> np.ndarray:
    """Token table E minimizing |X E - Y|^2 + lam |E - s E0|^2 (X the mean-pooling matrix of `counts`, Y the
    `targets`, E0 `init` rescaled by the least-squares s). `ridge` is lam relative to the mean diagonal of
    X^T X over the tokens the corpus shows. Block conjugate gradients from s E0, one step size per column."""
    x = counts.scale(rows=1.0 / np.maximum(counts.row_sums(), 1e-12))  # X @ E: each text's mean row
    pooled = x.dot(init)
    prior = init * float((pooled * targets).sum() / max((pooled * pooled).sum(), 1e-12))
    diagonal = x.column_sums(squared=True)
    lam = ridge * float(diagonal[diagonal > 0].mean())

    def gram(e: np.ndarray) -> np.ndarray:
        return x.transposed.dot(x.dot(e)) + lam * e

    table = prior.copy()
    residual = x.transposed.dot(targets) + lam * prior - gram(table)
    direction = residual.copy()
    power = (residual * residual).sum(axis=0)
    for _ in range(iterations):
        step_in = gram(direction)
        alpha = power / np.maximum((direction * step_in).sum(axis=0), 1e-30)
        table += direction * alpha
        residual -= step_in * alpha
        new_power = (residual * residual).sum(axis=0)
        direction = residual + direction * (new_power / np.maximum(power, 1e-30))
        power = new_power
    return table.astype(np.float32)


def mean_cosine(table: np.ndarray, counts: TokenCounts, targets: np.ndarray) -> float:
    """Mean cosine between the static vectors (summed rows) of chunks and their targets."""
    return float((normalize(counts.dot(table)) * normalize(targets)).sum(axis=1).mean())


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    cut = max(1, int(n * fraction))
    return np.sort(order[cut:]), np.sort(order[:cut])


def train_table(
    tokens: np.ndarray,
    counts: TokenCounts,
    features: np.ndarray,
    zero: Sequence[int],
    settings: TrainSettings,
    log: Callable[[str], None] = lambda message: None,
) -> tuple[np.ndarray, np.ndarray, FitReport]:
    """The distilled table and the fitted one (both V x dim, weights folded in) and what the fit measured.

    `tokens` are the distilled token vectors (V x D), `counts` the corpus chunks' token counts, `features` the
    teacher's vectors of the same chunks (N x D)."""
    t0 = time.perf_counter()
    mean, components = pca_basis(features, settings.dim)
    targets = (features - mean) @ components.T
    weights = sif_weights(counts, settings.sif_a)
    # The fit keeps SIF in the model's form, sum of w_t * E_t: it fits the directions E (from the distilled
    # ones), and the weights are folded in after. Fitting weighted rows directly lets frequent tokens grow into a
    # shared offset that drowns a question's words (held-out MRR 0.30 against 0.45 this way).
    directions = distilled_table(tokens, np.ones_like(weights), mean, components, zero)
    init = directions * weights[:, None]
    weighted = counts.scale(columns=weights)
    seconds = {"pca_and_weights": time.perf_counter() - t0}
    train, held = _split(counts.rows, settings.holdout, settings.seed)
    scores = {"distilled": mean_cosine(init, counts.take(held), targets[held])}
    log(f"held-out cosine to the teacher, distilled: {scores['distilled']:.4f}")
    for ridge in RIDGE_GRID:
        t1 = time.perf_counter()
        table = (
            fit_table(weighted.take(train), targets[train], directions, ridge, settings.iterations) * weights[:, None]
        )
        scores[f"ridge={ridge:g}"] = mean_cosine(table, counts.take(held), targets[held])
        seconds[f"fit ridge={ridge:g} (held-out split)"] = time.perf_counter() - t1
        log(f"held-out cosine, ridge {ridge:g}: {scores[f'ridge={ridge:g}']:.4f} ({time.perf_counter() - t1:.0f}s)")
    best = max(RIDGE_GRID, key=lambda ridge: scores[f"ridge={ridge:g}"])
    t1 = time.perf_counter()
    table = fit_table(weighted, targets, directions, best, settings.iterations) * weights[:, None]
    table[list(zero)] = 0
    seconds["fit (all chunks)"] = time.perf_counter() - t1
    report = FitReport(best, {k: round(v, 4) for k, v in scores.items()}, {k: round(v, 1) for k, v in seconds.items()})
    return init, table, report


@dataclass(frozen=True)
class DocPair:
    """A documented function: its docstring's first sentence (the query) and its source without the docstring."""

    query: str
    code: str
    uri: str


def docstring_pairs(files: Iterable[tuple[str, str]], limit: int, seed: int = 0) -> list[DocPair]:
    """Up to `limit` (query, code) pairs from Python sources given as (uri, text), chosen by a seeded hash;
    functions of 4 to 80 lines whose docstring's first sentence has at least 4 words (research note A1)."""
    pairs = []
    for uri, text in files:
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        lines = text.splitlines()
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or not (doc := ast.get_docstring(node)):
                continue
            sentence = first_sentence(doc)
            body = node.body[0]
            if len(sentence.split()) < MIN_SENTENCE_WORDS or not 4 <= node.end_lineno - node.lineno + 1 <= 80:
                continue
            kept = lines[node.lineno - 1 : body.lineno - 1] + lines[body.end_lineno : node.end_lineno]
            pairs.append(DocPair(sentence, "\n".join(kept), uri))
    ranked = sorted(pairs, key=lambda p: hashlib.blake2b(f"{seed}|{p.uri}|{p.query}".encode()).digest())
    return ranked[:limit]


def pairs_digest(pairs: Sequence[DocPair]) -> str:
    return hashlib.sha256(json.dumps([asdict(p) for p in pairs]).encode()).hexdigest()


def pair_vectors(embedder: Embedder, pairs: Sequence[DocPair], queries: int) -> tuple[np.ndarray, np.ndarray]:
    """The code vectors of every pair (embedded as a build does) and the sentence vectors of the first `queries`."""
    docs = embedder.embed([embedding_text(p.uri, p.code) for p in pairs])
    return docs, embedder.embed([p.query for p in pairs[:queries]])


def docstring_retrieval(embedder: Embedder, pairs: Sequence[DocPair], queries: int, k: int = 10) -> dict[str, float]:
    """MRR@k and recall@k of the first `queries` pairs' sentences against every pair's code (one positive each)."""
    docs, asked = pair_vectors(embedder, pairs, queries)
    return retrieval_scores(asked, docs, k)


def retrieval_scores(queries: np.ndarray, docs: np.ndarray, k: int = 10) -> dict[str, float]:
    """MRR@k and recall@k when query i's only relevant document is document i."""
    scores = queries @ docs.T
    truth = scores[np.arange(len(queries)), np.arange(len(queries))]
    ranks = (scores > truth[:, None]).sum(axis=1) + 1
    return {
        f"mrr_at_{k}": round(float(np.where(ranks <= k, 1.0 / ranks, 0.0).mean()), 4),
        f"recall_at_{k}": round(float((ranks <= k).mean()), 4),
        "queries": len(queries),
        "pool": len(docs),
    }
