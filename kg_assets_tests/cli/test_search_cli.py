"""`indexctl search` through the served retrieval stack, on a real repository: the source of the `h11` package
(installed with the project) beside real markdown (the READMEs and changelogs that npm packages ship), so prose
competes with code for every question."""

from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import h11
import pyarrow.parquet as pq
import pytest

from kg_assets.lib.lifecycle import CATALOG_FILE, FAISS_FILE, IDMAP_FILE, SCIP_FILE, LifecycleRoot
from kg_assets.lib.retrieval import VersionHandle
from kg_assets.lib.search import search_version
from kg_assets_tests.cli.test_indexctl import indexctl
from kg_assets_tests.helpers import SCIP_PYTHON

pytestmark = pytest.mark.skipif(not SCIP_PYTHON.exists(), reason="run scripts/setup.sh (npm ci) for scip-python")

PROJECT = Path(__file__).resolve().parents[2]
# Questions about h11's code in words a user would type (none copies a docstring or names the function).
CODE_QUESTIONS = {
    "read the hexadecimal length that starts each piece of a streamed body": "h11/_readers.py",
    "which moves between protocol states are allowed for each side": "h11/_state.py",
    "reject header values that contain forbidden characters": "h11/_headers.py",
    "serialize a response status line and headers to bytes": "h11/_writers.py",
}


@pytest.fixture(scope="module")
def h11_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], LifecycleRoot, Path]:
    """Version `h1` built from h11's modules and 40 markdown files, published; (env, root, repo)."""
    base = tmp_path_factory.mktemp("search-h11")
    repo = base / "repo"
    shutil.copytree(Path(h11.__file__).parent, repo / "h11", ignore=shutil.ignore_patterns("__pycache__", "*.typed"))
    docs = repo / "docs"
    docs.mkdir()
    for i, md in enumerate(sorted((PROJECT / "node_modules").rglob("*.md"))[:40]):
        shutil.copyfile(md, docs / f"{i:03d}-{md.name}")
    assert len(list(docs.iterdir())) == 40
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CODEINTEL_INDEXES_DIR", "KG_EVAL_DIR")}
    env["KG_INDEXES_DIR"] = str(base / "indexes")
    done = indexctl(env, "build", "h1", "--repo", str(repo), "--publish")
    assert done.returncode == 0, done.stderr
    return env, LifecycleRoot(base / "indexes"), repo


def _definitions(repo: Path) -> dict[str, list[tuple[str, int, int]]]:
    """Every class, function and method of h11 by name (bare and `Class.method`): (uri, first line, last line)."""
    found: dict[str, list[tuple[str, int, int]]] = {}
    for path in sorted((repo / "h11").glob("*.py")):
        uri = path.relative_to(repo).as_posix()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef | ast.FunctionDef) and not node.name.startswith("__"):
                found.setdefault(node.name, []).append((uri, node.lineno, node.end_lineno))
            if isinstance(node, ast.ClassDef):
                for member in node.body:
                    if isinstance(member, ast.FunctionDef) and not member.name.startswith("_"):
                        span = (uri, member.lineno, member.end_lineno)
                        found.setdefault(f"{node.name}.{member.name}", []).append(span)
    return found


def test_symbol_lookups_rank_a_defining_chunk_first(h11_root: tuple) -> None:
    _, root, repo = h11_root
    definitions = _definitions(repo)
    assert len(definitions) > 60
    misses = []
    with VersionHandle.open(root, "h1") as handle:
        for name, spans in definitions.items():
            top = handle.search(name, 1)[0]
            if not any(top.uri == uri and top.start_line <= first <= top.end_line for uri, first, _ in spans):
                misses.append(f"{name} -> {top.uri}:{top.start_line}")
    assert len(misses) <= len(definitions) // 30, misses  # at least ~97% at rank 1


def test_code_questions_are_answered_with_code_among_markdown(h11_root: tuple) -> None:
    _, root, _ = h11_root
    with VersionHandle.open(root, "h1") as handle:
        for question, uri in CODE_QUESTIONS.items():
            hits = handle.search(question, 5)
            assert hits[0].uri.endswith(".py"), (question, [h.uri for h in hits])
            assert uri in [h.uri for h in hits], (question, [h.uri for h in hits])


def test_search_cli_library_and_eval_hybrid_channel_agree(h11_root: tuple, tmp_path: Path) -> None:
    env, root, _ = h11_root
    queries = tmp_path / "questions.jsonl"
    lines = [
        {"id": f"q{i}", "query": q, "relevant": [uri], "category": "semantic"}
        for i, (q, uri) in enumerate(CODE_QUESTIONS.items())
    ]
    lines.append({"id": "sym", "query": "Connection.send", "relevant": ["h11/_connection.py"], "category": "symbol"})
    queries.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "eval"
    done = indexctl(
        env, "eval", "--queries", str(queries), "--samples", "0", "--no-generated-queries", "--out-dir", str(out)
    )
    assert done.returncode == 0, done.stderr
    assert "of file queries by category" in done.stdout and "symbol" in done.stdout
    pool = pq.read_table(out / "h1" / "latest" / "pool.parquet").to_pylist()
    metrics = json.loads((out / "h1" / "latest" / "metrics.json").read_text())
    assert set(metrics["sets"]["file"]["categories"]) == {"semantic", "symbol"}
    assert metrics["channels"]["hybrid"]["ndcg_at_k"] >= metrics["channels"]["faiss"]["ndcg_at_k"]
    for line in lines:
        served = indexctl(env, "search", line["query"], "--json")
        assert served.returncode == 0, served.stderr
        cli_ids = [h["chunk_id"] for h in json.loads(served.stdout)["hits"]]
        _, hits, _ = search_version(root, line["query"], 10)
        rows = sorted(
            (r for r in pool if r["query_id"] == line["id"] and r["channel"] == "hybrid"), key=lambda r: r["rank"]
        )
        assert cli_ids == [h.chunk_id for h in hits] == [r["chunk_id"] for r in rows]


def test_json_hits_explain_their_channels(h11_root: tuple) -> None:
    env, _, _ = h11_root
    done = indexctl(env, "search", "Connection", "--json", "-k", "3")
    payload = json.loads(done.stdout)
    assert payload["version"] == "h1" and payload["mode"] == "hybrid"
    top = payload["hits"][0]
    assert {"chunk_id", "uri", "start_line", "end_line", "score", "channels"} <= top.keys()
    assert top["channels"]["symbol"]["rank"] == 1
    for mode in ("dense", "lexical", "symbol"):
        hits = json.loads(indexctl(env, "search", "Connection", "--json", "--mode", mode).stdout)["hits"]
        assert hits and all(set(h["channels"]) == {mode} for h in hits)


@pytest.mark.parametrize("query", ["Connection", "reject header values that contain forbidden characters"])
def test_the_explanation_of_each_hit_sums_to_its_score(h11_root: tuple, query: str) -> None:
    env, _, _ = h11_root
    hits = json.loads(indexctl(env, "search", query, "--json").stdout)["hits"]
    for hit in hits:
        terms = hit["explain"]
        assert {t["term"] for t in terms} & set(hit["channels"]), terms  # the channels that found it come first
        assert sum(t["value"] for t in terms) == pytest.approx(hit["score"], abs=1e-5)
    printed = indexctl(env, "search", query, "--explain", "-k", "3").stdout.splitlines()
    assert printed[0].split()[1] == f"{hits[0]['score']:.3f}"
    assert [line.split()[-1] for line in printed[1 : 1 + len(hits[0]["explain"])]] == [
        t["term"] if "factor" not in t else f"(x{t['factor']:.3g})" for t in hits[0]["explain"]
    ]


def test_a_version_without_lexical_index_falls_back_to_dense(h11_root: tuple) -> None:
    env, root, _ = h11_root
    vdir = root.version_dir("h1")
    args = [str(vdir / name) for name in (FAISS_FILE, CATALOG_FILE, SCIP_FILE)]
    staged = indexctl(env, "stage", "bare", *args, "--faiss-idmap", str(vdir / IDMAP_FILE))
    assert staged.returncode == 0, staged.stderr
    question = next(iter(CODE_QUESTIONS))
    done = indexctl(env, "search", question, "--version", "bare", "--json")
    assert done.returncode == 0, done.stderr
    assert "no lexical.npz" in done.stderr
    hits = json.loads(done.stdout)["hits"]
    assert len(hits) == 10 and not any("lexical" in h["channels"] for h in hits)
    assert indexctl(env, "search", question, "--version", "bare", "--mode", "lexical").returncode == 0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["search", ""], 2, "the query is empty"),
        (["search", "?!... ---"], 2, "no letters or digits"),
        (["search", "Connection", "--mode", "fuzzy"], 2, "unknown mode 'fuzzy'"),
        (["search", "Connection", "-k", "0"], 2, "k must be between 1 and 1000"),
        (["search", "Connection", "-k", "1001"], 2, "k must be between 1 and 1000"),
    ],
)
def test_bad_queries_are_one_line_usage_errors(h11_root: tuple, args: list[str], code: int, message: str) -> None:
    env, _, _ = h11_root
    done = indexctl(env, *args)
    assert done.returncode == code and message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_ten_thousand_character_query_gets_a_sensible_answer(h11_root: tuple) -> None:
    env, _, _ = h11_root
    done = indexctl(env, "search", "parse chunked transfer encoding " * 320, "-k", "3")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().splitlines()) == 3


def test_a_repository_without_python_builds_and_its_definitions_are_found(h11_root: tuple, tmp_path: Path) -> None:
    """No Python for scip-python (an empty SCIP index instead of its failure); JavaScript definitions come from
    the chunker alone and the symbol channel finds them. Built into the root of another repository's versions:
    their vectors hold none of these files, so nothing is reused (that used to fail the build)."""
    env, _, _ = h11_root
    repo = tmp_path / "repo"
    shutil.copytree(PROJECT / "node_modules" / "commander" / "lib", repo / "lib")
    done = indexctl(env, "build", "js1", "--repo", str(repo))
    assert done.returncode == 0, done.stderr
    query = ["search", "Command.parseOptions", "--version", "js1", "--json", "-k", "3"]
    hits = json.loads(indexctl(env, *query).stdout)["hits"]
    assert hits[0]["uri"] == "lib/command.js" and hits[0]["channels"]["symbol"]["rank"] == 1
    text = (repo / "lib" / "command.js").read_text().splitlines()
    assert any("parseOptions(" in line for line in text[hits[0]["start_line"] - 1 : hits[0]["end_line"]])


def test_a_rebuild_reuses_every_vector_though_another_repository_was_built_since(h11_root: tuple) -> None:
    env, root, repo = h11_root
    if "js1" not in root.list_versions():  # run alone: another repository's version in between
        other = repo.parent / "other"
        shutil.copytree(PROJECT / "node_modules" / "commander" / "lib", other / "lib")
        assert indexctl(env, "build", "js1", "--repo", str(other)).returncode == 0
    done = indexctl(env, "build", "h2", "--repo", str(repo), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["embedded"] == 0 and summary["reused"] == summary["chunks"] > 0
