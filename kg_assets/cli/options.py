"""click options derived from an engine settings dataclass (`kg_assets.lib.settings`): one per field, with the
field's type, default, bounds and help, so a setting is defined once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from kg_assets.lib.settings import field_types
from kg_assets.lib.tuning import KNOBS

F = TypeVar("F", bound=Callable[..., Any])


def settings_options(cls: type, *, skip: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Decorate a command with an option per field of `cls` (except `skip`); the command gets them as keyword
    arguments named after the fields (`settings.from_values(cls, kwargs)` makes the settings)."""
    kinds = field_types(cls)

    def decorate(fn: F) -> F:
        for f in reversed(dataclasses.fields(cls)):
            if f.name not in skip:
                fn = _option(f, *kinds[f.name])(fn)
        return fn

    return decorate


def _option(f: dataclasses.Field, base: type, optional: bool) -> Callable[[F], F]:
    meta = f.metadata
    dashed = "--" + f.name.replace("_", "-")
    if base is bool:
        flags = meta["flags"] or (f"{dashed}/--no-{dashed[2:]}",)
        return click.option(*flags, f.name, default=f.default, show_default=True, help=meta["help"])
    low, high = meta["minimum"], meta["maximum"]
    kind: Any = {
        int: click.IntRange(low, high) if low is not None or high is not None else int,
        float: click.FloatRange(low, high) if low is not None or high is not None else float,
        Path: click.Path(path_type=Path),
        str: str,
    }[base]
    return click.option(
        *(meta["flags"] or (dashed,)),
        f.name,
        type=kind,
        default=f.default,
        show_default=f.default is not None,
        help=meta["help"],
    )


def knob_options(fn: F) -> F:
    """An override option per runtime knob of `tuning.KNOBS` (`--nprobe`, `--k-factor`, ...), named after it."""
    for knob in reversed(KNOBS.values()):
        kind = click.IntRange(min=1) if knob.kind is int else click.FloatRange(min=1)
        fn = click.option(knob.flag, knob.name, type=kind, help=f"Override: {knob.help}")(fn)
    return fn
