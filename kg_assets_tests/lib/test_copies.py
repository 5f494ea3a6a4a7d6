"""Copies of one file side by side, on a small real two-version tree: `packaging` 26.x (installed with the
project) beside the 21.3 copy setuptools vendors, as `v26/packaging` and `v21/packaging`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import packaging
import pytest
import setuptools

from kg_assets.lib import catalog
from kg_assets.lib.copies import FileCopies, find_copies
from kg_assets.lib.lifecycle import CATALOG_FILE, LifecycleRoot
from kg_assets.lib.retrieval import VersionHandle
from kg_assets_tests.cli.test_indexctl import indexctl

MODULES = ("version.py", "utils.py", "tags.py", "_structures.py")
OLD = Path(setuptools.__file__).parent / "_vendor" / "packaging"


def _tree(repo: Path) -> Path:
    for name, source in (("v26", Path(packaging.__file__).parent), ("v21", OLD)):
        (repo / name / "packaging").mkdir(parents=True)
        for module in MODULES:
            shutil.copyfile(source / module, repo / name / "packaging" / module)
    return repo


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[LifecycleRoot, Path]:
    """Version `p1` built from the two-version tree; (root, repo)."""
    if not (OLD / "version.py").is_file() or packaging.__version__.split(".")[0] == "21":
        pytest.skip("needs setuptools' vendored packaging 21 beside a newer packaging")
    base = tmp_path_factory.mktemp("copies")
    repo = _tree(base / "repo")
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CODEINTEL_INDEXES_DIR", "KG_EVAL_DIR")}
    env["KG_INDEXES_DIR"] = str(base / "indexes")
    done = indexctl(env, "build", "p1", "--repo", str(repo))
    assert done.returncode == 0, done.stderr
    return LifecycleRoot(base / "indexes"), repo


def test_each_module_of_the_old_version_is_a_copy_of_the_newest(tmp_path: Path) -> None:
    repo = _tree(tmp_path)
    files = {p.relative_to(repo).as_posix(): p.read_text() for p in repo.rglob("*.py")}
    rows = {r["uri"]: r for r in find_copies(files).to_pylist()}
    for module in MODULES:
        old, new = f"v21/packaging/{module}", f"v26/packaging/{module}"
        assert rows[old]["canonical"] == rows[new]["canonical"] == new
        assert "v21" in rows[old]["distinct_words"] and "v26" in rows[new]["distinct_words"]
    copies = FileCopies([(r["uri"], r["canonical"], r["distinct_words"]) for r in rows.values()])
    assert copies.preferred("v21/packaging/tags.py", {"tag", "platform"}) == "v26/packaging/tags.py"
    assert copies.preferred("v26/packaging/tags.py", {"tag", "v21"}) == "v21/packaging/tags.py"


def test_same_named_files_that_are_not_copies_stay_apart() -> None:
    head = "int uv_dlopen(const char* filename, uv_lib_t* lib) {\n"
    unix = head + "  dlerror();\n  lib->handle = dlopen(filename);\n"
    win = head + "  WCHAR buf[MAX_PATH];\n  lib->handle = LoadLibraryW(buf);\n"
    files = {
        "src/unix/dl.c": unix + "  return 0;\n}\n" * 3,
        "src/win/dl.c": win + "  return 0;\n}\n" * 3,
        "lib/a/utils.go": "package a\n\nfunc Split(s string) []string {\n\treturn nil\n}\n\nfunc Join() {}\n",
        "lib/b/utils.go": "package b\n\nfunc Max(a, b int) int {\n\treturn a\n}\n\nfunc Min() {}\n",
    }
    assert find_copies(files).num_rows == 0


def test_search_answers_with_the_copy_the_question_points_to(two_versions: tuple[LifecycleRoot, Path]) -> None:
    root, _ = two_versions
    with catalog.connect_read_only(root.version_dir("p1") / CATALOG_FILE) as con:
        recorded = dict(con.execute("SELECT uri, canonical FROM file_copies").fetchall())
    assert recorded["v21/packaging/version.py"] == "v26/packaging/version.py"
    with VersionHandle.open(root, "p1") as handle:
        plain = handle.search("parse a version string and compare two versions", 10)
        old = handle.search("in v21, parse a version string and compare two versions", 10)
    for hits, wanted, other in ((plain, "v26/", "v21/"), (old, "v21/", "v26/")):
        uris = [h.uri for h in hits]
        assert uris[0].startswith(wanted), uris
        for rank, uri in enumerate(uris):  # a copy the question does not mean only follows the one it does
            if uri.startswith(other):
                assert uri.replace(other, wanted) in uris[:rank], uris
