"""Definitions in source files through tree-sitter: one language-independent walk driven by `languages.GRAMMARS`.

Each language's grammar comes from its own PyPI wheel (`tree-sitter-go`, ...), loaded on first use and cached;
a language whose wheel is not installed has no definitions (`definitions` returns None) and its files fall back
to line windows. Nothing is downloaded at run time.
"""

from __future__ import annotations

import functools
import importlib
import re
from dataclasses import dataclass

from tree_sitter import Language, Node, Parser, Query, QueryCursor, Tree

from kg_assets.lib.languages import GRAMMARS, Grammar


@dataclass(frozen=True)
class Definition:
    """A definition's lines `[start, end)` (0-based; comments, attributes and decorators directly above it
    included), its name ('' when anonymous; dotted when the source qualifies it, as Go's `Router.handle` or C++'s
    `Foo::bar`), and for a scope (class, impl, module) its member definitions (None for a function)."""

    start: int
    end: int
    name: str
    members: tuple[Definition, ...] | None = None
    head: int | None = None  # the line where the definition itself starts (past its comments); None: `start`


@dataclass
class _Found:
    node: Node
    is_scope: bool
    members: list[_Found]


@functools.cache
def _loaded(language: str) -> tuple[Language, Query, re.Pattern[bytes] | None, Grammar] | None:
    """Grammar, definition query and compiled `blank` pattern of `language` (all immutable, so shared by
    threads); None without a grammar or when its wheel is not installed."""
    grammar = GRAMMARS.get(language)
    if grammar is None:
        return None
    try:
        lang = Language(getattr(importlib.import_module(grammar.module), grammar.entry)())
    except (ImportError, AttributeError, ValueError):
        return None
    source = grammar.patterns
    for kinds, capture in ((grammar.scopes, "scope"), (grammar.functions, "function")):
        if kinds:
            source += "[" + " ".join(f"({kind})" for kind in kinds) + f"] @{capture}\n"
    return lang, Query(lang, source), re.compile(grammar.blank) if grammar.blank else None, grammar


def has_grammar(language: str) -> bool:
    """Whether `language` is chunked along definitions by tree-sitter (it has a grammar table entry)."""
    return language in GRAMMARS


def grammar_available(language: str) -> bool:
    """Whether `language`'s grammar wheel is installed and loads."""
    return _loaded(language) is not None


def definitions(data: bytes, language: str) -> list[Definition] | None:
    """Top-level definitions of a file, scopes with their members, in source order; None if the grammar is missing.

    Definitions nested inside a function belong to it; a parse error only loses the definitions it breaks.
    """
    parsed = _parse(data, language)
    if parsed is None:
        return None
    tree, (_, query, _, grammar) = parsed
    captures = QueryCursor(query).captures(tree.root_node)
    found = [(node, True) for node in captures.get("scope", [])]
    found += [(node, False) for node in captures.get("function", [])]
    found.sort(key=lambda item: (item[0].start_byte, -item[0].end_byte, not item[1]))
    roots: list[_Found] = []
    stack: list[_Found] = []
    spans: set[tuple[int, int]] = set()
    for node, is_scope in found:
        span = (node.start_byte, node.end_byte)
        if span in spans:
            continue
        spans.add(span)
        while stack and stack[-1].node.end_byte <= node.start_byte:
            stack.pop()
        if stack and not stack[-1].is_scope:
            continue  # inside a function: part of its body
        entry = _Found(node, is_scope, [])
        (stack[-1].members if stack else roots).append(entry)
        stack.append(entry)
    return [_definition(entry, grammar, spans) for entry in roots]


def _parse(data: bytes, language: str) -> tuple[Tree, tuple[Language, Query, re.Pattern[bytes] | None, Grammar]] | None:
    """A file's syntax tree (macros the grammar cannot parse blanked first) and its language's loaded grammar."""
    loaded = _loaded(language)
    if loaded is None:
        return None
    lang, _, blank, _ = loaded
    if blank is not None:
        data = blank.sub(lambda m: b" " * len(m.group()), data)
    return Parser(lang).parse(data), loaded  # a parser per call: ~1 µs


def _definition(entry: _Found, grammar: Grammar, spans: set[tuple[int, int]]) -> Definition:
    node = entry.node
    end = _last_row(node) + 1
    members = tuple(_definition(m, grammar, spans) for m in entry.members) if entry.is_scope else None
    return Definition(_start_row(node, grammar, spans), end, _name(node, grammar), members, node.start_point.row)


def _start_row(node: Node, grammar: Grammar, spans: set[tuple[int, int]]) -> int:
    """First row of a definition with the comments, attributes and decorators directly above it (at most one blank
    line between, each starting its own line), found as siblings of the definition or of the statement wrapping it
    (`export class`, `template <...> class`, `const f = () => ...;`)."""
    anchor = node
    while (
        (parent := anchor.parent) is not None
        and parent.parent is not None
        and (parent.start_byte, parent.end_byte) not in spans
        and parent.end_byte <= node.end_byte + 1
        and (parent.start_point.row == anchor.start_point.row or parent.type == "template_declaration")
    ):
        anchor = parent
    start = anchor.start_point.row
    prev = anchor.prev_named_sibling
    while (
        prev is not None
        and ("comment" in prev.type or prev.type in grammar.leading)
        and _last_row(prev) >= start - 2
        and (prev.prev_sibling is None or _last_row(prev.prev_sibling) < prev.start_point.row)
    ):
        start = prev.start_point.row
        prev = prev.prev_named_sibling
    return start


def _last_row(node: Node) -> int:
    """The last row holding part of `node` (a line comment's node may end at column 0 of the next row)."""
    row, column = node.end_point
    return row - 1 if column == 0 and row > node.start_point.row else row


_GENERIC_ARGS = re.compile(r"<[^<>]*>")
_SEPARATOR = re.compile(r"::|->|[:\\#]")
_NOT_NAME = re.compile(r"[^\w.$~]")


def _name(node: Node, grammar: Grammar) -> str:
    """The definition's name as `grammar.names` finds it, through C declarators and Elixir call heads; a Go
    method's receiver type qualifies it, an Elixir `defimpl`'s `for:` type follows it."""
    target = None
    for key in grammar.names:
        target = node.child_by_field_name(key) or next((c for c in node.named_children if c.type == key), None)
        if target is not None:
            break
    if target is None:
        return ""
    arguments = target if target.type == "arguments" else None
    while (inner := _name_inside(target)) is not None:
        target = inner
    name = _clean(target.text or b"")
    if arguments is not None and (implemented := _implemented_for(arguments)):
        name = f"{name}.{implemented}"
    receiver = node.child_by_field_name(grammar.qualifier) if grammar.qualifier else None
    if receiver is not None and (owner := _first_of_type(receiver, "type_identifier")) is not None:
        name = f"{_clean(owner.text or b'')}.{name}"
    return name


def _name_inside(node: Node) -> Node | None:
    """The part of a name-bearing node that is the name: a C declarator's inner declarator, the head of an
    Elixir `def name(args) when guard`, the first argument of `defmodule Name`."""
    if node.type == "arguments":
        return node.named_children[0] if node.named_children else None
    if node.type == "call":
        return node.child_by_field_name("target")
    if node.type == "binary_operator":
        return node.child_by_field_name("left")
    return node.child_by_field_name("declarator")


def _implemented_for(arguments: Node) -> str:
    """`Type` of Elixir's `defimpl Protocol, for: Type`, whose module is `Protocol.Type`; '' for anything else."""
    for keywords in (child for child in arguments.named_children if child.type == "keywords"):
        for pair in keywords.named_children:
            key, value = pair.child_by_field_name("key"), pair.child_by_field_name("value")
            if key is not None and value is not None and (key.text or b"").strip() == b"for:" and value.type == "alias":
                return _clean(value.text or b"")
    return ""


def _first_of_type(node: Node, kind: str) -> Node | None:
    if node.type == kind:
        return node
    for child in node.named_children:
        if (hit := _first_of_type(child, kind)) is not None:
            return hit
    return None


def _clean(text: bytes) -> str:
    """`Foo<T>::bar` -> `Foo.bar`: generic arguments dropped, scope separators as dots, other punctuation out."""
    name = text.decode("utf-8", errors="replace")
    while (stripped := _GENERIC_ARGS.sub("", name)) != name:
        name = stripped
    return _NOT_NAME.sub("", _SEPARATOR.sub(".", name)).strip(".")[:200]


# Leaf nodes that name something, in the grammars of `languages.GRAMMARS`.
_NAME_LEAVES = frozenset(
    {
        "identifier",
        "type_identifier",
        "field_identifier",
        "property_identifier",
        "simple_identifier",
        "namespace_identifier",
        "constant",
        "name",
        "alias",
        "variable",
        "word",
    }
)
# A name is a reference when its parent or grandparent is one of these (by node type, across grammars): a call
# (`call_expression`, `method_invocation`, `invocation_expression`, `function_call`, a shell `command_name`), a type
# (`type_identifier` in any position, `generic_type`, `user_type`, `superclass`, `base_list`, `extends_clause`), an
# import (`import_declaration`, `use_declaration`), a qualified access (`scoped_identifier`, `selector_expression`,
# `navigation_expression`, `scope_resolution`, `dot`) or a construction (`object_creation_expression`,
# `composite_literal`, `struct_expression`, `instance_expression`).
_REFERENCE_CONTEXT = re.compile(
    r"call|invocation|command_name|type|superclass|base_|extends|implements|inherit|delegation|import|use_|"
    r"scoped|qualified|selector|navigation|member|field_expression|index_expression|dot|scope_resolution|"
    r"creation|composite_literal|struct_expression|instance_expression|macro|apply|signature|annotation"
)


def references(data: bytes, language: str) -> list[tuple[str, int]] | None:
    """(name, 0-based row) of every name in a call, type, import or qualified-access position, definitions' own
    names excluded; None if the grammar is missing. Names are not resolved here: `symbols` ties them to the
    definitions of the same version."""
    parsed = _parse(data, language)
    if parsed is None:
        return None
    heads = set()
    stack = list(definitions(data, language) or [])
    while stack:
        found = stack.pop()
        heads.add((found.head if found.head is not None else found.start, found.name.rsplit(".", 1)[-1]))
        stack += found.members or ()
    found_refs = []
    cursor = parsed[0].walk()
    visited_children = False
    while True:
        node = cursor.node
        if not visited_children and node is not None:
            if node.type in _NAME_LEAVES and node.child_count == 0:
                parent = node.parent
                context = " ".join(n.type for n in (parent, parent.parent if parent else None) if n is not None)
                name = (node.text or b"").decode("utf-8", errors="replace")
                if (node.type == "type_identifier" or _REFERENCE_CONTEXT.search(context)) and (
                    node.start_point.row,
                    name,
                ) not in heads:
                    found_refs.append((name, node.start_point.row))
            if cursor.goto_first_child():
                continue
        if cursor.goto_next_sibling():
            visited_children = False
            continue
        if not cursor.goto_parent():
            break
        visited_children = True
    return found_refs
