"""Training the static embedder end to end on a tiny real corpus (this package's own source), and the corpus
manifest's refusal of benchmark repositories."""

import json
from pathlib import Path

import numpy as np
import pytest

import kg_assets
from kg_assets.lib import code_corpus, static_training
from kg_assets.lib.embedding import MiniLMOnnx, embedding_text
from kg_assets.lib.errors import UsageError
from kg_assets.lib.static_embedder import StaticEmbedder, write_model

PACKAGE = Path(kg_assets.__file__).parent
# About 230 chunks of this package's own source: a real corpus that needs no download.
CORPUS_FILES = ("lifecycle.py", "build.py", "retrieval.py", "evaluation.py", "chunking.py", "code_corpus.py")


@pytest.fixture(scope="module")
def teacher() -> MiniLMOnnx:
    return MiniLMOnnx()


def test_a_tiny_model_trains_loads_embeds_deterministically_and_ranks_a_paraphrase(
    tmp_path: Path, teacher: MiniLMOnnx
) -> None:
    (tmp_path / "src").mkdir()
    for name in CORPUS_FILES:
        (tmp_path / "src" / name).write_bytes((PACKAGE / "lib" / name).read_bytes())
    corpus = code_corpus.corpus_chunks([("kg_assets", tmp_path / "src")], teacher, max_chunks_per_source=1000)
    assert 150 <= corpus.num_rows <= 400
    tokenizer = static_training.load_tokenizer(teacher.tokenizer_path)
    pairs = static_training.docstring_pairs(
        [(f"lib/{p.name}", p.read_text(encoding="utf-8")) for p in sorted((PACKAGE / "cli").glob("*.py"))], 40
    )
    question = "which packages may the training corpus not contain"  # paraphrases check_manifest's docstring
    texts = static_training.corpus_texts(corpus)
    seen = static_training.token_counts([*texts, question, *(p.query for p in pairs)], tokenizer).indices
    tokens = static_training.distill_token_vectors(teacher, tokenizer, ids=seen)  # only the tokens used here
    features = static_training.teacher_features(corpus, teacher)
    counts = static_training.token_counts(texts, tokenizer)
    settings = static_training.TrainSettings(dim=32, iterations=20)
    zero = static_training.special_ids(tokenizer)
    distilled, table, report = static_training.train_table(tokens, counts, features, zero, settings)
    assert table.shape == distilled.shape == (tokenizer.get_vocab_size(), 32)
    assert report.ridge in static_training.RIDGE_GRID
    assert max(v for k, v in report.heldout_cosine.items() if k != "distilled") > report.heldout_cosine["distilled"]

    model = StaticEmbedder(write_model(tmp_path / "model", table, teacher.tokenizer_path, {"test": True}))
    assert model.dim == 32 and not model.rows(np.array(zero)).any()
    chunks = model.embed(texts)
    assert np.array_equal(chunks, StaticEmbedder(model.directory).embed(texts))  # a fresh load, the same vectors
    target = next(i for i, t in enumerate(corpus["text"].to_pylist()) if "def check_manifest(" in t)
    rank = int((chunks @ model.embed([question])[0] > chunks[target] @ model.embed([question])[0]).sum()) + 1
    assert rank <= corpus.num_rows // 10, f"the paraphrase's target ranks {rank} of {corpus.num_rows}"
    chance = sum(1 / r for r in range(1, 11)) / len(pairs)
    scores = static_training.docstring_retrieval(model, pairs, len(pairs))
    assert scores["mrr_at_10"] > 2 * chance, scores


def test_docstring_pairs_drop_the_docstring_from_the_code() -> None:
    source = (
        'def load(path):\n    """Read the settings file from disk."""\n'
        "    text = path.read_text()\n    x = 1\n    return text\n"
    )
    (pair,) = static_training.docstring_pairs([("m.py", source)], 10)
    assert pair.query == "Read the settings file from disk."
    assert "settings file" not in pair.code and "return text" in pair.code
    assert embedding_text(pair.uri, pair.code).startswith("m.py\n")


def _manifest(path: Path, **entry: str) -> Path:
    source = {"language": "go", "source": "deb", "version": "1.0-1", "sha256": "0" * 64, "subdir": "usr", **entry}
    path.write_text(json.dumps({"max_chunks_per_source": 10, "sources": [source]}), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "package", "repository"),
    [
        ("mux", "golang-github-gorilla-mux-dev", "gorilla-mux"),  # ours (benchmarks/quality/repos.json)
        ("format", "libfmt-dev", "fmt"),  # the public pack (shared/benchmarks/semble-public), Debian's name
        ("spf13-cli", "golang-github-spf13-cobra-dev", "cobra"),
        ("web", "python3-django", "django"),  # a web framework
    ],
)
def test_a_manifest_naming_a_benchmark_repository_is_refused(
    tmp_path: Path, name: str, package: str, repository: str
) -> None:
    manifest = code_corpus.load_manifest(_manifest(tmp_path / "m.json", name=name, package=package))
    with pytest.raises(UsageError, match=rf"^corpus manifest refused, .*{name}: {repository} \(") as refused:
        code_corpus.check_manifest(manifest)
    assert "\n" not in str(refused.value)


def test_the_committed_manifest_is_accepted_and_benchmarks_are_read_from_their_files(tmp_path: Path) -> None:
    code_corpus.check_manifest(code_corpus.load_manifest())
    listed = code_corpus.benchmark_repositories()
    assert {"flask", "gorilla-mux", "cobra", "zig-clap", "lazy.nvim"} <= set(listed)
    manifest = code_corpus.load_manifest(_manifest(tmp_path / "m.json", name="pflag", package="golang-pflag-dev"))
    code_corpus.check_manifest(manifest)  # not a benchmark repository
    with pytest.raises(UsageError, match="cannot check the corpus against benchmark list"):
        code_corpus.check_manifest(manifest, [tmp_path / "missing.json"])
