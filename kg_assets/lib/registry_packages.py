"""Source trees from registry packages at pinned versions: PyPI sdists, npm tarballs and Debian .debs.

`download` fetches one package's file with the registry's ordinary client (`pip download --no-binary :all:`,
`npm pack`, `apt-get download`); `extract` unpacks it and returns the source root inside it: the sdist's single
top-level directory, npm's `package/`, or a given subdirectory of the .deb. `materialize` does both into a
temporary directory renamed into place, so an extracted tree is either complete or absent.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SOURCES = ("pypi-sdist", "npm", "deb")


def _run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def _only(paths: list[Path], what: str) -> Path:
    if len(paths) != 1:
        raise RuntimeError(f"expected exactly one {what}, found {[p.name for p in paths]}")
    return paths[0]


def download(source: str, package: str, version: str, dest: Path) -> Path:
    """The package file (sdist, .tgz or .deb) downloaded into the empty directory `dest`."""
    dest = dest.resolve()  # the clients run in other working directories
    dest.mkdir(parents=True, exist_ok=True)
    if source == "pypi-sdist":
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        _run([*pip, "--dest", str(dest), f"{package}=={version}"], cwd=dest.parent)  # not dest: builds leave dirs
        return _only(sorted(p for p in dest.iterdir() if p.is_file()), "sdist")
    if source == "npm":
        _run(["npm", "pack", "--silent", f"{package}@{version}"], cwd=dest)
        return _only(sorted(dest.glob("*.tgz")), "npm tarball")
    if source == "deb":
        _run(["apt-get", "download", f"{package}={version}"], cwd=dest)
        return _only(sorted(dest.glob("*.deb")), ".deb")
    raise ValueError(f"unknown source {source!r} (one of {SOURCES})")


def extract(archive: Path, source: str, into: Path, subdir: str = "") -> Path:
    """Unpack `archive` into the empty directory `into`; the source root inside it."""
    archive, into = archive.resolve(), into.resolve()
    into.mkdir(parents=True, exist_ok=True)
    if source == "deb":
        _run(["dpkg-deb", "-x", str(archive), str(into)], cwd=into)
        root = (into / subdir).resolve()
        if not root.is_relative_to(into.resolve()) or not root.is_dir():
            raise RuntimeError(f"{archive.name}: subdir {subdir!r} is not a directory in the package")
        return root
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")  # refuses absolute paths, '..' and links leaving `into`
    root = into / "package" if source == "npm" else _only(sorted(into.iterdir()), "top-level directory in the sdist")
    return root / subdir if subdir else root


def materialize(source: str, package: str, version: str, target: Path, subdir: str = "") -> Path:
    """The extracted source root at `target`, fetched unless already there."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}-", dir=target.parent) as tmp:
        archive = download(source, package, version, Path(tmp) / "download")
        extract(archive, source, Path(tmp) / "extracted", subdir).rename(target)  # same filesystem: atomic
    return target
