"""A repository mixing six languages (real files) through `indexctl build`, `search`, `health` and `diff`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import duckdb
import pytest

from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.cli.test_indexctl import indexctl
from kg_assets_tests.helpers import SCIP_PYTHON
from kg_assets_tests.lib.test_treesitter import SAMPLES, source

pytestmark = pytest.mark.skipif(not SCIP_PYTHON.exists(), reason="run scripts/setup.sh (npm ci) for scip-python")


def mixed_repo(repo: Path) -> Path:
    """Real Python, JavaScript, TypeScript, Go, Rust and Java files, plus files the build must skip."""
    files = {
        "app/decoder.py": Path(json.__file__).parent / "decoder.py",
        "web/codec.ts": source("typescript"),
        "web/option.js": source("javascript").parent / "option.js",
        "server/main.go": SAMPLES / "go.sample",
        "fizz/src/main.rs": SAMPLES / "rust.sample",
        "java/ObjectVarsAsParameters.java": SAMPLES / "java.sample",
        "web/option.min.js": source("javascript").parent / "option.js",
        "vendor/main.go": SAMPLES / "go.sample",
    }
    for uri, path in files.items():
        (repo / uri).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, repo / uri)
    (repo / "package-lock.json").write_text("{}\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "-A", "-f"], check=True)
    return repo


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], LifecycleRoot, Path, dict]:
    base = tmp_path_factory.mktemp("cli-languages")
    repo = mixed_repo(base / "repo")
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CODEINTEL_INDEXES_DIR")}
    env["KG_INDEXES_DIR"] = str(base / "indexes")
    done = indexctl(env, "build", "v1", "--repo", str(repo), "--publish", "--exclude", "java/*", "--json")
    assert done.returncode == 0, done.stderr
    return env, LifecycleRoot(base / "indexes"), repo, json.loads(done.stdout)


def test_mixed_repository_builds_with_definitions_in_every_language(built: tuple) -> None:
    env, root, _, summary = built
    assert set(summary["languages"]) == {"python", "javascript", "typescript", "go", "rust"}
    assert summary["line_window_fallback"] == []
    skipped = summary["skipped"]
    assert skipped["excluded (--exclude)"]["examples"] == ["java/ObjectVarsAsParameters.java"]
    assert skipped["minified code or source map"]["examples"] == ["web/option.min.js"]
    assert skipped["lock file"]["count"] == 1 and skipped["vendored, build or environment directory (vendor/)"]
    with duckdb.connect(str(root.version_dir("v1") / "catalog.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT language, symbols FROM chunks").fetchall()
    defined = {(language, s) for language, symbols in rows for s in symbols}
    for expected in [
        ("python", "JSONDecoder.raw_decode"),
        ("typescript", "decode"),
        ("javascript", "Option.attributeName"),
        ("go", "handler"),
        ("rust", "fizzbuzz_to"),
    ]:
        assert expected in defined
    done = indexctl(env, "search", "fizzbuzz divisible by 15", "-k", "3", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["hits"][0]["uri"] == "fizz/src/main.rs"


def test_health_and_diff_understand_a_mixed_repository(built: tuple) -> None:
    env, _, repo, _ = built
    with (repo / "server/main.go").open("a") as f:
        f.write("\nfunc shutdown(code int) {\n    log.Fatal(code)\n}\n")
    done = indexctl(env, "build", "v2", "--repo", str(repo), "--exclude", "java/*")
    assert done.returncode == 0, done.stderr
    assert "languages: go 1, javascript" in done.stdout and "skipped: excluded (--exclude) 1" in done.stdout
    assert indexctl(env, "health", "--version", "v2").returncode == 0
    done = indexctl(env, "diff", "v1", "v2", "--json")
    assert done.returncode == 0, done.stderr
    chunks = json.loads(done.stdout)["chunks"]
    assert chunks["new_texts"] >= 1 and chunks["unchanged"] > 0


def test_eval_runs_on_a_mixed_repository(built: tuple, tmp_path: Path) -> None:
    env, *_ = built
    done = indexctl(env, "eval", "--version", "v1", "--samples", "20", "--out-dir", str(tmp_path / "eval"))
    assert done.returncode == 0, done.stderr
    assert "Evaluated v1" in done.stdout
    metrics = json.loads((tmp_path / "eval" / "v1" / "latest" / "metrics.json").read_text())
    assert {"faiss", "bm25", "hybrid"} <= set(metrics["channels_run"])
