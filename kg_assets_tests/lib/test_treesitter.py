"""Tree-sitter chunking on real source files of every supported language: byte coverage, definitions, stable ids.

The sources are real code shipped by packages that setup installs: npm packages in node_modules (commander's
JavaScript, @jridgewell/sourcemap-codec's TypeScript, and shiki 0.14's code samples, excerpts of public projects
each naming its origin), pyarrow's C++ in the venv, git's own shell library, five small Debian packages that
`scripts/setup.sh` unpacks into build/lang-sources (Go, Rust, Ruby, PHP, Lua), and two npm tarballs it unpacks
there (Elixir from @snyk/snyk-hex-plugin, Zig from zigar-compiler).
"""

from __future__ import annotations

import itertools
import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow
import pytest

from kg_assets.lib import chunking, treesitter
from kg_assets.lib.embedding import MiniLMOnnx
from kg_assets.lib.languages import GRAMMARS, KEYWORDS, Grammar

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE = REPO_ROOT / "node_modules"
SAMPLES = NODE / "shiki" / "samples"
DEBIAN = REPO_ROOT / "build" / "lang-sources" / "usr" / "share"
NPM = REPO_ROOT / "build" / "lang-sources" / "npm"
GIT_SH_SETUP = Path(subprocess.run(["git", "--exec-path"], capture_output=True, text=True).stdout.strip())
BUDGET = 254

# language -> (directory, glob of a real source file in it, a qualified name that file defines)
SOURCES: dict[str, tuple[Path, str, str]] = {
    "javascript": (NODE, "commander/lib/command.js", "Command.option"),
    "typescript": (NODE, "@jridgewell/sourcemap-codec/src/sourcemap-codec.ts", "decode"),
    "tsx": (SAMPLES, "tsx.sample", "getStaticProps"),
    "go": (DEBIAN, "gocode/src/github.com/pkg/errors/errors.go", "fundamental.Error"),
    "java": (SAMPLES, "java.sample", "ObjectVarsAsParameters.alterPointee"),
    "rust": (DEBIAN, "cargo/registry/itoa-*/src/lib.rs", "Buffer.format"),
    "c": (SAMPLES, "c.sample", "qsort"),
    "cpp": (Path(pyarrow.__file__).parent, "src/arrow/python/filesystem.cc", "arrow.py.fs.PyFileSystem.Make"),
    "csharp": (SAMPLES, "csharp.sample", "KCTest.API.Program.CreateHostBuilder"),
    "ruby": (
        DEBIAN,
        "rubygems-integration/all/gems/did_you_mean-*/lib/did_you_mean/spell_checker.rb",
        "DidYouMean.SpellChecker.correct",
    ),
    "php": (DEBIAN, "php/Psr/Log/LoggerTrait.php", "LoggerTrait.emergency"),
    "kotlin": (SAMPLES, "kotlin.sample", "Greeter.greet"),
    "swift": (SAMPLES, "swift.sample", "Residence.printNumberOfRooms"),
    "scala": (SAMPLES, "scala.sample", "Date"),
    "lua": (DEBIAN, "lua/5.1/inspect.lua", "smartQuote"),
    "shell": (GIT_SH_SETUP, "git-sh-setup", "require_clean_work_tree"),
    "elixir": (  # `defimpl Snyk.JSON.Encoder, for: Tuple`: the module Snyk.JSON.Encoder.Tuple
        NPM,
        "snyk-snyk-hex-plugin-*/package/elixirsrc/lib/json/lib/json/encoder/default_implementations.ex",
        "Snyk.JSON.Encoder.Tuple.encode",
    ),
    "haskell": (SAMPLES, "haskell.sample", "getHomeR"),
    "zig": (NPM, "zigar-compiler-*/package/zig/meta.zig", "default.isFieldString"),  # `const default = struct {`
}
EXTENSION = {language: ext for ext, language in reversed(chunking.LANGUAGES.items())}


@pytest.fixture(scope="module")
def counter() -> chunking.TokenCounter:
    return MiniLMOnnx().count_tokens


def source(language: str) -> Path:
    base, pattern, _ = SOURCES[language]
    found = sorted(base.glob(pattern))
    if not found:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{base / pattern} is missing: scripts/setup.sh installs it")
        pytest.skip(f"{base / pattern} is missing: run scripts/setup.sh (npm ci, Debian sources in build/)")
    return found[-1]


def test_every_table_language_has_a_loading_grammar_an_extension_and_keywords() -> None:
    assert set(SOURCES) == set(GRAMMARS)
    for language in GRAMMARS:
        assert treesitter.grammar_available(language), language
        assert language in EXTENSION and KEYWORDS[language], language
        assert all(word == word.lower() and word.isascii() for word in KEYWORDS[language])


@pytest.mark.parametrize("language", sorted(SOURCES))
def test_real_source_is_partitioned_into_definition_chunks_with_stable_ids(
    language: str, counter: chunking.TokenCounter
) -> None:
    path = source(language)
    data = path.read_bytes()
    uri = f"src/{path.stem}{EXTENSION[language]}"
    chunks = chunking.chunk_file(uri, data, counter, BUDGET)
    assert {c.language for c in chunks} == {language}
    spans = [(c.start_byte, c.end_byte) for c in chunks]
    assert spans[0][0] == 0 and spans[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert b"".join(data[s:e] for s, e in spans) == data
    symbols = [s for c in chunks for s in c.symbols]
    assert all(s and " " not in s for s in symbols)
    assert SOURCES[language][2] in symbols, symbols
    for before, chunk in itertools.pairwise(chunks):
        first = chunk.text.lstrip("\n").split("\n", 1)[0].strip()
        if first.startswith(("* ", "*/")) or first == "*":  # inside a block comment: only one over budget alone
            assert "*/" not in before.text, f"{uri}:{chunk.start_line} starts in a comment"
    for chunk in chunks:
        if chunk.end_line > chunk.start_line:  # a single line may exceed the budget; nothing else does
            assert sum(counter(chunk.text.splitlines(keepends=True))) <= BUDGET
    for chunk in chunks:  # a split definition's names go with its own line, not with a doc comment above it
        for symbol in chunk.symbols:
            assert symbol.rsplit(".", 1)[-1] in chunk.text, f"{uri}:{chunk.start_line} carries {symbol}"
    again = chunking.chunk_file(uri, data, counter, BUDGET)
    assert [c.chunk_id for c in again] == [c.chunk_id for c in chunks]
    assert [c.symbols for c in again] == [c.symbols for c in chunks]


def test_doc_comments_and_attributes_stay_with_their_definition(counter: chunking.TokenCounter) -> None:
    # Budget so small that every method is its own chunk: each starts at its docblock, not inside it.
    chunks = chunking.chunk_file("LoggerTrait.php", source("php").read_bytes(), counter, 100)
    emergency = next(c for c in chunks if "LoggerTrait.emergency" in c.symbols)
    assert emergency.text.lstrip().startswith("/**") and "System is unusable" in emergency.text
    assert "function emergency(" in emergency.text
    rust = chunking.chunk_file("lib.rs", source("rust").read_bytes(), counter, 60)
    new = next(c for c in rust if "Buffer.new" in c.symbols)  # `/// doc` and `#[inline]` above `pub fn new`
    assert new.text.lstrip().startswith("/// This is a cheap operation") and "#[inline]" in new.text


def test_a_definition_split_after_its_doc_comment_carries_its_names_on_its_own_line(
    counter: chunking.TokenCounter,
) -> None:
    # Too small for docblock and method together: the docblock is a piece of its own, the method the next one.
    chunks = chunking.chunk_file("LoggerTrait.php", source("php").read_bytes(), counter, 60)
    index = next(i for i, c in enumerate(chunks) if "LoggerTrait.emergency" in c.symbols)
    assert "function emergency(" in chunks[index].text
    assert chunks[index - 1].text.lstrip().startswith("/**") and not chunks[index - 1].symbols


def test_small_definitions_share_a_chunk_and_a_big_scope_splits_into_members(counter: chunking.TokenCounter) -> None:
    chunks = chunking.chunk_file("command.js", source("javascript").read_bytes(), counter, BUDGET)
    assert any(len(c.symbols) > 1 for c in chunks)
    holding = [c for c in chunks if any(s.startswith("Command.") for s in c.symbols)]
    assert len(holding) > 10  # the class is far over budget: its methods are chunks of their own


def test_a_language_whose_grammar_wheel_is_missing_falls_back_to_line_windows(
    tmp_path: Path, counter: chunking.TokenCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(GRAMMARS, "cobol", Grammar("tree_sitter_cobol_not_installed", functions=("paragraph",)))
    monkeypatch.setitem(chunking.LANGUAGES, ".cob", "cobol")
    (tmp_path / "pay.cob").write_text("IDENTIFICATION DIVISION.\nPROGRAM-ID. PAY.\n" * 40)
    result = chunking.chunk_repository(tmp_path, counter, BUDGET)
    assert result.fallback_languages == {"cobol"} and result.files == {"pay.cob": "cobol"}
    assert len(result.chunks) > 1 and all(not c.symbols for c in result.chunks)


def test_vendored_generated_and_minified_files_are_skipped_with_reasons_and_globs_choose(
    tmp_path: Path, counter: chunking.TokenCounter
) -> None:
    repo = tmp_path / "repo"
    files = {
        "src/errors.go": source("go").read_bytes(),
        "src/command.js": source("javascript").read_bytes(),
        "dist/command.js": source("javascript").read_bytes(),
        "node_modules/commander/index.js": b"module.exports = 1;\n",
        "web/app.min.js": b"var a=1;\n",
        "web/app.js.map": b'{"version":3}\n',
        "web/bundle.js": b"!function(){" + b"var a=1;" * 400 + b"}();\n",
        "package-lock.json": b"{}\n",
        "go.sum": b"example.com v1 h1:x\n",
        "api/service_pb2.py": b"X = 1\n",
    }
    for uri, data in files.items():
        (repo / uri).parent.mkdir(parents=True, exist_ok=True)
        (repo / uri).write_bytes(data)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "-A", "-f"], check=True)
    result = chunking.chunk_repository(repo, counter, BUDGET)
    assert sorted(result.files) == ["src/command.js", "src/errors.go"]
    summary = chunking.skipped_summary(result.skipped)
    assert summary["vendored, build or environment directory (dist/)"]["examples"] == ["dist/command.js"]
    assert summary["vendored, build or environment directory (node_modules/)"]["count"] == 1
    assert summary["minified code or source map"] == {"count": 2, "examples": ["web/app.js.map", "web/app.min.js"]}
    assert summary["lock file"]["count"] == 2 and summary["generated code"]["count"] == 1
    assert any(reason.startswith("long lines") for reason in summary)
    chosen = chunking.chunk_repository(repo, counter, BUDGET, include=["dist/*", "*.go"], exclude=["src/*"])
    assert sorted(chosen.files) == ["dist/command.js"]
    assert chosen.skipped["src/errors.go"] == "excluded (--exclude)"
    assert chosen.skipped["go.sum"] == "not included (--include)"


def test_a_file_cut_inside_a_definition_still_partitions_and_keeps_the_definitions_before_it(
    counter: chunking.TokenCounter,
) -> None:
    data = source("go").read_bytes()
    cut = data[: data.index(b"func (w *withStack) Format")] + b"func (w *withStack) Format(s fmt.State, verb rune) {\n"
    chunks = chunking.chunk_file("errors.go", cut, counter, BUDGET)
    assert b"".join(c.text.encode() for c in chunks) == cut
    symbols = {s for c in chunks for s in c.symbols}
    assert {"New", "fundamental.Error", "withStack.Cause"} <= symbols


def test_a_header_is_chunked_as_cpp_when_its_content_is_cpp(counter: chunking.TokenCounter) -> None:
    cpp = Path(pyarrow.__file__).parent / "src" / "arrow" / "python" / "filesystem.h"
    chunks = chunking.chunk_file("include/filesystem.h", cpp.read_bytes(), counter, BUDGET)
    assert {c.language for c in chunks} == {"cpp"}
    symbols = {s for c in chunks for s in c.symbols}  # `class ARROW_PYTHON_EXPORT PyFileSystem : public ...`
    assert {"arrow.py.fs.PyFileSystemVtable", "arrow.py.fs.PyFileSystem"} <= symbols
    c_header = Path(np.get_include()) / "numpy" / "npy_common.h"
    assert {c.language for c in chunking.chunk_file("npy_common.h", c_header.read_bytes(), counter, BUDGET)} == {"c"}
