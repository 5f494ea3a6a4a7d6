"""One definition per setting: the engine's settings dataclasses (`EvalSettings`, `TuneSettings`) declare each
field once, with its default, help text and bounds; the Dagster config (`kg_assets/defs/config.py`) and the CLI
options (`kg_assets/cli/options.py`) are derived from those fields.

Field types are int, float, bool, str or Path, optionally `| None` (None: "not set", never 0 or "").
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from kg_assets.lib.errors import UsageError

T = TypeVar("T")


def setting(
    default: Any = None,
    help: str = "",
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    flags: tuple[str, ...] = (),
) -> Any:
    """A settings field: its default, the help text the CLI and the Dagster UI show, inclusive bounds the CLI
    enforces, and its CLI flags (default `--<name with dashes>`; a bool's pair `--x/--no-x`)."""
    metadata = {"help": help, "minimum": minimum, "maximum": maximum, "flags": flags}
    return dataclasses.field(default=default, metadata=metadata)


def field_types(cls: type) -> dict[str, tuple[type, bool]]:
    """Each field of a settings dataclass as (base type, whether None is allowed)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else ()
        base = next((a for a in args if a is not type(None)), hint)
        out[f.name] = (base, type(None) in args)
    return out


def from_values(cls: type[T], values: typing.Mapping[str, Any]) -> T:
    """An instance of settings dataclass `cls` from plain values (CLI options, Dagster config): fields absent from
    `values` keep their defaults; Path fields are made from strings."""
    kinds = field_types(cls)
    given = {name: values[name] for name in kinds if name in values}
    converted = {
        name: Path(value) if kinds[name][0] is Path and value is not None else value for name, value in given.items()
    }
    return cls(**converted)


def check_bounds(settings: Any) -> None:
    """UsageError, naming the CLI flag, for a field outside its declared bounds (the CLI enforces them on parse;
    this covers values from elsewhere, such as Dagster run config)."""
    for f in dataclasses.fields(settings):
        value, low, high = getattr(settings, f.name), f.metadata.get("minimum"), f.metadata.get("maximum")
        if value is None or isinstance(value, bool) or (low is None and high is None):
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            flag = (f.metadata["flags"] or ("--" + f.name.replace("_", "-"),))[-1]
            if low is not None and high is not None:
                bounds = f"in [{low}, {high}]"
            else:
                bounds = f"at least {low}" if low is not None else f"at most {high}"
            raise UsageError(f"{flag} must be {bounds}, got {value}")


def to_values(settings: Any) -> dict[str, Any]:
    """A settings instance as plain values for a Dagster run config (paths absolute, as strings)."""
    return {
        f.name: str(Path(value).absolute()) if isinstance(value, Path) else value
        for f in dataclasses.fields(settings)
        for value in [getattr(settings, f.name)]
    }
