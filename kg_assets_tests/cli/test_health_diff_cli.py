"""`indexctl health` and `indexctl diff` as operators run them: output, JSON, exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb

from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.cli.test_indexctl import indexctl, stage_args
from kg_assets_tests.lib.test_health import flip_bytes


def test_search_and_health_on_a_staged_version_without_kg_meta_exit_4_naming_it(
    samples: dict, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    catalog = tmp_path / "catalog.duckdb"
    shutil.copy(samples["a"]["duckdb"], catalog)
    with duckdb.connect(str(catalog)) as con:
        con.execute("DROP TABLE kg_meta")
    done = indexctl(cli_env, *stage_args("v1", {**samples["a"], "duckdb": catalog}))
    assert done.returncode == 0, done.stderr
    done = indexctl(cli_env, "search", "parse a config file", "--version", "v1")
    assert done.returncode == 4, done.stderr
    assert "kg_meta" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    done = indexctl(cli_env, "health", "--version", "v1")
    assert done.returncode == 4
    assert any(
        line.split()[:2] == ["FAILED", "searchable"] and "no kg_meta" in line for line in done.stdout.splitlines()
    )


def test_search_on_a_version_recording_no_embedder_exits_4_naming_it(
    samples: dict, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    catalog = tmp_path / "catalog.duckdb"
    shutil.copy(samples["a"]["duckdb"], catalog)
    with duckdb.connect(str(catalog)) as con:
        con.execute("DELETE FROM kg_meta WHERE key = 'embedder_spec'")
    assert indexctl(cli_env, *stage_args("v1", {**samples["a"], "duckdb": catalog})).returncode == 0
    done = indexctl(cli_env, "search", "parse a config file", "--version", "v1")
    assert done.returncode == 4, done.stderr
    assert "records no embedder" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_health_exits_0_on_a_good_version_and_4_on_a_corrupted_one(
    sample_versions: LifecycleRoot, cli_env: dict[str, str]
) -> None:
    done = indexctl(cli_env, "health")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("version: v1 (current)")
    rows = {line.split()[1]: line.split()[0] for line in done.stdout.splitlines()[1:]}
    assert rows["files_match_manifest"] == "OK" and rows["idmap_views_resolve"] == "SKIPPED"
    path = sample_versions.version_dir("v2") / "faiss.index"
    flip_bytes(path, path.stat().st_size // 2)
    done = indexctl(cli_env, "health", "--version", "v2")
    assert done.returncode == 4
    failed = [line.split(None, 2) for line in done.stdout.splitlines() if line.split()[0] == "FAILED"]
    assert failed == [["FAILED", "files_match_manifest", "version v2: faiss.index does not match its manifest sha256"]]
    assert done.stderr == "indexctl: error: version v2 is unhealthy: files_match_manifest failed\n"
    done = indexctl(cli_env, "health", "--version", "v2", "--json")
    assert done.returncode == 4
    report = json.loads(done.stdout)
    assert report["ok"] is False and report["version"] == "v2" and report["current"] == "v1"
    assert [c["name"] for c in report["checks"] if c["status"] == "failed"] == ["files_match_manifest"]


def test_health_with_nothing_published_is_not_found(root: LifecycleRoot, cli_env: dict[str, str]) -> None:
    done = indexctl(cli_env, "health")
    assert done.returncode == 3 and "nothing is published" in done.stderr


def test_diff_prints_both_versions_side_by_side(sample_versions: LifecycleRoot, cli_env: dict[str, str]) -> None:
    done = indexctl(cli_env, "diff", "v1", "v2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["v1", "v2"]
    squeezed = [" ".join(line.split()) for line in lines]
    assert "factory IVF8,Flat IVF8,Flat" in squeezed and "eval no eval no eval" in squeezed
    assert "chunks: 500 -> 500: +500 added, -500 removed, ~0 changed, 0 unchanged; 0 with new content" in lines
    diff = json.loads(indexctl(cli_env, "diff", "v1", "v2", "--json").stdout)
    assert (diff["old"]["version"], diff["new"]["version"], diff["chunks"]["new_texts"]) == ("v1", "v2", 0)


def test_diff_of_an_unknown_version_is_not_found(sample_versions: LifecycleRoot, cli_env: dict[str, str]) -> None:
    done = indexctl(cli_env, "diff", "v1", "v9")
    assert done.returncode == 3 and "unknown version v9" in done.stderr
