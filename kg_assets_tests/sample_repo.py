"""A small real repository written by tests: Python modules with classes, functions and docstrings, other text
files, a file with non-UTF-8 bytes, an empty file, a binary file and an ignored directory."""

from __future__ import annotations

from pathlib import Path

GEOMETRY = '''"""Plane geometry helpers."""

import math

UNIT = 1.0


class Circle:
    """A circle given by its radius."""

    def __init__(self, radius: float) -> None:
        self.radius = radius

    def area(self) -> float:
        """Area enclosed by the circle."""
        return math.pi * self.radius**2

    def circumference(self) -> float:
        """Length of the circle's boundary."""
        return 2 * math.pi * self.radius


def hypotenuse(a: float, b: float) -> float:
    """Length of the hypotenuse of a right triangle with legs a and b."""
    return math.sqrt(a * a + b * b)


# Trailing module code is kept too.
ORIGIN = (0.0, 0.0)
'''

PARSING = '''"""Configuration file parsing."""

import json


def parse_config(path: str) -> dict:
    """Read a JSON configuration file and return its settings as a dictionary."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def tokenize_words(text: str) -> list[str]:
    """Split a sentence into lowercase words."""
    return [w.lower() for w in text.split()]


async def fetch_remote(url: str) -> bytes:
    """Download the bytes behind a URL."""
    raise NotImplementedError(url)
'''


def big_module(functions: int = 40) -> str:
    """A module larger than one chunk: many documented functions plus one very long function."""
    parts = ['"""Generated module."""\n']
    for i in range(functions):
        parts.append(f'\n\ndef helper_{i}(x: int) -> int:\n    """Return x plus {i}."""\n    return x + {i}\n')
    body = "".join(f"    total += {i} * x\n" + ("\n" if i % 10 == 9 else "") for i in range(200))
    parts.append(
        f'\n\ndef long_sum(x: int) -> int:\n    """A long function."""\n    total = 0\n{body}    return total\n'
    )
    return "".join(parts)


def write_repo(root: Path) -> Path:
    (root / "shapes").mkdir(parents=True)
    (root / "shapes" / "__init__.py").write_text("")
    (root / "shapes" / "geometry.py").write_text(GEOMETRY)
    (root / "parsing.py").write_text(PARSING)
    (root / "generated_big.py").write_text(big_module())
    (root / "README.md").write_text("# Sample\n\nA tiny repository for kg-assets tests.\n\nIt parses configs.\n")
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1"))
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(64))
    (root / "node_modules" / "dep").mkdir(parents=True)
    (root / "node_modules" / "dep" / "index.js").write_text("module.exports = 1;\n")
    (root / ".gitignore").write_text("ignored/\n*.log\n")
    (root / "ignored").mkdir()
    (root / "ignored" / "skip.py").write_text("SKIP = True\n")
    (root / "debug.log").write_text("noise\n")
    return root
