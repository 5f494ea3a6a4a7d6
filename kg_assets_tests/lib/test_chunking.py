"""Chunking a small real repository: boundaries, coverage, ids and budgets."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kg_assets.lib import chunking
from kg_assets.lib.embedding import MiniLMOnnx
from kg_assets_tests.hostile_repo import link_indexed_directory_outside
from kg_assets_tests.sample_repo import write_repo

BUDGET = 120


@pytest.fixture(scope="module")
def counter() -> chunking.TokenCounter:
    return MiniLMOnnx().count_tokens


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return write_repo(tmp_path / "repo")


def test_walk_skips_ignored_vendored_and_binary_files(repo: Path, counter: chunking.TokenCounter) -> None:
    result = chunking.chunk_repository(repo, counter, BUDGET)
    assert sorted(result.files) == [
        ".gitignore",
        "README.md",
        "generated_big.py",
        "latin1.txt",
        "parsing.py",
        "shapes/geometry.py",
    ]
    assert result.skipped == {"logo.png": "binary", "shapes/__init__.py": "empty"}


def test_every_byte_of_each_python_file_is_in_exactly_one_chunk(repo: Path, counter: chunking.TokenCounter) -> None:
    result = chunking.chunk_repository(repo, counter, BUDGET)
    for uri in ("parsing.py", "shapes/geometry.py", "generated_big.py"):
        data = (repo / uri).read_bytes()
        spans = sorted((c.start_byte, c.end_byte) for c in result.chunks if c.uri == uri)
        assert spans[0][0] == 0 and spans[-1][1] == len(data)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
        assert b"".join(data[s:e] for s, e in spans) == data


def test_chunks_follow_definitions_and_fit_the_budget(repo: Path, counter: chunking.TokenCounter) -> None:
    result = chunking.chunk_repository(repo, counter, BUDGET)
    by_symbol = {s: c for c in result.chunks for s in c.symbols}
    assert {"Circle", "Circle.area", "Circle.circumference", "hypotenuse", "parse_config"} <= set(by_symbol)
    hyp = by_symbol["hypotenuse"]
    assert "def hypotenuse" in hyp.text and hyp.text.count("def hypotenuse") == 1
    assert "ORIGIN" in "".join(c.text for c in result.chunks if c.uri == "shapes/geometry.py")
    big = [c for c in result.chunks if c.uri == "generated_big.py"]
    assert len(big) > 5  # the oversized module and the long function were split
    for chunk in result.chunks:
        assert sum(counter(chunk.text.splitlines(keepends=True))) <= BUDGET or chunk.end_line == chunk.start_line
    long_pieces = [c for c in big if "total +=" in c.text]
    assert len(long_pieces) > 1  # split at blank lines inside the function
    assert all(c.text.endswith("\n") for c in long_pieces)


def test_ids_are_stable_across_runs_and_clones(repo: Path, tmp_path: Path, counter: chunking.TokenCounter) -> None:
    first = chunking.chunk_repository(repo, counter, BUDGET)
    clone = tmp_path / "elsewhere" / "clone"
    shutil.copytree(repo, clone)
    second = chunking.chunk_repository(clone, counter, BUDGET)
    assert [(c.chunk_id, c.uri, c.start_byte, c.end_byte) for c in first.chunks] == [
        (c.chunk_id, c.uri, c.start_byte, c.end_byte) for c in second.chunks
    ]
    ids = [c.chunk_id for c in first.chunks]
    assert len(set(ids)) == len(ids)
    assert all(-(2**63) <= i < 2**63 for i in ids)


def test_chunk_id_format() -> None:
    # 8-byte BLAKE2b of "uri|start|end", little-endian, as signed int64 (the original tool's format).
    import hashlib

    digest = hashlib.blake2b(b"a/b.py|0|10", digest_size=8).digest()
    assert chunking.chunk_id_for("a/b.py", 0, 10) == int.from_bytes(digest, "little", signed=True)


def test_non_utf8_text_is_kept_with_exact_bytes(repo: Path, counter: chunking.TokenCounter) -> None:
    result = chunking.chunk_repository(repo, counter, BUDGET)
    (chunk,) = [c for c in result.chunks if c.uri == "latin1.txt"]
    assert chunk.end_byte == (repo / "latin1.txt").stat().st_size
    assert chunk.text.startswith("caf\ufffd")


def test_git_repositories_are_walked_with_git(repo: Path, counter: chunking.TokenCounter) -> None:
    if not shutil.which("git"):
        pytest.skip("git not installed")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "untracked_ok.py").write_text("X = 1\n")
    files = chunking.list_files(repo)
    assert "untracked_ok.py" in files and "debug.log" not in files and "ignored/skip.py" not in files
    assert not any(f.startswith("node_modules/") for f in files)


def test_syntax_errors_fall_back_to_line_windows(counter: chunking.TokenCounter) -> None:
    data = b"def broken(:\n    pass\n" * 40
    chunks = chunking.chunk_file("bad.py", data, counter, 50)
    assert b"".join(data[c.start_byte : c.end_byte] for c in chunks) == data
    assert all(c.symbols == () for c in chunks)


def test_a_directory_ignored_by_an_enclosing_repository_is_walked(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("build/\n")
    inner = tmp_path / "build" / "checkout"
    (inner / "pkg").mkdir(parents=True)
    (inner / "pkg" / "mod.py").write_text("def f():\n    return 1\n")
    (inner / ".gitignore").write_text("*.log\n")
    (inner / "run.log").write_text("noise\n")
    assert chunking.list_files(inner) == [".gitignore", "pkg/mod.py"]


def test_files_git_lists_through_a_symlinked_directory_are_never_read(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.py").write_text("TOKEN = 'outside-secret-123'\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "ok.py").write_text("def ok():\n    return 1\n")
    link_indexed_directory_outside(repo, "sub", outside)
    os.mkfifo(repo / "fifo.py")  # listed as untracked: refused, never waited on
    result = chunking.chunk_repository(repo, lambda texts: [len(t) // 4 + 1 for t in texts], 200)
    assert "sub/secret.py" in chunking.list_files(repo)  # git lists it ...
    assert result.skipped["sub/secret.py"].startswith("a symlink on its path")  # ... it is not read
    assert sorted(result.files) == ["ok.py"]
    assert not any("outside-secret" in c.text for c in result.chunks)
