"""Per-language facts the engine needs beyond file extensions: reserved words that carry no meaning as search
content (the lexical index drops them from that language's chunks), and which tree-sitter nodes are definitions
(the chunker's one segmenter, `treesitter`, reads them)."""

from __future__ import annotations

import keyword
from dataclasses import dataclass


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_C = _words(
    "auto break case char const continue default do double else enum extern float for goto if inline int long "
    "register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while"
)
_JS = _words(
    "async await break case catch class const continue debugger default delete do else export extends false "
    "finally for function if import in instanceof let new null return super switch this throw true try typeof "
    "var void while with yield"
)
_TS = _JS | _words("abstract declare enum implements interface keyof namespace private protected public readonly")

# Reserved words that are also everyday identifiers and query words stay content in every language.
_EVERYDAY = _words("type match range map select delete object string event lock error test list array empty print time")

KEYWORDS: dict[str, frozenset[str]] = {
    # Hard keywords only: soft ones (`match`, `case`, `type`) are common identifiers.
    "python": frozenset(k.lower() for k in keyword.kwlist) | {"self", "cls"},
    "javascript": _JS,
    "typescript": _TS,
    "tsx": _TS,
    "go": _words(
        "break case chan const continue default defer else fallthrough for func go goto if import interface map "
        "package range return select struct switch type var"
    ),
    "java": _words(
        "abstract assert boolean break byte case catch char class const continue default do double else enum "
        "extends final finally float for goto if implements import instanceof int interface long native new "
        "package private protected public return short static strictfp super switch synchronized this throw "
        "throws transient try void volatile while true false null"
    ),
    "rust": _words(
        "as async await break const continue crate dyn else enum extern false fn for if impl in let loop match "
        "mod move mut pub ref return self static struct super trait true type unsafe use where while"
    ),
    "c": _C,
    "cpp": _C
    | _words(
        "alignas alignof bool catch class constexpr consteval constinit const_cast decltype delete dynamic_cast "
        "explicit export false friend mutable namespace new noexcept nullptr operator private protected public "
        "reinterpret_cast static_assert static_cast template this throw true try typeid typename using virtual"
    ),
    "csharp": _words(
        "abstract as base bool break byte case catch char checked class const continue decimal default delegate "
        "do double else enum event explicit extern false finally fixed float for foreach goto if implicit in int "
        "interface internal is lock long namespace new null object operator out override params private "
        "protected public readonly ref return sbyte sealed short sizeof stackalloc static string struct switch "
        "this throw true try typeof uint ulong unchecked unsafe ushort using virtual void volatile while"
    ),
    "ruby": _words(
        "alias and begin break case class def defined? do else elsif end ensure false for if in module next nil "
        "not or redo rescue retry return self super then true undef unless until when while yield"
    ),
    "php": _words(
        "abstract and array as break callable case catch class clone const continue declare default do echo "
        "else elseif empty enddeclare endfor endforeach endif endswitch endwhile extends final finally fn for "
        "foreach function global goto if implements include include_once instanceof insteadof interface isset "
        "list match namespace new or print private protected public readonly require require_once return static "
        "switch throw trait try unset use var while xor yield true false null"
    ),
    "kotlin": _words(
        "as break class continue do else false for fun if in interface is null object package return super this "
        "throw true try typealias typeof val var when while"
    ),
    "swift": _words(
        "associatedtype class deinit enum extension fileprivate func import init inout internal let "
        "operator private protocol public rethrows static struct subscript typealias var break case continue "
        "default defer do else fallthrough for guard if in repeat return switch where while as catch false is nil "
        "super self throw throws true try"
    ),
    "scala": _words(
        "abstract case catch class def do else extends false final finally for forsome if implicit import lazy "
        "match new null object override package private protected return sealed super this throw trait try true "
        "type val var while with yield"
    ),
    "lua": _words(
        "and break do else elseif end false for function goto if in local nil not or repeat return then true "
        "until while"
    ),
    "shell": _words(
        "if then else elif fi case esac for select while until do done in function time coproc local export "
        "readonly declare return"
    ),
    "elixir": _words(
        "after and catch do else end false fn in nil not or rescue true when def defp defmodule defmacro "
        "defmacrop defstruct defprotocol defimpl defguard defdelegate defexception"
    ),
    "haskell": _words(
        "case class data default deriving do else foreign if import in infix infixl infixr instance let module "
        "newtype of then type where"
    ),
    "zig": _words(
        "addrspace align allowzero and anyframe anytype asm async await break callconv catch comptime const "
        "continue defer else enum errdefer error export extern fn for if inline linksection noalias noinline "
        "nosuspend opaque or orelse packed pub resume return struct suspend switch test threadlocal try union "
        "unreachable usingnamespace var volatile while true false null undefined"
    ),
}
KEYWORDS = {language: words - _EVERYDAY for language, words in KEYWORDS.items()}


@dataclass(frozen=True)
class Grammar:
    """Where a language's tree-sitter grammar lives (a PyPI wheel) and which of its nodes are definitions.

    A `scope` holds member definitions (classes, impls, interfaces, modules): it is split into them when it does
    not fit one chunk, and its name qualifies theirs (`Outer.inner`). A `function` is kept whole, nested
    definitions included. `patterns` are extra tree-sitter query patterns for definitions known by shape rather
    than node type, capturing `@scope` or `@function`. A definition's name is the first of `names` (a field, else
    a child of that type) that it has; `qualifier` names the field holding the type a function belongs to (Go's
    method receiver). Comments and `leading` nodes directly above a definition belong to it. Matches of `blank`
    (a bytes regex) are replaced by spaces before parsing: macros the grammar cannot parse, offsets unchanged.
    """

    module: str
    scopes: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    patterns: str = ""
    leading: tuple[str, ...] = ()
    names: tuple[str, ...] = ("name", "declarator", "type", "left")
    qualifier: str = ""
    entry: str = "language"
    blank: bytes = b""


_JS_FUNCTIONS = ("function_declaration", "generator_function_declaration", "method_definition")
_JS_PATTERNS = """
(variable_declarator name: (identifier) value: [(arrow_function) (function_expression) (class)]) @function
(assignment_expression left: (member_expression) right: [(arrow_function) (function_expression)]) @function
"""
_TS_SCOPES = ("class_declaration", "abstract_class_declaration", "interface_declaration", "internal_module")
_TS_FUNCTIONS = (
    *_JS_FUNCTIONS,
    "function_signature",
    "method_signature",
    "abstract_method_signature",
    "enum_declaration",
    "type_alias_declaration",
)
# `class EXPORT_MACRO Name : Base {`: tree-sitter reads the macro as the class name and the rest as a function.
_EXPORT_MACRO = rb"(?:(?<=\bclass )|(?<=\bstruct ))[A-Z][A-Z0-9_]*[A-Z0-9](?=\s+[A-Za-z_]\w*\s*(?:final\s*)?[:{])"
_C_TYPES = """
(struct_specifier name: (_) body: (_)) @function
(union_specifier name: (_) body: (_)) @function
(enum_specifier name: (_) body: (_)) @function
"""

GRAMMARS: dict[str, Grammar] = {
    "javascript": Grammar("tree_sitter_javascript", ("class_declaration",), _JS_FUNCTIONS, _JS_PATTERNS),
    "typescript": Grammar(
        "tree_sitter_typescript", _TS_SCOPES, _TS_FUNCTIONS, _JS_PATTERNS, entry="language_typescript"
    ),
    "tsx": Grammar("tree_sitter_typescript", _TS_SCOPES, _TS_FUNCTIONS, _JS_PATTERNS, entry="language_tsx"),
    "go": Grammar(
        "tree_sitter_go",
        functions=("function_declaration", "method_declaration", "type_spec"),
        qualifier="receiver",
    ),
    "java": Grammar(
        "tree_sitter_java",
        (
            "class_declaration",
            "interface_declaration",
            "enum_declaration",
            "record_declaration",
            "annotation_type_declaration",
        ),
        ("method_declaration", "constructor_declaration"),
    ),
    "rust": Grammar(
        "tree_sitter_rust",
        ("impl_item", "trait_item", "mod_item"),
        (
            "function_item",
            "function_signature_item",
            "struct_item",
            "enum_item",
            "union_item",
            "type_item",
            "macro_definition",
        ),
        leading=("attribute_item",),
    ),
    "c": Grammar(
        "tree_sitter_c", functions=("function_definition", "type_definition"), patterns=_C_TYPES, blank=_EXPORT_MACRO
    ),
    "cpp": Grammar(
        "tree_sitter_cpp",
        ("namespace_definition",),
        ("function_definition", "type_definition"),
        _C_TYPES.replace("@function", "@scope")
        + """
(class_specifier name: (_) body: (_)) @scope
""",
        blank=_EXPORT_MACRO,
    ),
    "csharp": Grammar(
        "tree_sitter_c_sharp",
        (
            "class_declaration",
            "struct_declaration",
            "interface_declaration",
            "record_declaration",
            "namespace_declaration",
        ),
        (
            "method_declaration",
            "constructor_declaration",
            "destructor_declaration",
            "property_declaration",
            "enum_declaration",
            "delegate_declaration",
        ),
    ),
    "ruby": Grammar("tree_sitter_ruby", ("class", "module", "singleton_class"), ("method", "singleton_method")),
    "php": Grammar(
        "tree_sitter_php",
        ("class_declaration", "interface_declaration", "trait_declaration", "enum_declaration"),
        ("function_definition", "method_declaration"),
        entry="language_php",
    ),
    "kotlin": Grammar(
        "tree_sitter_kotlin",
        ("class_declaration", "object_declaration"),
        ("function_declaration", "secondary_constructor"),
    ),
    "swift": Grammar(
        "tree_sitter_swift",
        ("class_declaration", "protocol_declaration"),
        ("function_declaration", "init_declaration", "protocol_function_declaration", "typealias_declaration"),
    ),
    "scala": Grammar(
        "tree_sitter_scala",
        ("class_definition", "object_definition", "trait_definition", "enum_definition"),
        ("function_definition", "function_declaration", "type_definition"),
    ),
    "lua": Grammar("tree_sitter_lua", functions=("function_declaration",)),
    "shell": Grammar("tree_sitter_bash", functions=("function_definition",)),
    "elixir": Grammar(
        "tree_sitter_elixir",
        patterns="""
((call target: (identifier) @k) @scope (#any-of? @k "defmodule" "defprotocol" "defimpl"))
((call target: (identifier) @k) @function
 (#any-of? @k "def" "defp" "defmacro" "defmacrop" "defguard" "defguardp" "defdelegate"))
""",
        leading=("unary_operator",),  # @doc, @spec and other module attributes
        names=("arguments",),
    ),
    "haskell": Grammar(
        "tree_sitter_haskell",
        ("class", "instance"),
        ("data_type", "newtype", "type_synonym", "type_family"),
        # `function` is also the node of a type `a -> b`: only a named one is a definition.
        "(function name: (_)) @function (bind name: (_)) @function",
        leading=("haddock", "signature", "pragma"),
    ),
    "zig": Grammar(
        "tree_sitter_zig",
        functions=("function_declaration", "test_declaration"),
        patterns="""
(variable_declaration (identifier)
 [(struct_declaration) (enum_declaration) (union_declaration) (opaque_declaration)]) @scope
""",
        names=("name", "identifier"),
    ),
}


# Languages of prose, markup and data: search weighs them by the question's kind (see `retrieval`).
NON_CODE = frozenset({"markdown", "rst", "text", "toml", "yaml", "json", "ini", "html", "css", "xml", "csv"})


def is_code(language: str) -> bool:
    return language not in NON_CODE


def keywords(language: str) -> frozenset[str]:
    """Lowercase reserved words of `language` (empty for prose, data and unknown languages)."""
    return KEYWORDS.get(language, frozenset())
