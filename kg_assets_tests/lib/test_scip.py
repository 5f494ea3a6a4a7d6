"""Our minimal SCIP reader, on indexes built with its own message classes and on real scip-python output."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kg_assets.lib import scip
from kg_assets.lib.errors import NotFoundError, ValidationError
from kg_assets_tests.sample_artifacts import scip_bytes

REPO = Path(__file__).resolve().parents[2]
SCIP_PYTHON = REPO / "node_modules" / ".bin" / "scip-python"


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
    (tmp_path / "env.json").write_text("[]")
    out = tmp_path / "index.scip"
    cmd = [str(SCIP_PYTHON), "index", "--cwd", str(repo), "--project-name", "t", "--project-version", "0"]
    cmd += ["--output", str(out), "--environment", str(tmp_path / "env.json")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    index = scip.read_index(out)
    assert index.metadata.tool_info.name == "scip-python"
    docs = {d.relative_path: d for d in index.documents}
    assert "pkg/shapes.py" in docs
    defined = {occ.symbol for occ in docs["pkg/shapes.py"].occurrences if occ.symbol_roles & scip.ROLE_DEFINITION}
    assert any(s.endswith("`pkg.shapes`/Square#") for s in defined)
    assert any(s.endswith("`pkg.shapes`/Square#area().") for s in defined)
