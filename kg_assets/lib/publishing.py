"""The one publish path, shared by the `publish` job, `build --publish` and the auto-publish sensor chain."""

from __future__ import annotations

from dataclasses import dataclass

from kg_assets.lib import eval_gate, health
from kg_assets.lib.errors import ValidationError
from kg_assets.lib.lifecycle import Flip, LifecycleRoot


@dataclass(frozen=True)
class Published:
    """A publish that went through: the flip, and the eval gate's refusal that `force` overrode (if any)."""

    flip: Flip
    forced_past: str | None


def publish_gated(root: LifecycleRoot, version: str, expect_current: str | None, *, force: bool = False) -> Published:
    """Refuse a version whose artifacts fail a health check, or whose last eval fails the gate (unless `force`),
    then flip `CURRENT` to it as a compare-and-swap: `expect_current` is the id the caller saw ("" for nothing
    published; None skips the check), and ConflictError says another operator moved the pointer since."""
    root.check_flip_target(version)
    try:
        health.check_artifacts(root, version)
    except ValidationError as exc:
        raise ValidationError(f"{version} is unhealthy, not publishing it: {exc}") from None
    refusal = eval_gate.publish_refusal(root, version)
    if refusal and not force:
        raise ValidationError(f"{refusal}; fix it and re-run indexctl eval, or publish with --force")
    if expect_current is None:
        return Published(root.publish(version), refusal)
    return Published(root.publish(version, expect_current=expect_current or None), refusal)
