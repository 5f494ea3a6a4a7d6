"""The symbol channel: names parsed from SCIP, and definitions ranked before references."""

from __future__ import annotations

from kg_assets.lib.retrieval import query_kind, symbol_terms
from kg_assets.lib.symbols import SymbolEntry, SymbolTable, module_prefix, query_terms, scip_symbol_name


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
