"""The static embedder's run time: model directory format, determinism, fingerprint, errors."""

import json
from pathlib import Path

import numpy as np
import pytest

from kg_assets.lib.embedding import MiniLMOnnx, load_embedder
from kg_assets.lib.errors import UsageError, ValidationError
from kg_assets.lib.static_embedder import StaticEmbedder, write_model

TOKENIZER = MiniLMOnnx().tokenizer_path
VOCAB = 30522


def _model(directory: Path, seed: int = 0, dim: int = 16) -> Path:
    vectors = np.random.default_rng(seed).standard_normal((VOCAB, dim)).astype(np.float32)
    vectors[:104] = 0  # [PAD], [unused*], [UNK], [CLS], [SEP], [MASK]
    return write_model(directory, vectors, TOKENIZER, {"made_by": "test", "seed": seed})


def test_embeds_the_normalized_sum_of_token_rows_deterministically(tmp_path: Path) -> None:
    embedder = load_embedder(f"static:{_model(tmp_path / 'm')}")
    assert isinstance(embedder, StaticEmbedder) and embedder.dim == 16 and embedder.max_tokens == 256
    texts = ["def get_user_name(self):\n    return self._name", "", "[UNK]", "parse a json config file"] * 3000
    first, again, reordered = embedder.embed(texts), embedder.embed(texts), embedder.embed(texts[::-1])[::-1]
    assert first.dtype == np.float32 and first.shape == (len(texts), 16)
    assert np.array_equal(first, again)  # the same texts, the same vectors
    assert np.allclose(first, reordered, rtol=0, atol=1e-7)  # the rest of the batch changes at most a rounding
    ids = embedder.token_ids(texts[:1])[0]
    expected = embedder.rows(np.array(ids)).sum(axis=0)
    assert np.allclose(first[0], expected / np.linalg.norm(expected), atol=1e-6)
    assert not first[1].any() and not first[2].any()  # nothing to count: a zero vector, never NaN
    assert np.allclose(np.linalg.norm(first[3]), 1.0)
    assert embedder.count_tokens(["get_user_name"]) == [len(embedder.token_ids(["get_user_name"])[0])]


def test_int8_rows_keep_the_geometry(tmp_path: Path) -> None:
    embedder = StaticEmbedder(_model(tmp_path / "m", dim=64))
    original = np.random.default_rng(0).standard_normal((VOCAB, 64)).astype(np.float32)
    original[:104] = 0
    stored, wanted = embedder.rows(np.arange(104, VOCAB)), original[104:]
    cosine = (stored * wanted).sum(1) / (np.linalg.norm(stored, axis=1) * np.linalg.norm(wanted, axis=1))
    assert cosine.min() > 0.999


def test_fingerprint_follows_the_model_bytes(tmp_path: Path) -> None:
    a = StaticEmbedder(_model(tmp_path / "a", seed=1))
    again = StaticEmbedder(_model(tmp_path / "again", seed=1))
    b = StaticEmbedder(_model(tmp_path / "b", seed=2))
    assert a.fingerprint == again.fingerprint != b.fingerprint
    assert a.name == f"static:{tmp_path / 'a'}" and a.provenance["seed"] == 1


def test_a_broken_model_directory_is_named(tmp_path: Path) -> None:
    directory = _model(tmp_path / "m")
    (directory / "vectors.npz").unlink()
    with pytest.raises(UsageError, match=r"missing vectors\.npz"):
        StaticEmbedder(directory)
    directory = _model(tmp_path / "n")
    (directory / "config.json").write_text(json.dumps({"format": 99, "dim": 16, "max_tokens": 256}))
    with pytest.raises(ValidationError, match="format 99"):
        StaticEmbedder(directory)
    with pytest.raises(ValidationError, match="vocabulary"):
        write_model(tmp_path / "o", np.zeros((10, 4), np.float32), TOKENIZER, {})
