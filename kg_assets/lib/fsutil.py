"""Crash-safe file primitives: atomic writes, verified copies, directory fsync and advisory locks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from kg_assets.lib.errors import ConflictError

if TYPE_CHECKING:
    import pyarrow as pa

_FICLONE = 0x40049409  # ioctl number of Linux FICLONE (copy-on-write clone of a whole file)
_BLOCK = 1 << 20
CRASH_ENV = "KG_CRASH_AT_STEP"
_crash_steps = 0


def crash_point() -> None:
    """Mark a write step. With $KG_CRASH_AT_STEP=N the process SIGKILLs itself at its Nth step: the
    fault-injection test kills an operation at every step this way and checks what it left."""
    global _crash_steps
    target = os.environ.get(CRASH_ENV)
    if target:
        _crash_steps += 1
        if _crash_steps == int(target):
            os.kill(os.getpid(), signal.SIGKILL)


def crash_steps() -> int:
    """How many write steps (`crash_point`) this process has passed while $KG_CRASH_AT_STEP was set."""
    return _crash_steps


def fsync_dir(path: Path) -> None:
    """Flush a directory entry table so renames and creations inside it survive a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_sibling(path: Path) -> Path:
    """A unique temporary name next to `path` (same directory, so a rename onto `path` is atomic)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")


def is_temp_sibling(name: str, of: str) -> bool:
    """Whether `name` is a `temp_sibling` of a file named `of` (one a killed atomic write left)."""
    return name.startswith(f".{of}.tmp-")


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write that replaces `path` only when the block ends without error: written to a temp
    sibling, fsynced, renamed over `path`, directory fsynced; readers see the old file or the new, never a mix."""
    tmp = temp_sibling(path)
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        crash_point()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    crash_point()
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Pretty-printed, key-sorted JSON with a trailing newline, written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_parquet(path: Path, table: pa.Table) -> None:
    """A zstd-compressed Parquet file, written atomically."""
    import pyarrow as pa  # here, not at the top: readers (a server) never write Parquet and save its ~25 MiB
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def atomic_write_npy(path: Path, array: np.ndarray) -> None:
    """An .npy file streamed to disk (no in-memory copy), written atomically."""
    with atomic_file(path) as fh:
        np.save(fh, array)


def atomic_symlink(link: Path, target: str) -> None:
    """Point `link` at `target` by renaming a new link over it: readers see the old target or the new one."""
    tmp = temp_sibling(link)
    os.symlink(target, tmp)
    crash_point()
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)


def read_regular_bytes(path: Path) -> bytes:
    """The bytes of the regular file at `path` (symlinks followed); never blocks on a FIFO or a device.

    Opened non-blocking and checked with fstat, so no race lets another kind of file in: FileNotFoundError when
    absent, OSError(EINVAL) "not a regular file" for a FIFO, socket, device or directory.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read()
    finally:
        os.close(fd)


def parse_json(data: bytes | str) -> Any:
    """`json.loads`, with a document nested too deeply to parse reported as the ValueError it is (not a
    RecursionError that callers expecting malformed input would let through)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def read_json(path: Path) -> Any:
    """The JSON document in the regular file at `path` (`read_regular_bytes`, `parse_json`): OSError when it
    cannot be read, ValueError (UnicodeDecodeError included) when it is not JSON."""
    return parse_json(read_regular_bytes(path))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def copy_file(src: Path, dst: Path) -> str:
    """Copy `src` to a new file `dst` (a copy-on-write clone where supported), fsync it, return its sha256.

    Never a hardlink: a later in-place rewrite of the source must not reach the copy. The returned hash is
    computed from the bytes read back from `dst`, so the caller can compare it with the source's.
    """
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS):
                raise
            shutil.copyfileobj(fin, fout, _BLOCK)
        crash_point()
        fout.flush()
        os.fsync(fout.fileno())
    return sha256_file(dst)


def open_beneath(directory: Path, relative: str) -> BinaryIO:
    """The regular file at `relative` under `directory`, opened for reading without following a symlink anywhere
    on the way (each component opened with O_NOFOLLOW from its parent's descriptor) and without blocking (a FIFO
    is refused, never waited on). So whatever names it (git's index, a walk), the file read is inside `directory`.

    OSError with errno ELOOP when a component is a symlink, EINVAL for `..` or an empty component, ENOTDIR when a
    parent is not a directory, and EPERM ("not a regular file") for a FIFO, socket or device."""
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise OSError(errno.EINVAL, "not a plain relative path", relative)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    for depth, part in enumerate(parts):
        parent = fd
        try:
            fd = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=parent)
        finally:
            os.close(parent)
        mode = os.fstat(fd).st_mode
        last = depth == len(parts) - 1
        if not (stat.S_ISREG(mode) if last else stat.S_ISDIR(mode)):
            os.close(fd)
            if last:
                raise OSError(errno.EPERM, "not a regular file", relative)
            raise OSError(errno.ENOTDIR, "not a directory", "/".join(parts[: depth + 1]))
    return os.fdopen(fd, "rb")


def tree_size(path: Path) -> int:
    """Bytes in a file, or in every regular file below a directory."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@contextlib.contextmanager
def exclusive_lock(path: Path, timeout: float, what: str) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing); ConflictError after `timeout` seconds.

    Waiting backs off (50 ms doubling to 1 s). The holder writes its pid and command line into the file, so a
    waiter that gives up can say who holds it. flock is released by the kernel when the holder dies, so a
    SIGKILLed process never leaves it stuck.
    """
    deadline = time.monotonic() + timeout
    pause = 0.05
    while (fd := try_flock(path, shared=False)) is None:
        if time.monotonic() >= deadline:
            raise ConflictError(f"{what} is busy: {lock_holder(path)} holds {path}; wait for it to finish and retry")
        time.sleep(min(pause, max(deadline - time.monotonic(), 0.0)))
        pause = min(pause * 2, 1.0)
    try:
        with contextlib.suppress(OSError):  # naming the holder is best effort (e.g. on a full disk)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}: {' '.join(sys.argv)[:300]}".encode(), 0)
        yield
    finally:
        os.close(fd)


def lock_holder(path: Path) -> str:
    """Who holds the lock at `path`, as its holder wrote it (`pid N: command line`)."""
    try:
        return read_regular_bytes(path).decode("utf-8", errors="replace").strip() or "another process"
    except OSError:
        return "another process"


def is_locked(path: Path) -> bool:
    """True when some live process holds an exclusive flock on `path`."""
    try:
        fd = os.open(path, os.O_RDWR)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def try_flock(path: Path, *, shared: bool) -> int | None:
    """An open descriptor of `path` (created if missing) holding a shared or exclusive flock, or None when a
    conflicting lock is held. Closing the descriptor releases the lock (so does the holder's death).

    A lock file may be removed by whoever holds it exclusively (gc removes those of removed versions,
    `remove_lock_file`); a lock taken on a file no longer at `path` is let go and taken again on the new one.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            if _still_at(fd, path):
                return fd
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _still_at(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is still the one named `path`."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def remove_lock_file(path: Path) -> bool:
    """Remove the lock file at `path` when nobody holds it (taking it exclusively meanwhile, so a process that
    opened it before the removal notices, see `try_flock`); whether it did."""
    fd = try_flock(path, shared=False)
    if fd is None:
        return False
    try:
        path.unlink()
    finally:
        os.close(fd)
    return True
