"""Runtime tuning profiles (`tuning.json`): read and validate them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kg_assets.lib.errors import NotFoundError, ValidationError

# Runtime knobs a profile may set, with the type each must have.
KNOBS: dict[str, type] = {"nprobe": int, "efSearch": int, "quantizer_efSearch": int, "k_factor": float}


def load_profile(path: Path) -> dict[str, Any]:
    """Parse a tuning profile; ValidationError unless it is a JSON object with well-typed knobs."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"tuning profile not found: {path}")
    try:
        profile = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(profile, dict):
        raise ValidationError(f"{path} must hold a JSON object, not {type(profile).__name__}")
    overrides = profile.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ValidationError(f"{path}: overrides must be a JSON object")
    for section in (profile, overrides):
        for knob, kind in KNOBS.items():
            value = section.get(knob)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValidationError(f"{path}: {knob} must be a positive {kind.__name__}, got {value!r}")
            if kind is int and value != int(value):
                raise ValidationError(f"{path}: {knob} must be a whole number, got {value!r}")
    if "param_str" in profile and not isinstance(profile["param_str"], str):
        raise ValidationError(f"{path}: param_str must be a string")
    return profile
