"""SCIP: our minimal reader on indexes built with its own message classes, and the real indexers (scip-python,
scip-typescript) on real sources, run, checked, merged and split by indexer."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from kg_assets.lib import chunking, errors, scip
from kg_assets.lib.errors import NotFoundError, ValidationError
from kg_assets_tests.helpers import REPO, SCIP_PYTHON
from kg_assets_tests.sample_artifacts import scip_bytes


def fake_scip_python(directory: Path, *, fail: str = "") -> Path:
    """An executable standing in for scip-python where no real input makes it fail: it prints `fail` and exits 1,
    or writes a small SCIP index to its --output."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "fake.scip").write_bytes(scip_bytes(["a.py", "pkg/b.py"]))
    script = directory / "scip-python"
    script.write_text(
        f"""#!{sys.executable}
import sys
from pathlib import Path
if {fail!r}:
    print({fail!r}, file=sys.stderr)
    sys.exit(1)
Path(sys.argv[sys.argv.index("--output") + 1]).write_bytes((Path(__file__).parent / "fake.scip").read_bytes())
"""
    )
    script.chmod(0o755)
    return script


def use_fake_scip_python(monkeypatch: pytest.MonkeyPatch, fake: Path) -> None:
    """Make the build run `fake` as scip-python (the other indexers stay real)."""
    real = scip.indexer_command
    monkeypatch.setattr(
        scip, "indexer_command", lambda indexer: fake if indexer.name == "scip-python" else real(indexer)
    )


def test_reader_round_trips_documents_occurrences_and_definitions(tmp_path: Path) -> None:
    path = tmp_path / "index.scip"
    path.write_bytes(scip_bytes(["a.py", "pkg/b.py"]))
    index = scip.read_index(path)
    assert [d.relative_path for d in index.documents] == ["a.py", "pkg/b.py"]
    assert list(index.documents[1].occurrences[0].range) == [0, 4, 0, 8]
    summary = scip.summarize(index)
    assert (summary.tool_name, summary.documents, summary.occurrences, summary.definitions) == (
        "kg-assets-tests",
        2,
        4,
        2,
    )


@pytest.mark.parametrize("data", [b"", b"\xff\xff\xff\xff", os.urandom(64) + b"\x0a\xff"])
def test_non_scip_bytes_are_a_validation_error(data: bytes) -> None:
    with pytest.raises(ValidationError, match="not a SCIP index"):
        scip.parse_index(data)


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        scip.read_index(tmp_path / "nope.scip")


PYTHON, TYPESCRIPT = scip.INDEXERS[0], scip.INDEXERS[1]
NODE_MODULES = REPO / "node_modules"
COMMANDER = NODE_MODULES / "commander" / "lib"  # real JavaScript (a CommonJS package)
SOURCEMAP_CODEC = NODE_MODULES / "@jridgewell" / "sourcemap-codec" / "src"  # real TypeScript (ES modules)
needs_indexers = pytest.mark.skipif(
    not (SCIP_PYTHON.exists() and (NODE_MODULES / ".bin" / "scip-typescript").exists() and shutil.which("node")),
    reason="run scripts/setup.sh (npm ci) for scip-python and scip-typescript",
)


def run_indexer(
    indexer: scip.Indexer, src: Path, scratch: Path, files: tuple[str, ...] = (), **bounds: float
) -> scip.IndexerRun:
    """A run of the real `indexer` over `files` of `src` (default: every file of its languages there); `bounds`:
    `timeout`, `memory_bytes`."""
    scratch.mkdir(parents=True, exist_ok=True)
    files = files or tuple(
        sorted(str(p.relative_to(src)) for p in src.rglob("*") if chunking.language_of(p.name) in indexer.languages)
    )
    job = scip.IndexJob(src, files, scratch / "index.scip", "t", "0", scratch)
    command = scip.indexer_command(indexer)
    assert command is not None
    return scip.IndexerRun(indexer, command, job, **bounds)


def copy_tree(files: dict[str, Path], dest: Path) -> Path:
    for uri, path in files.items():
        (dest / uri).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest / uri)
    return dest


def definitions(doc: object) -> set[str]:
    return {occ.symbol for occ in doc.occurrences if occ.symbol_roles & scip.ROLE_DEFINITION}  # type: ignore[attr-defined]


@needs_indexers
def test_reads_a_real_scip_python_index_and_names_its_documents_language(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "__init__.py").write_text("")
    (repo / "pkg" / "shapes.py").write_text(
        'class Square:\n    """A square."""\n\n    def area(self, side: int) -> int:\n        return side * side\n'
    )
    with run_indexer(PYTHON, repo, tmp_path / "scratch") as run:
        index = run.wait()
    assert index.metadata.tool_info.name == "scip-python"
    docs = {d.relative_path: d for d in index.documents}
    assert "pkg/shapes.py" in docs and {d.language for d in index.documents} == {"Python"}
    defined = definitions(docs["pkg/shapes.py"])
    assert any(s.endswith("`pkg.shapes`/Square#") for s in defined)
    assert any(s.endswith("`pkg.shapes`/Square#area().") for s in defined)


@needs_indexers
@pytest.mark.parametrize(
    ("bounds", "error"),
    [
        ({"timeout": 0.5}, r"^scip-python was stopped: it did not finish within its time limit of 0\.5 s$"),
        ({"memory_bytes": 40 << 20}, r"^scip-python was stopped: it used \d+ MiB, over its memory limit of 40 MiB$"),
    ],
)
def test_an_indexer_past_its_time_or_memory_limit_is_stopped_with_a_clear_error(
    tmp_path: Path, bounds: dict[str, float], error: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "mod.py").write_text("".join(f"def f{i}(x: int) -> int:\n    return x + {i}\n" for i in range(2000)))
    started = time.monotonic()
    with run_indexer(PYTHON, src, tmp_path / "scratch", **bounds) as run, pytest.raises(ValidationError, match=error):
        run.wait()
    assert time.monotonic() - started < 10 and run.process.poll() is not None


@needs_indexers
def test_scip_python_ignores_pyright_configuration_above_its_copy(tmp_path: Path) -> None:
    # The README's demo: the lifecycle root (and so the scratch copy) inside a repository whose pyproject.toml has
    # [tool.pyright]; scip-python took that configuration and indexed none of the copy's files, exit code 0.
    (tmp_path / "pyproject.toml").write_text('[tool.pyright]\ninclude = ["kg_assets"]\n')
    src = tmp_path / "indexes" / ".scratch" / "src"
    src.mkdir(parents=True)
    (src / "mod.py").write_text("def f(x: int) -> int:\n    return x\n")
    with run_indexer(PYTHON, src, src.parent / "scip-python") as run:
        index = run.wait()
    assert [d.relative_path for d in index.documents] == ["mod.py"]


@needs_indexers
def test_an_indexer_that_indexes_none_of_its_files_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "data.txt").write_text("not python\n")
    with (
        run_indexer(PYTHON, src, tmp_path / "scratch", ("gone.py",)) as run,
        pytest.raises(ValidationError, match=r"^scip-python indexed none of the 1 files it was given \(gone\.py, "),
    ):
        run.wait()


@needs_indexers
def test_scip_typescript_indexes_real_javascript_and_typescript_with_cross_file_references(tmp_path: Path) -> None:
    # commander's JavaScript (CommonJS `require`) and sourcemap-codec's TypeScript (ES imports) side by side, with
    # no tsconfig.json nor package.json of their own: the indexer's project lists the files, JavaScript included.
    files = {f"js/{name}": COMMANDER / name for name in ("command.js", "option.js", "argument.js", "help.js")}
    files |= {f"ts/{p.name}": p for p in sorted(SOURCEMAP_CODEC.glob("*.ts"))}
    src = copy_tree(files, tmp_path / "src")
    with run_indexer(TYPESCRIPT, src, tmp_path / "scratch") as run:
        index = run.wait()
    assert index.metadata.tool_info.name == "scip-typescript"
    docs = {d.relative_path: d for d in index.documents}
    assert set(docs) == set(files)
    assert {docs["js/command.js"].language, docs["ts/vlq.ts"].language} == {"JavaScript", "TypeScript"}
    option_class = next(s for s in definitions(docs["js/option.js"]) if s.endswith("`option.js`/Option#"))
    assert option_class.startswith("scip-typescript npm t 0 js/")  # the package is the project, as scip-python's
    used = {o.symbol for o in docs["js/command.js"].occurrences if not o.symbol_roles & scip.ROLE_DEFINITION}
    assert option_class in used  # `new Option(...)` in command.js refers to the class option.js defines
    encode = next(s for s in definitions(docs["ts/vlq.ts"]) if s.endswith("/encodeInteger()."))
    assert encode in {o.symbol for o in docs["ts/sourcemap-codec.ts"].occurrences}  # imported from './vlq'


@needs_indexers
def test_an_indexer_exiting_non_zero_is_a_validation_error_with_its_last_line(tmp_path: Path) -> None:
    # scip-typescript exits 1 when its project holds no file: its own failure, not one made up for the test
    (tmp_path / "src").mkdir()
    expected = r"^scip-typescript failed with exit code 1: error: no files got indexed"
    run = run_indexer(TYPESCRIPT, tmp_path / "src", tmp_path / "scratch", files=())
    with run, pytest.raises(ValidationError, match=expected):
        run.wait()
    assert not (tmp_path / "scratch" / "index.scip").exists()


@needs_indexers
def test_a_run_returns_at_once_and_closing_it_unfinished_kills_the_indexer(tmp_path: Path) -> None:
    src = copy_tree({"command.js": COMMANDER / "command.js"}, tmp_path / "src")
    with run_indexer(TYPESCRIPT, src, tmp_path / "scratch") as run:
        assert run.process.poll() is None  # still starting: the caller is free meanwhile
    assert run.process.returncode == -signal.SIGKILL


@needs_indexers
def test_merged_parts_keep_every_document_and_each_indexers_part_comes_back_out(tmp_path: Path) -> None:
    py = copy_tree({"pkg/errors.py": Path(errors.__file__)}, tmp_path / "py")
    js = copy_tree({"js/option.js": COMMANDER / "option.js"}, tmp_path / "js")
    with run_indexer(PYTHON, py, tmp_path / "s1") as a, run_indexer(TYPESCRIPT, js, tmp_path / "s2") as b:
        python, typescript = a.wait(), b.wait()
    merged = scip.parse_index(scip.merge([python, typescript]).SerializeToString())
    assert merged.metadata == python.metadata  # the first indexer's metadata
    assert [d.relative_path for d in merged.documents] == ["pkg/errors.py", "js/option.js"]
    for indexer, index in ((PYTHON, python), (TYPESCRIPT, typescript)):
        part = scip.part_of(merged, indexer)
        assert list(part.documents) == list(index.documents)
        assert list(part.external_symbols) == [s for s in index.external_symbols if not s.symbol.startswith("local ")]


def test_an_indexer_not_bundled_and_not_on_the_path_is_skipped_a_bundled_one_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "")
    absent = scip.Indexer("kg-no-such-indexer", ("go",), lambda job: [], "kg")
    assert scip.indexer_command(absent) is None
    with pytest.raises(NotFoundError, match=r"kg-no-such-indexer is not installed: run scripts/setup\.sh"):
        scip.indexer_command(dataclasses.replace(absent, bundled=True))
