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
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPECS = ROOT / "benchmarks" / "quality" / "repos.json"
DEFAULT_DEST = ROOT / "build" / "bench" / "src"
SOURCES = ("pypi-sdist", "npm", "deb")


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


def _run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def _only(paths: list[Path], what: str) -> Path:
    if len(paths) != 1:
        raise RuntimeError(f"expected exactly one {what}, found {[p.name for p in paths]}")
    return paths[0]


def _extract_tar(archive: Path, into: Path) -> None:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")  # refuses absolute paths, '..' and links leaving `into`


def _fetch(spec: dict, work: Path) -> Path:
    """Download and extract ``spec`` under ``work``; the repository root inside it."""
    download, extracted = work / "download", work / "extracted"
    download.mkdir()
    extracted.mkdir()
    package, version = spec["package"], spec["version"]
    if spec["source"] == "pypi-sdist":
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        _run([*pip, "--dest", str(download), f"{package}=={version}"], cwd=work)
        _extract_tar(_only(sorted(download.iterdir()), "sdist"), extracted)
        return _only(sorted(extracted.iterdir()), "top-level directory in the sdist")
    if spec["source"] == "npm":
        _run(["npm", "pack", "--silent", f"{package}@{version}"], cwd=download)
        _extract_tar(_only(sorted(download.glob("*.tgz")), "npm tarball"), extracted)
        return extracted / "package"
    _run(["apt-get", "download", f"{package}={version}"], cwd=download)
    _run(["dpkg-deb", "-x", str(_only(sorted(download.glob("*.deb")), ".deb")), str(extracted)], cwd=work)
    root = (extracted / spec["subdir"]).resolve()
    if not root.is_relative_to(extracted.resolve()) or not root.is_dir():
        raise RuntimeError(f"{spec['name']}: subdir {spec['subdir']!r} is not a directory in the package")
    return root


def materialize(spec: dict, dest: Path) -> Path:
    """The extracted repository root ``dest/<name>`` for ``spec``, fetched unless already there."""
    target = dest / spec["name"]
    if target.is_dir():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{spec['name']}-", dir=dest) as tmp:
        root = _fetch(spec, Path(tmp))
        root.rename(target)  # same filesystem: atomic
    return target


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
