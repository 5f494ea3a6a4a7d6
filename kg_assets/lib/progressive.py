"""Progressive publishing: a fast version first, the full one after.

`indexctl build V --publish --progressive` builds and publishes `V-fast` (the static embedder, the lexical index
and the chunker's definitions; no SCIP, no transformer), then builds `V` (the transformer and SCIP) and publishes
it through the same gated path. A version's manifest records its kind (`attrs.kind`: `fast` or `full`) and a fast
version the full version that follows it (`attrs.full_version`), so `status` and `health` can say where the full
version stands while the fast one serves.
"""

from __future__ import annotations

from typing import Literal

from kg_assets.lib.errors import UsageError, ValidationError
from kg_assets.lib.lifecycle import LifecycleRoot, check_version_id

Kind = Literal["fast", "full"]
KINDS: tuple[Kind, ...] = ("fast", "full")
FAST_SUFFIX = "-fast"
FAST_EMBEDDER = "static"  # measured in README "Progressive publishing": ~100x MiniLM's throughput


def fast_version_id(version: str) -> str:
    """The id of the fast version that precedes `version`: `<version>-fast`."""
    return check_version_id(f"{check_version_id(version)}{FAST_SUFFIX}")


def check_progressive(version: str, publish: bool, embedder: str) -> str:
    """The fast version's id, after refusing what progressive publishing cannot do (UsageError)."""
    if not publish:
        raise UsageError("--progressive publishes a fast version, then the full one: add --publish")
    if embedder == FAST_EMBEDDER:
        raise UsageError(f"--progressive: the full version needs another embedder than the fast one ({embedder})")
    return fast_version_id(version)


def version_kind(root: LifecycleRoot, version: str) -> tuple[Kind, str | None]:
    """A sealed version's kind and, for a fast one, the full version that follows it (versions from before
    progressive publishing are `full`)."""
    attrs = root.read_manifest(version).get("attrs", {})
    kind = attrs.get("kind", "full")
    if kind not in KINDS:
        raise ValidationError(f"version {version}: unknown kind {kind!r} in its manifest")
    return kind, attrs.get("full_version")


def full_version_state(root: LifecycleRoot, full: str) -> str:
    """Where the full version behind a fast one stands, in words for `status` and `health`."""
    if root.version_dir(full).is_dir():
        if root.current() == full:
            return f"full version {full} is current"
        return f"full version {full} is built; publish it with `indexctl publish {full}`"
    lease = root.build_lease(full)
    if lease is not None:
        return (
            f"full version {full} is being built by run {str(lease['run_id'])[:8]}; if that run died, "
            f"`indexctl build {full} --resume` finishes it"
        )
    if root.staging_dir(full).is_dir():
        return f"the full build of {full} failed or was interrupted; `indexctl build {full} --resume` finishes it"
    return f"full version {full} was never built; `indexctl build {full} --repo REPO --publish` builds it"
