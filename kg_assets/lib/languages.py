"""Per-language facts the engine needs beyond file extensions: reserved words that carry no meaning as search
content (the lexical index drops them from that language's chunks)."""

from __future__ import annotations

import keyword

KEYWORDS: dict[str, frozenset[str]] = {
    # Hard keywords only: soft ones (`match`, `case`, `type`) are common identifiers.
    "python": frozenset(k.lower() for k in keyword.kwlist) | {"self", "cls"},
}


def keywords(language: str) -> frozenset[str]:
    """Lowercase reserved words of `language` (empty for prose, data and unknown languages)."""
    return KEYWORDS.get(language, frozenset())
