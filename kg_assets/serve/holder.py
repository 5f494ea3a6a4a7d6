"""The served version: one loaded `VersionHandle` that follows `CURRENT`, shared by the HTTP and MCP servers.

A watcher thread polls `CURRENT` and the served version's `tuning.json` every `POLL_S` seconds. On a change it
verifies and loads the new version beside the old one (under the new version's reader lease), then swaps one
reference. Requests hold the version they started on (`VersionHolder.use` counts them), and the old handle is
closed, and its lease released, when the last of them ends. A version that fails to load is not switched to:
the old one keeps serving and `status()` reports the failure; the load is retried every `RETRY_S` seconds, or at
once when `CURRENT` or the tuning profile changes again.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kg_assets.lib.errors import KgError
from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets.lib.retrieval import VersionHandle
from kg_assets.lib.tuning import TUNING_FILE

POLL_S = 0.25  # a publish is served within POLL_S + the load time (about a second for a small version)
RETRY_S = 5.0  # a version that failed to load is tried again after this long, in case it was repaired


class Unavailable(Exception):
    """Nothing is loaded: no version is published, or the published one has not loaded (yet)."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class Loaded:
    """One loaded version with its lease; closed when retired and no request uses it any more."""

    handle: VersionHandle
    tuning_stamp: tuple[int, int, int] | None
    stack: contextlib.ExitStack
    loaded_at: str = field(default_factory=_now)
    users: int = 0
    retired: bool = False


@dataclass(frozen=True)
class LoadFailure:
    version: str
    tuning_stamp: tuple[int, int, int] | None
    error: str
    at: str
    monotonic: float

    def due(self) -> bool:
        """True once RETRY_S seconds have passed: the same version is tried again (it may have been repaired)."""
        return time.monotonic() - self.monotonic >= RETRY_S


class VersionHolder:
    """The current version of a lifecycle root, loaded once and swapped atomically when `CURRENT` moves."""

    def __init__(self, root: LifecycleRoot, poll_s: float = POLL_S) -> None:
        self.root = root
        self.poll_s = poll_s
        self.queries_served = 0
        self._active: Loaded | None = None
        self._failure: LoadFailure | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        """Load the current version (a failure is reported by `status`, not raised) and start watching."""
        self.refresh()
        self._watcher = threading.Thread(target=self._watch, name="kg-version-watcher", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        """Stop watching and close the served version (after the requests still using it)."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        with self._lock:
            active, self._active = self._active, None
        if active is not None:
            self._retire(active)

    @contextlib.contextmanager
    def use(self) -> Iterator[VersionHandle]:
        """The served handle, kept open until the block ends even if a swap happens meanwhile; Unavailable
        when nothing is loaded."""
        with self._lock:
            loaded = self._active
            if loaded is None:
                raise Unavailable(self._unavailable_reason())
            loaded.users += 1
        try:
            yield loaded.handle
        finally:
            with self._lock:
                loaded.users -= 1
                done = loaded.retired and loaded.users == 0
            if done:
                loaded.stack.close()

    def count_query(self) -> None:
        with self._lock:
            self.queries_served += 1

    def status(self) -> dict[str, object]:
        """What /health reports: the served version, when it loaded, queries served, and `load_error` while what
        `CURRENT` names (a version, or the served version's new tuning profile) failed to load."""
        with self._lock:
            loaded, failure, served = self._active, self._failure, self.queries_served
        state: dict[str, object] = {
            "status": "ok" if loaded and failure is None else "degraded" if loaded else "unavailable",
            "version": loaded.handle.version if loaded else None,
            "loaded_at": loaded.loaded_at if loaded else None,
            "queries_served": served,
            "notes": loaded.handle.notes if loaded else [],
        }
        if failure is not None:
            state["load_error"] = {"version": failure.version, "error": failure.error, "at": failure.at}
        if loaded is None:
            state["error"] = self._unavailable_reason()
        return state

    # ---- watching ---------------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.refresh()

    def refresh(self) -> None:
        """Load and switch to the version `CURRENT` names if it (or its tuning profile) differs from the served one."""
        try:
            target = self.root.current()
        except KgError as exc:  # a CURRENT that is not a version id: keep serving, report it
            self._fail("CURRENT", None, exc)
            return
        if target is None:
            return  # nothing published (or never was): keep whatever is loaded
        stamp = self._tuning_stamp(target)
        active = self._active
        if active and active.handle.version == target and active.tuning_stamp == stamp:
            with self._lock:
                self._failure = None  # CURRENT names the served version (again)
            return
        failure = self._failure
        if failure and (failure.version, failure.tuning_stamp) == (target, stamp) and not failure.due():
            return
        try:
            loaded = self._load(target, stamp)
        except Exception as exc:  # any failed load leaves the old version serving
            self._fail(target, stamp, exc)
            return
        with self._lock:
            old, self._active, self._failure = self._active, loaded, None
        if old is not None:
            self._retire(old)

    def _load(self, version: str, stamp: tuple[int, int, int] | None) -> Loaded:
        """Lease, verify (sizes and checksums against the manifest) and open a version."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.root.reader_lease(version))
            self.root.verify_version(version, hashes=True)
            handle = stack.enter_context(VersionHandle.open(self.root, version))
            active = self._active
            if active and active.handle.embedder.fingerprint == handle.embedder.fingerprint:
                # the same model: keep its warm session (starting one costs about a second) instead of a new one
                handle.embedder = active.handle.embedder
            handle.search("warm up", 1, "hybrid")  # loads the lazily built parts before the first request
            return Loaded(handle, stamp, stack.pop_all())

    def _retire(self, loaded: Loaded) -> None:
        with self._lock:
            loaded.retired = True
            done = loaded.users == 0
        if done:
            loaded.stack.close()

    def _fail(self, version: str, stamp: tuple[int, int, int] | None, exc: Exception) -> None:
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        with self._lock:
            self._failure = LoadFailure(version, stamp, message, _now(), time.monotonic())

    def _tuning_stamp(self, version: str) -> tuple[int, int, int] | None:
        try:
            st = (self.root.version_dir(version) / TUNING_FILE).stat()
        except (FileNotFoundError, KgError):
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _unavailable_reason(self) -> str:
        if self._failure is not None:
            return f"cannot load {self._failure.version}: {self._failure.error}"
        return f"no version is published under {self.root.root}"
