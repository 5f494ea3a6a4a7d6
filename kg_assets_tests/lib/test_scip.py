"""Our minimal SCIP reader, on indexes built with its own message classes and on real scip-python output."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from kg_assets.lib import scip
from kg_assets.lib.errors import NotFoundError, ValidationError
from kg_assets_tests.helpers import SCIP_PYTHON
from kg_assets_tests.sample_artifacts import scip_bytes


def fake_scip_python(directory: Path, *, fail: str = "", gate: Path | None = None) -> Path:
    """An executable standing in for scip-python: it writes its pid to `indexer.pid` beside itself, waits until
    `gate` exists (when given), then prints `fail` and exits 1, or writes a small SCIP index to its --output."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "fake.scip").write_bytes(scip_bytes(["a.py", "pkg/b.py"]))
    script = directory / "scip-python"
    script.write_text(
        f"""#!{sys.executable}
import os, sys, time
from pathlib import Path
here = Path(__file__).parent
(here / "indexer.pid").write_text(str(os.getpid()))
gate, give_up = {str(gate) if gate else ""!r}, time.monotonic() + 300
while gate and not Path(gate).exists() and time.monotonic() < give_up:
    time.sleep(0.02)
if {fail!r}:
    print({fail!r}, file=sys.stderr)
    sys.exit(1)
Path(sys.argv[sys.argv.index("--output") + 1]).write_bytes((here / "fake.scip").read_bytes())
"""
    )
    script.chmod(0o755)
    return script


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


@pytest.mark.skipif(not SCIP_PYTHON.exists() or not shutil.which("node"), reason="run scripts/setup.sh (npm ci)")
def test_reads_a_real_scip_python_index(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "__init__.py").write_text("")
    (repo / "pkg" / "shapes.py").write_text(
        'class Square:\n    """A square."""\n\n    def area(self, side: int) -> int:\n        return side * side\n'
    )
    out = tmp_path / "index.scip"
    with scip.ScipPythonRun(repo, out, "t", "0", _scratch(tmp_path)) as run:
        index = run.wait()
    assert scip.read_index(out) == index
    assert index.metadata.tool_info.name == "scip-python"
    docs = {d.relative_path: d for d in index.documents}
    assert "pkg/shapes.py" in docs
    defined = {occ.symbol for occ in docs["pkg/shapes.py"].occurrences if occ.symbol_roles & scip.ROLE_DEFINITION}
    assert any(s.endswith("`pkg.shapes`/Square#") for s in defined)
    assert any(s.endswith("`pkg.shapes`/Square#area().") for s in defined)


def test_run_returns_while_the_indexer_works_and_installs_its_output_on_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = tmp_path / "go"
    monkeypatch.setattr(scip, "scip_python_command", lambda: fake_scip_python(tmp_path / "bin", gate=gate))
    out = tmp_path / "index.scip"
    with scip.ScipPythonRun(tmp_path, out, "p", "1", _scratch(tmp_path)) as run:
        assert run.process.poll() is None and not out.exists()  # still indexing: the caller is free meanwhile
        gate.touch()
        index = run.wait()
    assert [d.relative_path for d in index.documents] == ["a.py", "pkg/b.py"]
    assert out.read_bytes() == (tmp_path / "bin" / "fake.scip").read_bytes()


def test_failing_indexer_raises_its_last_output_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_scip_python(tmp_path / "bin", fail="Error: cannot index pkg/b.py")
    monkeypatch.setattr(scip, "scip_python_command", lambda: fake)
    out = tmp_path / "index.scip"
    expected = r"^scip-python failed with exit code 1: Error: cannot index pkg/b\.py$"
    run = scip.ScipPythonRun(tmp_path, out, "p", "1", _scratch(tmp_path))
    with run, pytest.raises(ValidationError, match=expected):
        run.wait()
    assert not out.exists()


def test_closing_an_unfinished_run_kills_the_indexer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_scip_python(tmp_path / "bin", gate=tmp_path / "never")
    monkeypatch.setattr(scip, "scip_python_command", lambda: fake)
    with scip.ScipPythonRun(tmp_path, tmp_path / "index.scip", "p", "1", _scratch(tmp_path)) as run:
        pass
    assert run.process.returncode is not None
    assert not (tmp_path / "index.scip").exists()


def _scratch(tmp_path: Path) -> Path:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return scratch
