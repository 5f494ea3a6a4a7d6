"""Where a build's step outputs live: a local directory or any fsspec URL (through universal-pathlib's UPath).

Every build step reads its inputs from and writes its outputs to one location per version that all workers see
(default `versions/<v>.staging/build` on the lifecycle root; a shared filesystem path or e.g. `s3://bucket/kg`
for workers on other machines). Local files are written atomically (temp file, fsync, rename); an object store
writes each object whole. The version's own files still go into its staging directory, sealed by one rename.

A build writes and removes only a location it owns: one it created (or found empty) and marked with
`OWNER_FILE` naming its root and version (`claim`); anything else is never written into nor removed
(`remove_owned`), whatever a path or a record in the root says.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

from kg_assets.lib import faiss_index
from kg_assets.lib.errors import UsageError
from kg_assets.lib.fsutil import (
    atomic_write_bytes,
    atomic_write_npy,
    atomic_write_parquet,
    is_temp_sibling,
    read_regular_bytes,
)

WorkPath = Path | UPath
OWNER_FILE = ".kg-step-outputs"  # in a location a build owns: which root's build of which version made it


def owner_tag(root: Path, version: str = "") -> str:
    """What `OWNER_FILE` holds for `root`'s build of `version`; with no version, the start every build of `root`
    writes (`remove_owned` of a location whose version is not known)."""
    return f"kg-assets step outputs\nroot: {root}\nversion: {version}{chr(10) if version else ''}"


def _owner(path: WorkPath) -> str | None:
    """The owner tag in `path`'s marker, or None when it has none (or it cannot be read)."""
    marker = path / OWNER_FILE
    try:
        data = read_regular_bytes(marker) if is_local(marker) else marker.read_bytes()
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def check_claimable(path: WorkPath, tag: str) -> None:
    """UsageError unless a build with owner `tag` may use `path`: absent, its own, or a directory holding
    nothing but what a claim killed before its marker was in place leaves (the marker's temp file)."""
    if not path.exists() or _owner(path) == tag:
        return
    if not path.is_dir():
        raise UsageError(f"step output location {path} exists and is not a directory; pass another --work-dir")
    if any(not is_temp_sibling(entry.name, OWNER_FILE) for entry in path.iterdir()):
        raise UsageError(
            f"step output location {path} exists and was not made by this build (no {OWNER_FILE} of it); a build "
            "never writes into nor removes what it did not create: pass another --work-dir, or empty it"
        )


def claim(path: WorkPath, tag: str) -> None:
    """Make `path` an empty location owned by `tag` (`check_claimable` first): what an abandoned attempt of the
    same build left is removed, then the directory is created and marked."""
    check_claimable(path, tag)
    remove_owned(path, tag)
    ensure_dir(path)
    write_bytes(path / OWNER_FILE, tag.encode("utf-8"))


def remove_owned(path: WorkPath, tag: str) -> bool:
    """Remove `path` and everything in it only when its marker starts with `tag` (a build made it); whether it
    did."""
    owner = _owner(path)
    if owner is None or not owner.startswith(tag):
        return False
    remove_tree(path)
    return True


def location(spec: str) -> WorkPath:
    """A local path (plain or `file://`) as a `Path`, any other fsspec URL as a `UPath`; UsageError for a
    protocol fsspec does not know."""
    if "://" not in spec or spec.startswith("file://"):
        return Path(spec.removeprefix("file://")).absolute()
    try:
        return UPath(spec)
    except (ValueError, ImportError) as exc:
        raise UsageError(f"unsupported step output location {spec!r}: {exc}") from None


def is_local(path: WorkPath) -> bool:
    return isinstance(path, Path)


def ensure_dir(path: WorkPath) -> None:
    path.mkdir(parents=True, exist_ok=True)


def write_bytes(path: WorkPath, data: bytes) -> None:
    if is_local(path):
        atomic_write_bytes(path, data)
    else:
        path.write_bytes(data)


def write_table(path: WorkPath, table: pa.Table) -> None:
    if is_local(path):
        atomic_write_parquet(path, table)
    else:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        path.write_bytes(sink.getvalue().to_pybytes())


def read_table(path: WorkPath) -> pa.Table:
    if is_local(path):
        return pq.read_table(path)
    with path.open("rb") as fh:
        return pq.read_table(fh)


def write_array(path: WorkPath, array: np.ndarray) -> None:
    if is_local(path):
        atomic_write_npy(path, array)
    else:
        buffer = io.BytesIO()
        np.save(buffer, array)
        path.write_bytes(buffer.getvalue())


def read_array(path: WorkPath, *, mmap: bool = False) -> np.ndarray:
    """An `.npy` array; memory-mapped when local and `mmap` (reading a few rows costs only those rows)."""
    if is_local(path):
        return np.load(path, mmap_mode="r" if mmap else None)
    return np.load(io.BytesIO(path.read_bytes()))


def write_index(path: WorkPath, index: faiss.Index) -> None:
    if is_local(path):
        faiss_index.write_index(index, path)
    else:
        path.write_bytes(faiss.serialize_index(index).tobytes())


def read_index(path: WorkPath) -> faiss.Index:
    if is_local(path):
        return faiss.read_index(str(path))  # not memory-mapped: a shard read here is appended to
    return faiss.deserialize_index(np.frombuffer(path.read_bytes(), dtype=np.uint8))


def remove_tree(path: WorkPath) -> None:
    """Remove a directory and everything in it (nothing when absent); only for a location known to be a build's
    (see `remove_owned`)."""
    if is_local(path):
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.fs.rm(path.path, recursive=True)
