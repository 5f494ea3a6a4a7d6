"""Fetch the labelled benchmark's repositories from their registries at pinned versions.

Each spec in ``benchmarks/quality/repos.json`` names a package version on PyPI (an sdist), npm (a ``npm pack``
tarball) or Debian (a ``.deb``). ``materialize`` downloads it, extracts it into a temporary directory next to
the destination and renames that into place, so an extracted repository is either complete or absent; a second
call finds it and does nothing. The returned directory is the repository root the questions' paths are
relative to: the sdist's single top-level directory, npm's ``package/``, or the spec's ``subdir`` of the .deb.

    python scripts/bench_repos.py materialize [--dest build/bench/src] [NAME...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kg_assets.lib import registry_packages

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPECS = ROOT / "benchmarks" / "quality" / "repos.json"
DEFAULT_DEST = ROOT / "build" / "bench" / "src"
SOURCES = registry_packages.SOURCES


def load_specs(path: Path | str = DEFAULT_SPECS) -> list[dict]:
    """The repository specs, checked for the fields ``materialize`` needs."""
    specs = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(specs, list):
        raise ValueError(f"{path}: expected a JSON list of repository specs")
    for spec in specs:
        missing = [key for key in ("name", "language", "source", "package", "version") if key not in spec]
        if missing:
            raise ValueError(f"{path}: spec {spec.get('name', spec)!r} lacks {', '.join(missing)}")
        if spec["source"] not in SOURCES:
            raise ValueError(f"{path}: {spec['name']}: unknown source {spec['source']!r} (one of {SOURCES})")
        if spec["source"] == "deb" and "subdir" not in spec:
            raise ValueError(f"{path}: {spec['name']}: a deb spec needs a subdir")
    return specs


def materialize(spec: dict, dest: Path) -> Path:
    """The extracted repository root ``dest/<name>`` for ``spec``, fetched unless already there."""
    return registry_packages.materialize(
        spec["source"], spec["package"], spec["version"], dest / spec["name"], spec.get("subdir", "")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("materialize", help="fetch and extract repositories (all, or those named)")
    cmd.add_argument("names", nargs="*", metavar="NAME")
    cmd.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    cmd.add_argument("--specs", type=Path, default=DEFAULT_SPECS)
    args = parser.parse_args(argv)

    specs = load_specs(args.specs)
    unknown = set(args.names) - {spec["name"] for spec in specs}
    if unknown:
        parser.error(f"unknown repositories: {', '.join(sorted(unknown))}")
    for spec in specs:
        if args.names and spec["name"] not in args.names:
            continue
        root = materialize(spec, args.dest)
        files = sum(1 for p in root.rglob("*") if p.is_file())
        print(f"{spec['name']:<14} {spec['source']:<10} {spec['version']:<24} {files:>5} files  {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
