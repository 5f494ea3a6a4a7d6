"""The symbol channel: names parsed from SCIP, and definitions ranked before references."""

from __future__ import annotations

from pathlib import Path

import pytest

from kg_assets.lib import chunking
from kg_assets.lib.build import chunk_table, file_texts, tree_sitter_references
from kg_assets.lib.retrieval import query_kind, symbol_terms
from kg_assets.lib.symbols import (
    SymbolEntry,
    SymbolTable,
    module_prefix,
    query_terms,
    scip_symbol_name,
    tie_references,
)


def test_scip_symbols_name_their_definition_within_the_module() -> None:
    assert scip_symbol_name("scip-python python flask 3.0 `flask.app`/Flask#route().") == "Flask.route"
    assert scip_symbol_name("scip-python python pkg 1 pkg.mod/helper().") == "helper"
    assert scip_symbol_name("scip-python python pkg 1 pkg.mod/Flask#__init__().(self)") is None  # a parameter
    assert scip_symbol_name("local 12") is None
    # scip-typescript's `new Router()` refers to the constructor; a lookup of `Router` must count it
    assert scip_symbol_name("scip-typescript npm x 1 lib/`router.js`/Router#`<constructor>`().") == "Router"


def test_query_terms_accept_the_usual_qualified_spellings() -> None:
    assert query_terms("Session.merge()") == [["Session", "merge"]]
    assert query_terms("Router::handle and Foo#bar") == [["Router", "handle"], ["and"], ["Foo", "bar"]]


def test_modules_qualify_definitions() -> None:
    assert module_prefix("src/flask/app.py", {"src/flask/app.py": "src.flask.app"}) == "src.flask.app."
    assert module_prefix("web/router.go", {}) == "web.router."


TABLE = SymbolTable(
    [
        SymbolEntry(1, "pkg.sessions.Session", True),
        SymbolEntry(2, "pkg.sessions.Session.merge", True),
        SymbolEntry(3, "pkg.utils.merge", True),
        SymbolEntry(4, "Session.merge", False),  # a call in another chunk
        SymbolEntry(5, "pkg.models.session", True),
    ]
)


def test_a_definition_ranks_before_references_and_exact_case_before_folded() -> None:
    _, ids = TABLE.search([["Session"]], 10)
    assert ids.tolist()[:2] == [1, 5]
    _, ids = TABLE.search([["session"]], 10)
    assert ids.tolist()[:2] == [5, 1]

    _, ids = TABLE.search([["merge"]], 10, references=False)  # a question's names: definitions only
    assert ids.tolist() == [3, 2]


def test_qualified_names_narrow_the_match() -> None:
    _, ids = TABLE.search([["Session", "merge"]], 10)
    assert ids.tolist() == [2, 4]
    _, ids = TABLE.search([["merge"]], 10)
    assert ids.tolist()[:2] == [3, 2]  # both definitions (the top-level one first), then the reference
    assert ids.tolist()[-1] == 4
    _, ids = TABLE.search([["utils", "merge"]], 10)
    assert ids.tolist() == [3]
    scores, ids = TABLE.search([["pkg", "merge"]], 10)  # a package qualifier that skips the module
    assert ids.tolist()[:2] == [3, 2] and scores[0] < TABLE.search([["utils", "merge"]], 1)[0][0]
    assert TABLE.search([["nowhere", "merge"]], 10)[1].tolist() == []


def test_query_kind_tells_lookups_from_questions() -> None:
    assert query_kind("Blueprint") == "identifier"
    assert query_kind("url_for") == "identifier"
    assert query_kind("Session.merge_environment_settings()") == "identifier"
    assert query_kind("send file") == "natural"
    assert query_kind("how does routing pick a view") == "natural"
    assert symbol_terms("how does the Blueprint register url_for", "natural") == [["Blueprint"], ["url_for"]]
    assert symbol_terms("How does routing work", "natural") == []


REFERENCE_TREES = {
    "go": {
        "mux/route.go": "package mux\n\ntype Route struct {\n\tname string\n}\n\n"
        "func NewRoute(name string) *Route {\n\treturn &Route{name: name}\n}\n",
        "mux/router.go": "package mux\n\ntype Router struct {\n\troutes []*Route\n}\n\n"
        "func (r *Router) Handle(path string) *Route {\n\troute := NewRoute(path)\n"
        "\tr.routes = append(r.routes, route)\n\treturn route\n}\n",
        "app/main.go": 'package main\n\nfunc main() {\n\tr := &mux.Router{}\n\tr.Handle("/")\n}\n',
    },
    "java": {
        "src/lang/StringUtils.java": "package lang;\n\npublic class StringUtils {\n"
        "    public static boolean isBlank(String s) {\n        return s == null || s.trim().isEmpty();\n    }\n}\n",
        "src/lang/Builder.java": "package lang;\n\nimport lang.StringUtils;\n\npublic class Builder {\n"
        "    public Builder append(String s) {\n        if (StringUtils.isBlank(s)) {\n"
        "            return this;\n        }\n        return this;\n    }\n}\n",
        "src/app/Main.java": "package app;\n\nclass Main {\n    void run() {\n"
        '        new Builder().append("x");\n    }\n}\n',
    },
    "rust": {
        "src/routing/mod.rs": "pub struct Router {\n    routes: Vec<String>,\n}\n\nimpl Router {\n"
        "    pub fn new() -> Self {\n        Router { routes: Vec::new() }\n    }\n\n"
        "    pub fn route(mut self, path: &str) -> Self {\n        self.routes.push(path.to_string());\n"
        "        self\n    }\n}\n",
        "src/lib.rs": 'use crate::routing::Router;\n\npub fn app() -> Router {\n    Router::new().route("/")\n}\n',
    },
}
# (name looked up, the file whose chunk must refer to it, the definition's file)
EXPECTED_REFERENCES = {
    "go": [
        ("NewRoute", "mux/router.go", "mux/route.go"),
        ("Route", "mux/router.go", "mux/route.go"),
        ("Router.Handle", "app/main.go", "mux/router.go"),
        ("Router", "app/main.go", "mux/router.go"),
    ],
    "java": [
        ("StringUtils.isBlank", "src/lang/Builder.java", "src/lang/StringUtils.java"),
        ("Builder.append", "src/app/Main.java", "src/lang/Builder.java"),
        ("Builder", "src/app/Main.java", "src/lang/Builder.java"),
    ],
    "rust": [
        ("Router.new", "src/lib.rs", "src/routing/mod.rs"),
        ("Router.route", "src/lib.rs", "src/routing/mod.rs"),
        ("Router", "src/lib.rs", "src/routing/mod.rs"),
    ],
}


@pytest.mark.parametrize("language", sorted(REFERENCE_TREES))
def test_tree_sitter_references_resolve_to_their_definitions(language: str, tmp_path: Path) -> None:
    for uri, text in REFERENCE_TREES[language].items():
        (tmp_path / uri).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / uri).write_text(text)
    chunks = chunk_table(
        chunking.chunk_repository(tmp_path, lambda lines: [len(line) // 4 + 1 for line in lines], 40).chunks
    )
    files = file_texts(chunks)
    references = tree_sitter_references(files, set())
    uri_of = dict(zip(chunks.column("chunk_id").to_pylist(), chunks.column("uri").to_pylist(), strict=True))
    defined = [
        (chunk_id, uri, f"{module_prefix(uri, {})}{name}")
        for chunk_id, uri, names in zip(
            *(chunks.column(c).to_pylist() for c in ("chunk_id", "uri", "symbols")), strict=True
        )
        for name in names
    ]
    rows = zip(*(references.column(c).to_pylist() for c in ("chunk_id", "name")), strict=True)
    table = SymbolTable(
        [SymbolEntry(c, n, True) for c, _, n in defined]
        + tie_references(defined, {(chunk_id, uri_of[chunk_id], name) for chunk_id, name in rows})
    )
    for name, referring, defining in EXPECTED_REFERENCES[language]:
        matches = table.lookup(name.split("."))
        assert {uri_of[m.chunk_id] for m in matches if m.definition} == {defining}, name
        assert referring in {uri_of[m.chunk_id] for m in matches if not m.definition}, (name, matches)
    assert not table.lookup(["String"]) and not table.lookup(["Vec"])  # library names are no references
