"""Per-language facts the engine needs beyond file extensions: reserved words that carry no meaning as search
content (the lexical index drops them from that language's chunks)."""

from __future__ import annotations

import keyword

KEYWORDS: dict[str, frozenset[str]] = {
    # Hard keywords only: soft ones (`match`, `case`, `type`) are common identifiers.
    "python": frozenset(k.lower() for k in keyword.kwlist) | {"self", "cls"},
}


# Languages of prose, markup and data: search weighs them by the question's kind (see `retrieval`).
NON_CODE = frozenset({"markdown", "rst", "text", "toml", "yaml", "json", "ini", "html", "css", "xml", "csv"})


def is_code(language: str) -> bool:
    return language not in NON_CODE


def keywords(language: str) -> frozenset[str]:
    """Lowercase reserved words of `language` (empty for prose, data and unknown languages)."""
    return KEYWORDS.get(language, frozenset())
