"""The lifecycle root: version directories, staging, manifests, and the atomic `CURRENT` pointer.

Layout under a root::

    CURRENT                 text: the active version id (no newline)
    current -> versions/<v> symlink kept in step with CURRENT
    history.json            every pointer flip (action, from, to, time)
    versions/<v>.staging/   being built or staged; never served (`.work-location`: the build's step outputs,
                            when they live outside it, go with it)
    versions/<v>/           complete: canonical files plus manifest.json
    .lock, .locks/<v>.lock  advisory locks (root-wide; per version while it is staged)
    .reserve                1 MiB kept free for a flip on a full disk
    .scratch/               private scratch directories of running builds (gc removes abandoned ones)
    .locks/<v>.read         reader leases: shared while a server reads the version, exclusive while gc removes it

Every write is temp file + fsync + rename (+ directory fsync), so a crash at any instant leaves `CURRENT`
naming a complete version or nothing.

Longer than our 450-line guide: staging, sealing, flips and gc all act under the same root lock and on the same
layout, and their write orders together are what the failure model guarantees (README); they are kept in one
place so that one reading checks them. Validation (`validation`) and the eval gate (`eval_gate`) live outside.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from kg_assets.lib.errors import ConflictError, KgError, NotFoundError, UsageError, ValidationError
from kg_assets.lib.fsutil import (
    atomic_symlink,
    atomic_write_json,
    atomic_write_text,
    copy_file,
    crash_point,
    exclusive_lock,
    fsync_dir,
    is_locked,
    is_temp_sibling,
    lock_holder,
    read_json,
    read_regular_bytes,
    remove_lock_file,
    sha256_file,
    tree_size,
    try_flock,
)

ROOT_ENV_VARS = ("KG_INDEXES_DIR", "CODEINTEL_INDEXES_DIR")
STAGING_SUFFIX = ".staging"
MANIFEST = "manifest.json"
FAISS_FILE = "faiss.index"
CATALOG_FILE = "catalog.duckdb"
SCIP_FILE = "index.scip"
IDMAP_FILE = "faiss_idmap.parquet"
TUNING_FILE = "tuning.json"
AUDIT_FILE = "faiss.index.audit.json"  # the tuning audit snapshot
CANONICAL_FILES = (FAISS_FILE, CATALOG_FILE, SCIP_FILE, IDMAP_FILE, TUNING_FILE)
# The only files of a version that may change after it is complete (tune rewrites them atomically).
MUTABLE_FILES = frozenset({TUNING_FILE, AUDIT_FILE})
LOCK_TIMEOUT_S = 30.0
MAX_VERSION_LEN = 128
RESERVE_BYTES = 1 << 20
SCRATCH_DIR = ".scratch"
# In a staging directory: where its build keeps step outputs outside it (`--work-dir`); they go when it goes.
WORK_RECORD = ".work-location"

_VERSION_RE = re.compile(r"[A-Za-z0-9._-]+")
# What `.locks/` holds: `<v>.lock`, `<v>.read`, `<v>.lease`, and temp files of lease writes (`fsutil.temp_sibling`).
_LOCK_FILE_RE = re.compile(r"\.?(?P<version>.+?)\.(?:lock|read|lease)(?:\.tmp-.*)?")
_NOT_OURS = "not the staging directory of a version id: no stage or build made it; gc leaves it alone"
_EXPECT_ANY = object()


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The lifecycle root: `root` if given, else $KG_INDEXES_DIR, else $CODEINTEL_INDEXES_DIR, else ./indexes."""
    if not root:
        root = next((os.environ[v] for v in ROOT_ENV_VARS if os.environ.get(v)), "indexes")
    return Path(root).expanduser().absolute()


def is_version_id(name: str) -> bool:
    try:
        check_version_id(name)
    except UsageError:
        return False
    return True


def check_version_id(version: str) -> str:
    """Return `version` if it is a safe directory name; UsageError otherwise."""
    if (
        not version
        or len(version) > MAX_VERSION_LEN
        or not _VERSION_RE.fullmatch(version)
        or version in (".", "..")
        or version.startswith(".")
        or version.endswith(STAGING_SUFFIX)
    ):
        shown = version if len(version) <= 40 else f"{version[:40]}... ({len(version)} characters)"
        raise UsageError(
            f"invalid version id {shown!r}: use at most {MAX_VERSION_LEN} letters, digits, '.', '_' and '-' "
            f"(not starting with '.', not ending in '{STAGING_SUFFIX}')"
        )
    return version


def natural_key(name: str) -> list[Any]:
    """Sort key that orders embedded numbers by value (`v2` before `v10`)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _now() -> tuple[str, float]:
    ts = time.time()
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds"), ts


@dataclass(frozen=True)
class Flip:
    """Outcome of publish or rollback: where the pointer was, where it is now, whether it moved."""

    action: str
    from_version: str | None
    to_version: str
    changed: bool


@dataclass(frozen=True)
class VersionInfo:
    """One entry of `status`: a version directory and its state."""

    version: str
    state: str  # current | published | staged | staging | broken
    created: str | None
    size_bytes: int
    problem: str | None = None
    kind: str | None = None  # fast | full (manifest attrs, see lib/progressive.py); None for staging or broken


@dataclass
class GcReport:
    removed_versions: list[str] = field(default_factory=list)
    removed_staging: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    removed_derived: list[str] = field(default_factory=list)  # caches and eval records of versions now gone
    in_use: list[str] = field(default_factory=list)  # kept only because a reader (a server) holds their lease


class Validation(Protocol):
    """The checks of artifact formats the lifecycle does not read itself (FAISS, DuckDB, SCIP, the ID map, the
    tuning profile): `kg_assets.lib.validation` unless a root is given others."""

    def validate_artifacts(self, vdir: Path) -> dict[str, Any]:
        """Summary attributes of a staged version for its manifest; ValidationError when its files disagree."""
        ...

    def check_sidecar(self, path: Path) -> None:
        """ValidationError unless a mutable sidecar of a complete version still parses."""
        ...


class LifecycleRoot:
    """A lifecycle root directory. Constructing one touches nothing on disk; only mutating calls create it."""

    def __init__(self, root: str | os.PathLike[str] | None = None, validation: Validation | None = None) -> None:
        self.root = resolve_root(root)
        self._given_validation = validation
        self.versions_dir = self.root / "versions"
        self.current_file = self.root / "CURRENT"
        self.current_link = self.root / "current"
        self.history_file = self.root / "history.json"
        self._lock_file = self.root / ".lock"
        self._reserve_file = self.root / ".reserve"
        self._locks_dir = self.root / ".locks"

    # ---- reading -------------------------------------------------------------------------------

    def version_dir(self, version: str) -> Path:
        return self.versions_dir / check_version_id(version)

    def staging_dir(self, version: str) -> Path:
        return self.versions_dir / f"{check_version_id(version)}{STAGING_SUFFIX}"

    def current(self) -> str | None:
        """The active version id, or None when nothing has been published.

        ValidationError when `CURRENT` is unreadable or holds something that is not a version id (it is never
        trusted as a path).
        """
        try:
            text = read_regular_bytes(self.current_file).decode("utf-8").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ValidationError(f"{self.current_file} is unreadable ({why}); write a version id into it") from None
        if not text:
            return None
        try:
            return check_version_id(text)
        except UsageError:
            raise ValidationError(
                f"{self.current_file} does not hold a version id ({len(text)} characters that are not one); write "
                "the id of a complete version into it (see `indexctl ls`)"
            ) from None

    def trusted_current(self) -> str | None:
        """`current()`, checked against the rest of the root: ValidationError when `CURRENT` names a version that is
        not complete, or disagrees with a readable history in a way no crash leaves (it was edited by hand)."""
        current = self.current()
        if current is not None and not self.version_dir(current).is_dir():
            raise ValidationError(
                f"{self.current_file} names {current}, which is not a complete version under {self.versions_dir}; "
                "publish a complete version to repair the pointer (see `indexctl ls`)"
            )
        problem = self._edited_pointer()
        if problem:
            raise ValidationError(problem)
        return current

    def _edited_pointer(self) -> str | None:
        """Why `CURRENT` disagrees with the history (see `history`), or None; None too when the history is
        malformed (whoever needs it, gc or rollback, fails on reading it)."""
        try:
            return self._committed_events()[1]
        except ValidationError:
            return None

    def _link_names(self, version: str) -> bool:
        return self.current_link.is_symlink() and os.readlink(self.current_link) == os.path.join("versions", version)

    def current_dir(self) -> Path | None:
        version = self.current()
        return self.versions_dir / version if version else None

    def list_versions(self) -> list[str]:
        """Complete version ids (staging directories and names that are not version ids excluded), in natural
        order."""
        if not self.versions_dir.is_dir():
            return []
        names = [p.name for p in self.versions_dir.iterdir() if p.is_dir() and is_version_id(p.name)]
        return sorted(names, key=natural_key)

    def check_output_path(self, path: Path, option: str) -> None:
        """UsageError when writing `path` could change a version's files: it lies under `versions/` (symlinks
        resolved, so `current/...` counts) or it is an existing hard link to a version's file; or when it exists
        and is neither a regular file nor a directory (opening a FIFO or a device would block or never end)."""
        path = Path(path)
        if path.exists() and not (path.is_file() or path.is_dir()):
            raise UsageError(f"{path} is not a regular file; pass another {option}")
        if path.resolve().is_relative_to(self.versions_dir.resolve()):
            raise UsageError(
                f"{path} is inside {self.versions_dir}, whose versions are immutable; pass another {option}"
            )
        linked = self._hard_linked_version(path)
        if linked:
            raise UsageError(
                f"{path} is a hard link to a file of version {linked}, which is immutable; pass another {option}"
            )

    def _hard_linked_version(self, path: Path) -> str | None:
        """The version holding another name of the file at `path` (same inode), if any."""
        try:
            info = path.stat()
        except OSError:
            return None
        if info.st_nlink < 2 or not self.versions_dir.is_dir():
            return None
        for vdir in self.versions_dir.iterdir():
            for file in vdir.rglob("*") if vdir.is_dir() else ():
                if file.is_file() and os.path.samestat(file.stat(), info):
                    return vdir.name
        return None

    def history(self) -> list[dict[str, Any]]:
        """Every committed pointer flip, oldest first; ValidationError when `history.json` is malformed or
        `CURRENT` disagrees with it.

        A flip writes its record (`from` = `CURRENT` as it was) before `CURRENT` (the commit point) and the
        `current` link after it, so a last record whose `to` is neither `CURRENT` nor the link's target but whose
        `from` is `CURRENT` belongs to a flip that failed or crashed before committing: it is not part of the
        history. Any other disagreement means `CURRENT` was changed outside a flip (by hand).
        """
        events, problem = self._committed_events()
        if problem:
            raise ValidationError(problem)
        return events

    def _committed_events(self) -> tuple[list[dict[str, Any]], str | None]:
        """The committed records (see `history`), and why `CURRENT` cannot be trusted, if it cannot (then every
        record is returned: a flip appends to them, recording where the hand-edited pointer went)."""
        events = self._recorded_events()
        current = self.current()
        if not events or events[-1]["to"] == current:
            return events, None
        last = events[-1]
        if last["from"] == current and not self._link_names(last["to"]):
            return events[:-1], None
        return events, (
            f"{self.current_file} names {current or 'nothing'} but the last flip in {self.history_file} went from "
            f"{last['from'] or 'nothing'} to {last['to']}: CURRENT was changed outside publish and rollback; "
            "publish the version that should be current to record it"
        )

    def ever_current(self) -> set[str]:
        """Versions that have been current at some point (by the history)."""
        return {v for e in self.history() for v in (e["from"], e["to"]) if v}

    def _recorded_events(self) -> list[dict[str, Any]]:
        try:
            doc = read_json(self.history_file)
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise self._bad_history(str(exc)) from None
        events = doc.get("events") if isinstance(doc, dict) else None
        if not isinstance(events, list) or not all(
            isinstance(e, dict) and isinstance(e.get("to"), str) and isinstance(e.get("from"), str | None)
            for e in events
        ):
            raise self._bad_history('expected {"events": [{"action", "from", "to", "at"}, ...]}')
        return events

    def _bad_history(self, why: str) -> ValidationError:
        return ValidationError(
            f"{self.history_file} is malformed ({why}); restore it from a backup, or move it aside to start a new "
            "history (gc then protects only the current version)"
        )

    def read_manifest(self, version: str) -> dict[str, Any]:
        """The manifest of a complete version; NotFoundError or ValidationError when it is missing or bad."""
        path = self.version_dir(version) / MANIFEST
        if not path.parent.is_dir():
            raise self._not_found(version)
        try:
            manifest = read_json(path)
        except FileNotFoundError:
            raise ValidationError(f"version {version} has no {MANIFEST}; it is incomplete, re-stage it") from None
        except OSError as exc:
            raise ValidationError(f"version {version}: {MANIFEST} is unreadable ({exc.strerror})") from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValidationError(f"version {version}: {MANIFEST} is not valid JSON ({exc})") from None
        problem = _manifest_problem(manifest, version)
        if problem:
            raise ValidationError(f"version {version}: {MANIFEST} {problem}; the version is broken, re-stage it")
        return manifest

    def catalog_sha256(self, version: str) -> str:
        """The sha256 of the version's catalog as its manifest records it: what caches derived from it key on."""
        try:
            return self.read_manifest(version)["files"][CATALOG_FILE]["sha256"]
        except KeyError:
            raise ValidationError(f"version {version}: manifest.json records no {CATALOG_FILE}") from None

    def verify_version(self, version: str, *, hashes: bool = True) -> dict[str, Any]:
        """Check a complete version against its manifest (sizes, and sha256 unless `hashes` is False).

        Mutable sidecars are not hashed; a tuning profile must still parse. Returns the manifest.
        """
        manifest = self.read_manifest(version)
        vdir = self.version_dir(version)
        if not manifest["validation"].get("ok"):
            raise ValidationError(f"version {version} failed validation when it was staged; re-stage it")
        for name, entry in manifest["files"].items():
            path = vdir / name
            if entry.get("mutable"):
                if path.exists():
                    self._validation().check_sidecar(path)
                continue
            if not path.is_file():
                raise ValidationError(f"version {version}: {name} is missing; the version is broken")
            if path.stat().st_size != entry["size"]:
                raise ValidationError(
                    f"version {version}: {name} has {path.stat().st_size} bytes, manifest says {entry['size']}"
                )
            if hashes and sha256_file(path) != entry["sha256"]:
                raise ValidationError(f"version {version}: {name} does not match its manifest sha256")
        return manifest

    def status(self) -> list[VersionInfo]:
        """Every version directory with its state, in natural order; cheap (sizes only, no hashing)."""
        if not self.versions_dir.is_dir():
            return []
        current = self.current()
        try:
            published = self.ever_current()
        except ValidationError:  # a malformed history only costs the published/staged distinction here
            published = set()
        infos = []
        for path in self.versions_dir.iterdir():
            if not path.is_dir() or path.name.startswith("."):
                continue
            size = tree_size(path)
            if path.name.endswith(STAGING_SUFFIX):
                version = path.name[: -len(STAGING_SUFFIX)]
                if not is_version_id(version):
                    infos.append(VersionInfo(path.name, "broken", None, size, _NOT_OURS))
                    continue
                busy = is_locked(self._locks_dir / f"{version}.lock")
                note = None if busy else "abandoned: no process is writing it; `indexctl gc` removes it"
                infos.append(VersionInfo(path.name, "staging", None, size, note))
                continue
            try:
                manifest = self.verify_version(path.name, hashes=False)
            except (ValidationError, UsageError) as exc:
                infos.append(VersionInfo(path.name, "broken", None, size, str(exc)))
                continue
            if path.name == current:
                state = "current"
            elif path.name in published:
                state = "published"
            else:
                state = "staged"
            kind = manifest.get("attrs", {}).get("kind", "full")
            infos.append(VersionInfo(path.name, state, manifest.get("created"), size, kind=kind))
        return sorted(infos, key=lambda info: natural_key(info.version))

    # ---- staging -------------------------------------------------------------------------------

    def stage(
        self,
        version: str,
        faiss_path: Path,
        duckdb_path: Path,
        scip_path: Path,
        *,
        idmap_path: Path | None = None,
        tuning_path: Path | None = None,
        extras: Mapping[str, Path] | None = None,
    ) -> Path:
        """Copy, verify and validate artifacts into `versions/<v>.staging`, then rename it to `versions/<v>`.

        The copies are clones or plain copies (never hardlinks), fsynced and re-hashed against the source.
        Anything short of the final rename leaves only a staging directory, which is never publishable.
        """
        sources = stage_sources(faiss_path, duckdb_path, scip_path, idmap_path, tuning_path, extras)
        self.check_new_version(version)
        with self.staging(version) as staging:
            files = {}
            for name, src in sources.items():
                files.update(_copy_verified(src, staging / name, name))
            self._seal(version, staging, sources, files, {})
        return self.version_dir(version)

    def finalize(self, version: str, staging: Path, attrs: Mapping[str, Any]) -> Path:
        """Seal a staging directory a builder wrote in place: hash, validate, write the manifest, rename.

        The caller holds the version's staging lock (see `staging`).
        """
        (staging / WORK_RECORD).unlink(missing_ok=True)  # the builder removed its step outputs before sealing
        files = {
            str(path.relative_to(staging)): {"size": path.stat().st_size, "sha256": sha256_file(path)}
            for path in sorted(staging.rglob("*"))
            if path.is_file() and path.name != MANIFEST
        }
        self._seal(version, staging, {}, files, attrs)
        return self.version_dir(version)

    def _seal(
        self,
        version: str,
        staging: Path,
        sources: Mapping[str, Path],
        files: dict[str, dict[str, Any]],
        attrs: Mapping[str, Any],
    ) -> None:
        """Validate the staged files, write the manifest, then rename the directory into place."""
        for name, entry in files.items():
            entry["mutable"] = name in MUTABLE_FILES
        attrs = {**self._validation().validate_artifacts(staging), **attrs}
        from kg_assets.lib import health  # imported here: health reads versions through this module

        health.check_artifacts(self, version, staging)
        created, created_ts = _now()
        manifest = {
            "format": 1,
            "version": version,
            "created": created,
            "created_ts": created_ts,
            "sources": {name: str(src) for name, src in sources.items()},
            "files": files,
            "attrs": attrs,
            "validation": {"ok": True, "checked_at": created},
        }
        atomic_write_json(staging / MANIFEST, manifest)
        self._finalize(version, staging)

    def check_new_version(self, version: str) -> None:
        """UsageError for a bad id, ConflictError when `version` is already complete."""
        if self.version_dir(version).exists():
            raise ConflictError(f"version {version} already exists; choose a new version id")

    def check_not_staging(self, version: str) -> None:
        """ConflictError when another process is staging or building `version` right now."""
        lock = self._locks_dir / f"{check_version_id(version)}.lock"
        if is_locked(lock):
            raise ConflictError(
                f"version {version} is being staged or built ({lock_holder(lock)}); wait for it or choose another id"
            )

    @contextlib.contextmanager
    def staging_lock(self, version: str) -> Iterator[None]:
        """Hold the lock that says "version is being staged or built" (ConflictError if someone holds it, or a
        build run holds the version's lease)."""
        self.check_new_version(version)
        _root_dir(self.versions_dir)
        _root_dir(self._locks_dir)
        with exclusive_lock(self._locks_dir / f"{version}.lock", 0, f"staging of version {version}"):
            self._check_no_build_lease(version)
            yield

    # ---- build leases: held by a run across its steps, whatever process or host runs each step -------------

    def build_lease_path(self, version: str) -> Path:
        return self._locks_dir / f"{check_version_id(version)}.lease"

    def build_lease(self, version: str) -> dict[str, Any] | None:
        """The run holding `version`'s build lease (`run_id`, `host`, `taken`), or None."""
        unknown = {"run_id": "unknown", "host": "unknown", "taken": None}  # a torn or foreign file
        try:
            lease = read_json(self.build_lease_path(version))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return unknown
        fields = isinstance(lease, dict) and all(isinstance(lease.get(key), str) for key in ("run_id", "host"))
        return lease if fields else unknown

    def build_leases(self) -> dict[str, dict[str, Any]]:
        """Every held build lease, by version."""
        names = sorted(self._locks_dir.glob("*.lease")) if self._locks_dir.is_dir() else []
        return {p.stem: lease for p in names if (lease := self.build_lease(p.stem)) is not None}

    def take_build_lease(
        self, version: str, run_id: str, host: str, *, inherits: Collection[str] = (), is_dead: Callable[[str], bool]
    ) -> None:
        """Hold `version`'s build lease for run `run_id` (a file naming the run and host, so every step of the run,
        in any process, sees it). A lease of `run_id` itself or of a run it re-executes (`inherits`) passes to it;
        one of a run `is_dead` says has ended is reclaimed; any other is a ConflictError. Sealing or the run's
        failure releases it (`release_build_lease`)."""
        self.check_new_version(version)
        _root_dir(self.versions_dir)
        _root_dir(self._locks_dir)
        with exclusive_lock(self._locks_dir / f"{version}.lock", LOCK_TIMEOUT_S, f"staging of version {version}"):
            held = self.build_lease(version)
            if held and held["run_id"] != run_id and held["run_id"] not in inherits and not is_dead(held["run_id"]):
                raise ConflictError(self._lease_message(version, held))
            if not held or held["run_id"] != run_id:
                atomic_write_json(self.build_lease_path(version), {"run_id": run_id, "host": host, "taken": _now()[0]})

    def release_build_lease(self, version: str, run_id: str) -> bool:
        """Drop `version`'s build lease if run `run_id` holds it; whether it did."""
        path = self.build_lease_path(version)
        if not path.exists():
            return False
        with exclusive_lock(self._locks_dir / f"{version}.lock", LOCK_TIMEOUT_S, f"staging of version {version}"):
            held = self.build_lease(version)
            if held is None or held["run_id"] != run_id:
                return False
            path.unlink()
            return True

    def _check_no_build_lease(self, version: str) -> None:
        held = self.build_lease(version)
        if held is not None:
            raise ConflictError(self._lease_message(version, held))

    def _lease_message(self, version: str, held: dict[str, Any]) -> str:
        return (
            f"version {version} is being built by run {held['run_id'][:8]} on {held['host']} "
            f"({self.build_lease_path(version)}); wait for it or choose another id (a dead run's lease is reclaimed "
            f"by the next indexctl command)"
        )

    def reset_staging(self, version: str) -> Path:
        """Empty `versions/<v>.staging` (clearing what an abandoned attempt left, its recorded step outputs too);
        hold `staging_lock` first."""
        staging = self.staging_dir(version)
        if staging.exists():
            self._remove_recorded_work(staging, version)
            shutil.rmtree(staging)
        staging.mkdir()
        return staging

    def record_work_location(self, version: str, location: str) -> None:
        """Note in `versions/<v>.staging` that its build keeps step outputs at `location` (a path or fsspec URL
        outside it), so whatever removes the staging directory removes them too: gc of an abandoned build, the next
        build or stage of the version. Sealing drops the note (the builder removes its step outputs first)."""
        atomic_write_text(self.staging_dir(version) / WORK_RECORD, location)

    def _remove_recorded_work(self, staging: Path, version: str = "") -> None:
        """Remove the step outputs a staging directory's build recorded it keeps elsewhere (`record_work_location`),
        only if that location is marked as made by a build of `version` of this root (of any version when not
        given: a staging directory gc already renamed): the record is never trusted to name what to delete."""
        try:
            location = read_regular_bytes(staging / WORK_RECORD).decode("utf-8")
        except (OSError, UnicodeDecodeError):  # none, or nothing a build wrote
            return
        from kg_assets.lib import workdir  # imported here: fsspec and FAISS are not needed to read a root

        with contextlib.suppress(UsageError, ValueError):  # not a location a build could have used
            workdir.remove_owned(workdir.location(location), workdir.owner_tag(self.root, version))

    @contextlib.contextmanager
    def staging(self, version: str) -> Iterator[Path]:
        """An empty `versions/<v>.staging`, held under the version's lock; removed if the block raises."""
        with self.staging_lock(version):
            staging = self.reset_staging(version)
            try:
                yield staging
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise

    def _finalize(self, version: str, staging: Path) -> None:
        """Rename a fully written staging directory to `versions/<v>` under the root lock."""
        for path in staging.rglob("*"):
            if path.is_dir():
                fsync_dir(path)
        fsync_dir(staging)
        with self._root_lock():
            self.check_new_version(version)
            os.rename(staging, self.version_dir(version))
            crash_point()
            fsync_dir(self.versions_dir)

    # ---- the pointer ---------------------------------------------------------------------------

    def publish(self, version: str, *, expect_current: object = _EXPECT_ANY) -> Flip:
        """Point `CURRENT` and `current` at a complete, verified version (idempotent)."""
        return self._flip("publish", version, expect_current)

    def rollback(self, version: str, *, expect_current: object = _EXPECT_ANY) -> Flip:
        """Point `CURRENT` back at an earlier complete, verified version (idempotent)."""
        return self._flip("rollback", version, expect_current)

    def resolve_version(self, version: str | None) -> str:
        """The given complete version, else the current one; NotFoundError when there is neither."""
        if version is None:
            version = self.current()
            if version is None:
                raise NotFoundError(f"nothing is published under {self.root}; publish a version or pass --version")
        self.check_flip_target(version)
        return version

    def _validation(self) -> Validation:
        """The artifact checks given to this root, else `kg_assets.lib.validation`, imported only when needed."""
        if self._given_validation is not None:
            return self._given_validation
        from kg_assets.lib import validation

        return validation

    def check_flip_target(self, version: str) -> None:
        """UsageError for a bad id, NotFoundError unless `version` is a complete version directory."""
        if not self.version_dir(version).is_dir():
            raise self._not_found(version)

    def check_rollback_target(self, version: str) -> None:
        """ValidationError unless `version` was current before: anything else must pass publish's gate."""
        if version != self.current() and version not in self.ever_current():
            raise ValidationError(
                f"rollback {version} refused: it was never current; publish it instead (`indexctl publish "
                f"{version}`), which checks its eval gate"
            )

    def _flip(self, action: str, version: str, expect_current: object) -> Flip:
        self.check_flip_target(version)
        self.verify_version(version)  # outside the lock: complete versions are immutable
        with self._root_lock():
            current = self.current()
            if expect_current is not _EXPECT_ANY and expect_current != current:
                raise ConflictError(
                    f"{action} {version} refused: CURRENT is {current or '<none>'}, expected "
                    f"{expect_current or '<none>'}; another operator moved it, check `indexctl status`"
                )
            self.check_flip_target(version)
            if current == version:
                return Flip(action, current, version, changed=False)
            if action == "rollback":
                self.check_rollback_target(version)
            try:
                self._commit_flip(action, current, version)
            except OSError as exc:  # a full disk: the reserve makes room for these few kilobytes, once
                if exc.errno != errno.ENOSPC:
                    raise
                if not self._release_reserve():
                    raise KgError(
                        f"{action} {version}: no space left on the disk of {self.root} to write {exc.filename} and "
                        "no reserve left; free space (`indexctl gc` removes old versions) and retry"
                    ) from None
                self._commit_flip(action, current, version)
        return Flip(action, current, version, changed=True)

    def _commit_flip(self, action: str, current: str | None, version: str) -> None:
        """The record first, then CURRENT (the commit point), then the link: a failure before CURRENT is written
        leaves the pointer where it was and a last record that `history` ignores (so this can be retried)."""
        at, _ = _now()
        events = [*self._committed_events()[0], {"action": action, "from": current, "to": version, "at": at}]
        atomic_write_json(self.history_file, {"events": events})
        atomic_write_text(self.current_file, version)
        self._point_link(version)

    def _keep_reserve(self) -> None:
        """Keep `.reserve`, RESERVE_BYTES of allocated disk that a flip frees when the disk is full (so a rollback
        still has room to write CURRENT and history.json); best effort, never an error."""
        if self._reserve_file.exists():
            return
        try:
            fd = os.open(self._reserve_file, os.O_WRONLY | os.O_CREAT, 0o644)
        except OSError:
            return
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
        except OSError:
            self._reserve_file.unlink(missing_ok=True)
        finally:
            os.close(fd)

    def _release_reserve(self) -> bool:
        """Free the reserve (see `_keep_reserve`); False when there was none."""
        try:
            self._reserve_file.unlink()
        except FileNotFoundError:
            return False
        return True

    def _point_link(self, version: str) -> None:
        """Point `current` at `version`; a real directory someone put in the link's place is moved to the trash."""
        if self.current_link.is_dir() and not self.current_link.is_symlink():
            os.rename(self.current_link, self._trash_name())
        atomic_symlink(self.current_link, os.path.join("versions", version))

    def _trash_name(self) -> Path:
        """A fresh name in `versions/` for something gc removes; independent of any version id's length."""
        return _root_dir(self.versions_dir) / f".trash-{os.urandom(8).hex()}"

    @contextlib.contextmanager
    def _root_lock(self) -> Iterator[None]:
        """The root-wide lock; on entry it also repairs a `current` link left behind by a crash (or replaced), not
        one a hand-edited `CURRENT` left (it tells that edit from a crashed flip: `history`)."""
        _root_dir(self.root)
        with exclusive_lock(self._lock_file, LOCK_TIMEOUT_S, f"lifecycle root {self.root}"):
            self._keep_reserve()
            current = self.current()
            target = os.path.join("versions", current) if current else None
            stale = not self.current_link.is_symlink() or os.readlink(self.current_link) != target
            if target and stale and self.version_dir(current).is_dir() and not self._edited_pointer():
                self._point_link(current)
            yield

    # ---- reader leases --------------------------------------------------------------------------

    def lease_path(self, version: str) -> Path:
        return self._locks_dir / f"{check_version_id(version)}.read"

    @contextlib.contextmanager
    def reader_lease(self, version: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Hold a shared lease on a complete version while the block reads it: gc never removes a leased version.

        NotFoundError when the version is not (or no longer) complete; ConflictError when gc holds the lease
        exclusively (it is moving the version away) for `timeout` seconds. The kernel drops the lease if the
        holder dies.
        """
        path = self.lease_path(version)
        _root_dir(path.parent)
        deadline = time.monotonic() + timeout
        while (fd := try_flock(path, shared=True)) is None:
            if time.monotonic() >= deadline:
                raise ConflictError(f"version {version} is busy: gc holds {path}; retry when it finishes")
            time.sleep(0.05)
        try:
            self.check_flip_target(version)  # gc may have removed it before the lease was taken
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _removal_leases(self, report: GcReport) -> Iterator[None]:
        """Hold the lease of every version gc is about to remove, exclusively and without waiting, until the block
        ends; a version a reader leased since `_plan_gc` looked moves to `kept` and `in_use`. The lease files of
        versions gone at the end are removed (a reader that still opens one finds no version and lets go)."""
        _root_dir(self._locks_dir)
        held = {}
        for version in list(report.removed_versions):
            fd = try_flock(self.lease_path(version), shared=False)
            if fd is None:
                report.removed_versions.remove(version)
                report.kept.append(version)
                report.in_use.append(version)
            else:
                held[version] = fd
        try:
            yield
        finally:
            for version, fd in held.items():
                if not self.version_dir(version).exists():
                    self.lease_path(version).unlink(missing_ok=True)
                os.close(fd)

    # ---- retention -----------------------------------------------------------------------------

    def gc(self, keep: int, *, staging_max_age_s: float = 24 * 3600, dry_run: bool = False) -> GcReport:
        """Remove the oldest complete versions beyond `keep`, abandoned staging and scratch directories.

        Never removes a protected version (see `_protected_versions`) or one a reader leases (`in_use`); a
        staging directory whose version lock is held (a stage or build in progress) or that is younger than
        `staging_max_age_s` is kept, and so is a scratch directory whose owner is alive. A dry run reads only:
        no lock, no repair, no write.
        """
        if keep < 0:
            raise UsageError("--keep must be zero or more")
        report = GcReport()
        if not self.versions_dir.is_dir():
            return report
        if dry_run:
            self._plan_gc(report, keep, staging_max_age_s)
            return report
        with self._root_lock():
            self._plan_gc(report, keep, staging_max_age_s)
            trash: dict[Path, str] = {}  # what is removed, by the version whose build may own its step outputs
            with self._removal_leases(report):
                for version in report.removed_versions:  # complete, so its build is over (see _remove_stale_locks)
                    self.build_lease_path(version).unlink(missing_ok=True)
                for name in [*report.removed_versions, *report.removed_staging]:
                    hidden = self._trash_name()
                    os.rename(self.versions_dir / name, hidden)
                    crash_point()
                    trash[hidden] = name.removesuffix(STAGING_SUFFIX)
            for leftover in self.versions_dir.glob(".trash-*"):  # a crashed gc's: whose, nobody knows
                trash.setdefault(leftover, "")
            fsync_dir(self.versions_dir)
            for leftover in self.root.glob(".*.tmp-*"):
                leftover.unlink(missing_ok=True)
            derived = self._orphaned_derived()
            report.removed_derived = [str(p.relative_to(self.root)) for p in derived]
            self._remove_stale_locks()
        for path in dict.fromkeys([*trash, *derived, *self._abandoned_scratch()]):
            if path.is_dir():
                # a removed staging directory's step outputs elsewhere (--work-dir)
                self._remove_recorded_work(path, trash.get(path, ""))
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            crash_point()
        with exclusive_lock(self._lock_file, LOCK_TIMEOUT_S, f"lifecycle root {self.root}"):
            self._keep_reserve()  # in the space just freed: a later flip on a full disk has its reserve again
        return report

    def _plan_gc(self, report: GcReport, keep: int, staging_max_age_s: float) -> None:
        """Fill `report` with what gc keeps and removes; broken versions are left alone (listed by status).
        ValidationError, and nothing planned, when `CURRENT` cannot be trusted (`trusted_current`): what gc
        protects depends on it."""
        self.trusted_current()
        protected = self._protected_versions()
        complete = [i for i in self.status() if i.state in ("current", "published", "staged")]
        complete.sort(key=lambda i: (i.created or "", natural_key(i.version)), reverse=True)
        for rank, info in enumerate(complete):
            if rank < keep or info.version in protected:
                report.kept.append(info.version)
            elif is_locked(self.lease_path(info.version)):
                report.kept.append(info.version)
                report.in_use.append(info.version)
            else:
                report.removed_versions.append(info.version)
        now = time.time()
        for path in self.versions_dir.glob(f"*{STAGING_SUFFIX}"):
            version = path.name[: -len(STAGING_SUFFIX)]
            if not is_version_id(version):
                continue  # no stage or build makes it (see `status`)
            if is_locked(self._locks_dir / f"{version}.lock") or self.build_lease(version) is not None:
                continue
            if now - path.stat().st_mtime >= staging_max_age_s:
                report.removed_staging.append(path.name)

    def _protected_versions(self) -> set[str]:
        """Versions gc never removes: the current one and the one it replaced (history must be readable, or
        gc refuses). Versions readers lease are kept too (`in_use`), checked per version."""
        current = self.current()
        previous = next((e["from"] for e in reversed(self.history()) if e["to"] == current), None)
        return {v for v in (current, previous) if v}

    # ---- scratch space -------------------------------------------------------------------------

    @contextlib.contextmanager
    def scratch(self, purpose: str) -> Iterator[Path]:
        """A private directory under `<root>/.scratch`, held by this process and removed when the block ends.

        A holder that dies (SIGKILL) leaves it behind unlocked; `gc` removes it.
        """
        base = _root_dir(self.root / SCRATCH_DIR)
        path = base / f"{purpose}-{os.getpid()}-{os.urandom(4).hex()}"
        lock = path.with_name(f"{path.name}.lock")
        try:
            with exclusive_lock(lock, 0, f"scratch directory {path}"):  # locked before the directory exists
                path.mkdir()
                yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            lock.unlink(missing_ok=True)

    def _abandoned_scratch(self) -> list[Path]:
        """Scratch directories (and their lock files) whose holder is gone."""
        base = self.root / SCRATCH_DIR
        if not base.is_dir():
            return []
        entries = list(base.iterdir())  # before the lock test: what appears later is not looked at
        return [p for p in entries if not is_locked(base / f"{p.name.removesuffix('.lock')}.lock")]

    def _remove_stale_locks(self) -> None:
        """Clean `.locks/` of what no stage, build or reader needs: the staging lock and reader-lease file of a
        version that exists neither complete nor staging, the build lease of a complete version (sealing is its
        build's last step; a kill before the release leaves the lease), and temp files of killed lease writes.
        Each version's files are removed holding its staging lock, so no stage or build of it is running; a busy
        version is left for the next gc."""
        files: dict[str, list[Path]] = {}
        for path in self._locks_dir.iterdir() if self._locks_dir.is_dir() else ():
            match = _LOCK_FILE_RE.fullmatch(path.name)
            if match and is_version_id(match["version"]):
                files.setdefault(match["version"], []).append(path)
        for version, paths in files.items():
            complete = self.version_dir(version).is_dir()
            fd = try_flock(self._locks_dir / f"{version}.lock", shared=False)
            if fd is None:
                continue
            try:
                for path in paths:
                    if is_temp_sibling(path.name, f"{version}.lease") or (complete and path.suffix == ".lease"):
                        path.unlink(missing_ok=True)
                if not complete and not self.staging_dir(version).exists():
                    remove_lock_file(self.lease_path(version))
                    (self._locks_dir / f"{version}.lock").unlink(missing_ok=True)  # held here: see remove_lock_file
            finally:
                os.close(fd)

    def _orphaned_derived(self) -> list[Path]:
        """Files derived from versions that no longer exist: caches keyed by a catalog sha256 no remaining
        version has (`.cache/vectors`, `.cache/bm25`), tuning ground truth and eval records by version id."""
        versions = set(self.list_versions())
        shas = set()
        for version in versions:
            try:
                shas.add(self.catalog_sha256(version))
            except ValidationError:
                continue
        cache = self.root / ".cache"
        orphans = [p for kind in ("vectors", "bm25") for p in (cache / kind).glob("*") if p.name not in shas]
        orphans += [p for p in (cache / "tuning").glob("*.npz") if p.name.rsplit("-", 1)[0] not in versions]
        orphans += [p for p in (self.root / ".eval").glob("*.json") if p.stem not in versions]
        return sorted(orphans)

    def _not_found(self, version: str) -> NotFoundError:
        if self.staging_dir(version).exists():
            return NotFoundError(f"version {version} is still staging (incomplete); finish or re-run its stage")
        known = ", ".join(self.list_versions()) or "none"
        return NotFoundError(f"unknown version {version} under {self.root} (complete versions: {known})")


def stage_sources(
    faiss_path: Path,
    duckdb_path: Path,
    scip_path: Path,
    idmap_path: Path | None = None,
    tuning_path: Path | None = None,
    extras: Mapping[str, Path] | None = None,
) -> dict[str, Path]:
    """Map canonical file names to absolute input paths; UsageError for bad extra names, NotFoundError if absent."""
    sources = {FAISS_FILE: faiss_path, CATALOG_FILE: duckdb_path, SCIP_FILE: scip_path}
    if idmap_path is not None:
        sources[IDMAP_FILE] = idmap_path
    if tuning_path is not None:
        sources[TUNING_FILE] = tuning_path
    for name, src in (extras or {}).items():
        if not _VERSION_RE.fullmatch(name) or name.startswith(".") or name in (*CANONICAL_FILES, MANIFEST):
            raise UsageError(f"invalid extra name {name!r}: use a plain name that is not a canonical file name")
        sources[name] = src
    resolved = {name: Path(src).absolute() for name, src in sources.items()}
    for name, src in resolved.items():
        if not src.exists():
            raise NotFoundError(f"input for {name} not found: {src}")
        if name in CANONICAL_FILES and src.is_dir():
            raise ValidationError(f"input for {name} is a directory, not a file: {src}")
        _check_regular(src, name)
    return resolved


def _root_dir(path: Path) -> Path:
    """`path`, a directory of the lifecycle root, created if missing; ValidationError when something else (a stray
    file) has its name, so no operation fails later with a bare NotADirectoryError."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValidationError(
            f"{path} is not a directory, and the lifecycle root keeps its {path.name} there; move it aside"
        ) from None
    return path


def _check_regular(path: Path, name: str) -> None:
    """ValidationError unless `path` is a regular file or directory (a FIFO or device would block or never end)."""
    mode = path.stat().st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise ValidationError(f"input for {name} is not a regular file: {path}")


def _manifest_problem(manifest: Any, version: str) -> str | None:
    """What is wrong with a parsed manifest's shape, or None."""
    if not isinstance(manifest, dict) or manifest.get("version") != version:
        return f"does not describe version {version}"
    files = manifest.get("files")
    if not isinstance(files, dict):
        return "has no files object"
    for name, entry in files.items():
        size = entry.get("size") if isinstance(entry, dict) else None
        if isinstance(size, bool) or not isinstance(size, int) or not isinstance(entry.get("sha256"), str):
            return f"has no size and sha256 for {name}"
    if not isinstance(manifest.get("validation"), dict):
        return "has no validation object"
    if not isinstance(manifest.get("attrs", {}), dict):
        return "has no attrs object"
    return None


def _copy_verified(src: Path, dst: Path, name: str) -> dict[str, dict[str, Any]]:
    """Copy a file or a directory tree (refusing symbolic links inside it); return manifest entries keyed by path
    relative to the version."""
    if src.is_dir():
        dst.mkdir()
        entries: dict[str, dict[str, Any]] = {}
        for child in sorted(src.iterdir()):
            if child.is_symlink():  # followed, a loop copies without end and a link to / copies the filesystem
                raise ValidationError(
                    f"input for {name}/{child.name} is a symbolic link: {child}; an extra directory is copied "
                    "without following links, replace it by what it points to"
                )
            _check_regular(child, f"{name}/{child.name}")
            for sub, entry in _copy_verified(child, dst / child.name, f"{name}/{child.name}").items():
                entries[sub] = entry
        return entries
    expected = sha256_file(src)
    actual = copy_file(src, dst)
    if actual != expected:
        raise ValidationError(f"copy of {src} does not match its source; was it being written? retry the stage")
    return {name: {"size": dst.stat().st_size, "sha256": actual}}
