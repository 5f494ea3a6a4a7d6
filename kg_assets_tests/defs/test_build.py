"""The build assets on a small real repository: real MiniLM embeddings, scip-python, FAISS and DuckDB."""

from __future__ import annotations

import glob
import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kg_assets.cli import runs
from kg_assets.lib import build, catalog, scip
from kg_assets.lib.errors import ValidationError
from kg_assets.lib.lifecycle import CATALOG_FILE, SCIP_FILE, LifecycleRoot
from kg_assets.lib.search import search_version
from kg_assets.lib.symbols import SymbolTable
from kg_assets_tests.helpers import SCIP_PYTHON, run_build
from kg_assets_tests.lib.test_scip import COMMANDER, fake_scip_python, use_fake_scip_python
from kg_assets_tests.sample_repo import write_repo

pytestmark = pytest.mark.skipif(not SCIP_PYTHON.exists(), reason="run scripts/setup.sh (npm ci) for scip-python")


def materializations(result: Any) -> dict[str, dict[str, Any]]:
    return {
        e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[LifecycleRoot, Path, Any]:
    base = tmp_path_factory.mktemp("build")
    root, repo = LifecycleRoot(base / "indexes"), write_repo(base / "repo")
    with dg.instance_for_test() as instance:
        result = run_build(root, repo, "v1", instance)
    assert result.success
    return root, repo, result


def test_every_asset_materializes_with_metadata(built: tuple) -> None:
    root, _, result = built
    meta = materializations(result)
    assert set(meta) == {
        "chunks",
        "embeddings",
        "scip_index",
        "lexical_index",
        "faiss_index",
        "faiss_idmap",
        "catalog",
        "index_version",
    }
    n = meta["chunks"]["chunks"]
    assert n > 10 and meta["chunks"]["files"] == 6
    assert (meta["embeddings"]["dimension"], meta["embeddings"]["embedded"], meta["embeddings"]["reused"]) == (
        384,
        n,
        0,
    )
    assert (meta["faiss_index"]["factory"], meta["faiss_index"]["ntotal"]) == ("Flat", n)
    assert (meta["faiss_index"]["dimension"], meta["faiss_index"]["metric"]) == (384, "inner_product")
    assert meta["faiss_idmap"]["rows"] == meta["catalog"]["chunks"] == meta["catalog"]["faiss_idmap_mat"] == n
    assert meta["catalog"]["modules"] == 6 and meta["catalog"]["scip_symbols"] > 5
    assert meta["scip_index"]["documents"] >= 3 and meta["scip_index"]["definitions"] > 5
    for asset, name in (("faiss_index", "faiss.index"), ("catalog", "catalog.duckdb"), ("scip_index", "index.scip")):
        assert meta[asset]["path"] == str(root.version_dir("v1") / name)  # where the sealed file lives
        assert (root.version_dir("v1") / name).stat().st_size == meta[asset]["bytes"]
    assert "| faiss.index |" in meta["index_version"]["files"]
    assert [c.passed for c in result.get_asset_check_evaluations()] == [True]
    vdir = root.version_dir("v1")
    assert sorted(p.name for p in vdir.iterdir()) == [
        "catalog.duckdb",
        "faiss.index",
        "faiss_idmap.parquet",
        "index.scip",
        "lexical.npz",
        "manifest.json",
    ]
    manifest = root.verify_version("v1")
    assert manifest["attrs"]["embedder_name"] == "minilm" and manifest["attrs"]["chunk_count"] == n


def test_catalog_joins_faiss_rows_chunks_and_symbols(built: tuple) -> None:
    root, _, _ = built
    with catalog.connect_read_only(root.version_dir("v1") / "catalog.duckdb") as con:
        joined = con.execute("SELECT count(*), count(DISTINCT chunk_id), min(faiss_row) FROM v_faiss_join").fetchone()
        chunks = con.execute("SELECT count(*) FROM chunks").fetchone()[0]
        symbols = {
            r[0]
            for r in con.execute(
                "SELECT s.symbol FROM v_chunk_symbols s JOIN chunks c USING (chunk_id) WHERE c.uri = 'parsing.py'"
            ).fetchall()
        }
        modules = con.execute("SELECT repo_path, module_name FROM modules ORDER BY repo_path").fetchall()
    assert joined == (chunks, chunks, 0)
    assert any(s.endswith(" parsing/parse_config().") for s in symbols)
    assert not any(s.startswith("local ") for s in symbols)
    assert ("shapes/geometry.py", "shapes.geometry") in modules


def test_search_finds_the_matching_function(built: tuple) -> None:
    root, repo, _ = built
    _, hits, _ = search_version(root, "length of the hypotenuse of a right triangle", k=3, version="v1")
    top = hits[0]
    def_line = (
        (repo / "shapes/geometry.py").read_text().splitlines().index("def hypotenuse(a: float, b: float) -> float:")
    )
    assert top.uri == "shapes/geometry.py" and top.start_line <= def_line + 1 <= top.end_line
    _, hits, _ = search_version(root, "read settings from a JSON configuration file", k=3, version="v1")
    assert hits[0].uri == "parsing.py"


def test_incremental_build_re_embeds_only_the_changed_file(built: tuple, tmp_path: Path) -> None:
    root, _, first = built
    changed = tmp_path / "repo"
    write_repo(changed)
    path = changed / "parsing.py"
    path.write_text(path.read_text().replace("Split a sentence", "Break a sentence"))
    with dg.instance_for_test() as instance:
        result = run_build(root, changed, "v2", instance)
    assert result.success
    meta = materializations(result)["embeddings"]
    with catalog.connect_read_only(root.version_dir("v2") / "catalog.duckdb") as con:
        in_changed_file = con.execute("SELECT count(*) FROM chunks WHERE uri = 'parsing.py'").fetchone()[0]
    assert meta["embedded"] == in_changed_file
    assert meta["reused"] == materializations(first)["chunks"]["chunks"] - in_changed_file
    assert meta["reused_from"] == "v1"


@pytest.mark.parametrize("plant", ["dimension", "ids"])
def test_planted_mismatch_fails_the_check_and_blocks_sealing(
    plant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_catalog = catalog.write_catalog

    def planted(path: Path, rows: catalog.ParquetRows, _: None, *args: Any) -> int:
        table = pa.concat_tables(pq.read_table(p) for p in sorted(glob.glob(rows.glob)))
        embeddings = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
        chunks = table.drop_columns(["embedding"])
        if plant == "dimension":
            embeddings = embeddings[:, :-1]
        else:
            ids = chunks.column("chunk_id").to_pylist()
            chunks = chunks.set_column(0, "chunk_id", [[ids[0] + 1, *ids[1:]]])
        return write_catalog(path, chunks, embeddings, *args)

    monkeypatch.setattr(build.catalog, "write_catalog", planted)
    root, repo = LifecycleRoot(tmp_path / "indexes"), write_repo(tmp_path / "repo")
    with dg.instance_for_test() as instance:
        result = run_build(root, repo, "v1", instance)
    assert not result.success
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed
    failed = {k for k, v in evaluation.metadata.items() if str(v.value).startswith("FAILED")}
    expected = {"dimension": {"dimensions_agree"}, "ids": {"ids_unique_and_identical"}}[plant]
    assert failed == expected
    assert "index_version" not in materializations(result)
    assert root.list_versions() == [] and root.staging_dir("v1").is_dir()


def test_build_into_an_existing_version_is_refused(built: tuple) -> None:
    root, repo, _ = built
    with dg.instance_for_test() as instance:
        result = run_build(root, repo, "v1", instance)
    assert not result.success
    assert "v1" in root.list_versions()
    root.verify_version("v1")


def test_unchanged_sources_reuse_the_scip_index(built: tuple) -> None:
    root, repo, _ = built
    with dg.instance_for_test() as instance:
        result = run_build(root, repo, "v3", instance)
    assert result.success
    meta = materializations(result)
    assert meta["scip_index"]["reused_from"] == "v1"  # v2 (newer) was built from changed sources
    assert (root.version_dir("v3") / "index.scip").read_bytes() == (root.version_dir("v1") / "index.scip").read_bytes()


def test_failing_indexer_fails_the_build_with_its_error_after_embeddings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fake_scip_python(monkeypatch, fake_scip_python(tmp_path / "bin", fail="Error: cannot index parsing.py"))
    (tmp_path / "dagster").mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    root, repo = LifecycleRoot(tmp_path / "indexes"), write_repo(tmp_path / "repo")
    expected = r"^scip-python failed with exit code 1: Error: cannot index parsing\.py$"
    with pytest.raises(ValidationError, match=expected):  # what indexctl prints
        runs.run_build(root.root, "v1", repo)
    with dg.DagsterInstance.get() as instance:
        assert instance.get_latest_materialization_event(dg.AssetKey("embeddings")) is not None
        assert instance.get_latest_materialization_event(dg.AssetKey("scip_index")) is None
    assert root.list_versions() == []


def test_scip_index_materializes_alone_without_embedding(tmp_path: Path) -> None:
    root, repo = LifecycleRoot(tmp_path / "indexes"), write_repo(tmp_path / "repo")
    with dg.instance_for_test() as instance:
        result = run_build(root, repo, "v1", instance, assets=["chunks", "scip_index"])
    assert result.success
    assert set(materializations(result)) == {"chunks", "scip_index"}
    staging = root.staging_dir("v1")
    assert (staging / SCIP_FILE).is_file() and not (staging / build.BUILD_DIR / build.SHARDS_DIR).exists()


def test_scip_indexers_see_only_the_files_the_chunker_accepted(tmp_path: Path) -> None:
    root, repo = LifecycleRoot(tmp_path / "indexes"), tmp_path / "repo"
    (repo / "secret").mkdir(parents=True)
    (repo / "ok.py").write_text("def ok():\n    return 1\n")
    (repo / "secret" / "creds.py").write_text('API_KEY = "sk-excluded-secret"\n')  # --exclude 'secret/*'
    (repo / "huge.py").write_text(f"x_huge = '{'a' * (1 << 20)}'\n")  # over 1 MiB
    (repo / "blob.py").write_bytes(b'BLOB = "binary-secret"\n\0\n')  # binary
    with dg.instance_for_test() as instance:
        result = run_build(root, repo, "v1", instance, assets=["chunks", "scip_index"], exclude=["secret/*"])
    assert result.success
    data = (root.staging_dir("v1") / SCIP_FILE).read_bytes()
    assert [d.relative_path for d in scip.parse_index(data).documents] == ["ok.py"]
    assert not any(name in data for name in (b"API_KEY", b"sk-excluded-secret", b"x_huge", b"binary-secret"))


def test_mixed_languages_index_per_language_beside_embedding_and_reuse_per_language(tmp_path: Path) -> None:
    # The sample's Python and commander's real JavaScript: scip-python and scip-typescript, merged. In-process,
    # the indexers run inside the embed step and scip_index, ordered after it, reports them.
    root, repo = LifecycleRoot(tmp_path / "indexes"), write_repo(tmp_path / "repo")
    (repo / "js").mkdir()
    for name in ("argument.js", "help.js"):
        shutil.copyfile(COMMANDER / name, repo / "js" / name)
    with dg.instance_for_test() as instance:
        first = run_build(root, repo, "v1", instance)
        assert first.success
        windows: dict[str, list[float]] = {}
        for entry in instance.all_logs(first.run_id):
            if entry.step_key and (entry.dagster_event is None or entry.dagster_event.is_step_start):
                windows.setdefault(entry.step_key, []).append(entry.timestamp)
        beside = [e.user_message for e in instance.all_logs(first.run_id) if "beside embedding" in e.user_message]
    assert beside and beside[0].startswith("SCIP indexers done beside embedding")
    assert min(windows["scip_index"]) > max(windows["embeddings.embed_shard[s0]"])  # after the embedding
    meta = materializations(first)["scip_index"]
    assert meta["documents"] == 5 and "| scip-typescript | scip-typescript 0.4.0 | 2 |" in meta["indexers"]
    with catalog.connect_read_only(root.version_dir("v1") / CATALOG_FILE) as con:
        table = SymbolTable.from_catalog(con)
        uris = dict(con.execute("SELECT chunk_id, uri FROM chunks").fetchall())
    references = {uris[m.chunk_id] for m in table.lookup(["humanReadableArgName"]) if not m.definition}
    assert "js/help.js" in references  # help.js calls the function argument.js defines: a SCIP reference

    (repo / "js" / "help.js").write_text((repo / "js" / "help.js").read_text() + "\n// changed\n")
    with dg.instance_for_test() as instance:
        second = run_build(root, repo, "v2", instance)
    assert second.success
    assert "| scip-python | scip-python 0.6.6 | 3 |" in materializations(second)["scip_index"]["indexers"]
    assert materializations(second)["scip_index"]["reused_from"] == "v1"  # Python unchanged; JavaScript re-run
    v1, v2 = (scip.read_index(root.version_dir(v) / SCIP_FILE) for v in ("v1", "v2"))
    assert list(v2.documents)[:3] == list(v1.documents)[:3] and v2.documents[3:] != v1.documents[3:]
