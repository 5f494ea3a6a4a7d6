"""The lexical channel: code-aware tokens and BM25 against the formula computed by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from kg_assets.lib.errors import ValidationError
from kg_assets.lib.lexical import K1, B, LexicalIndex, code_tokens, document_tokens, path_tokens


def test_identifiers_are_kept_whole_and_split_at_case_underscores_and_digits() -> None:
    tokens = code_tokens("parseConfig url_for HTTPServer2 os.path")
    assert {"parseconfig", "pars", "config", "url_for", "url", "httpserver2", "http", "serv", "os", "path"} <= set(
        tokens
    )


def test_keywords_of_the_chunk_language_and_english_function_words_are_not_content() -> None:
    assert code_tokens("def return while lambda self", "python") == []
    assert "return" in code_tokens("return the value", "markdown")  # prose keeps the word
    assert code_tokens("what does the router do") == ["rout"]


def test_stemming_meets_prose_and_code_halfway() -> None:
    assert set(code_tokens("routing routes router route")) == {"rout"}
    assert set(code_tokens("files file filed")) == {"fil"}
    assert code_tokens("libraries") == ["library"]
    assert code_tokens("class")[0] == "class"  # not "clas": double s is kept


def test_paths_and_defined_names_are_fields_of_the_document() -> None:
    assert path_tokens("src/flask/json/provider.py") == ["src", "flask", "json", "provid"]
    doc = document_tokens("pkg/sessions.py", "python", "x = 1", ["Session.merge"])
    assert (doc.count("session"), doc.count("merg"), doc.count("pkg"), doc.count("x")) == (6, 3, 3, 0)


def _bm25(docs: list[list[str]], query: list[str]) -> np.ndarray:
    """BM25 (Lucene idf) straight from its definition, one document at a time."""
    n, avg = len(docs), sum(map(len, docs)) / len(docs)
    scores = np.zeros(n)
    for term in set(query):
        df = sum(term in d for d in docs)
        if not df:
            continue
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        for i, d in enumerate(docs):
            tf = d.count(term)
            scores[i] += idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * len(d) / avg)) if tf else 0.0
    return scores


def test_scores_are_bm25_and_survive_a_save_and_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(30)]
    docs = [list(rng.choice(vocab, size=rng.integers(1, 40))) for _ in range(200)]
    ids = rng.permutation(10_000)[:200].astype(np.int64)
    index = LexicalIndex.build(ids, docs)
    index.save(tmp_path / "lexical.npz")
    loaded = LexicalIndex.load(tmp_path / "lexical.npz")
    for query in (["w1"], ["w2", "w3", "w3"], ["w4", "nothing"]):
        expected = _bm25(docs, query)
        np.testing.assert_allclose(loaded.scores(query), expected, rtol=1e-5)
        scores, found = loaded.top(query, 5)
        best = np.argsort(-expected, kind="stable")[:5]
        np.testing.assert_allclose(scores, expected[best], rtol=1e-5)
        assert set(found) <= set(ids[expected > 0])


def test_search_pads_with_minus_one_when_few_chunks_share_a_token() -> None:
    index = LexicalIndex.build(np.array([7, 8]), [["alpha"], ["beta"]])
    scores, ids = index.search(["alpha", "nothing here"], 2)
    assert ids.tolist() == [[7, -1], [-1, -1]] and scores[0, 0] > 0


def test_a_file_that_is_not_a_lexical_index_is_a_validation_error(tmp_path: Path) -> None:
    (tmp_path / "lexical.npz").write_bytes(b"not a zip")
    with pytest.raises(ValidationError, match="not a readable lexical index"):
        LexicalIndex.load(tmp_path / "lexical.npz")
