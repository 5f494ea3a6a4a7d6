"""Dagster run config derived from an engine settings dataclass (`kg_assets.lib.settings`): the same fields,
defaults and help (shown in the launchpad), paths as strings."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import dagster as dg
import pydantic

from kg_assets.lib.settings import field_types


def config_class(
    cls: type, name: str, extra: dict[str, tuple[type, str]] | None = None, parent: type = dg.Config
) -> type[dg.Config]:
    """A `dg.Config` (or another pydantic-based `parent`, such as `dg.ConfigurableResource`) named `name` with a
    field per field of `cls` (plus `extra`: name -> (type, help), default None);
    `settings.from_values(cls, config.model_dump())` turns a config back into the settings."""
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        base, optional = field_types(cls)[f.name]
        kind: Any = str if base is Path else base
        default = str(f.default) if isinstance(f.default, Path) else f.default
        fields[f.name] = (kind | None if optional else kind, pydantic.Field(default, description=f.metadata["help"]))
    for field_name, (kind, help_text) in (extra or {}).items():
        fields[field_name] = (kind | None, pydantic.Field(None, description=help_text))
    config = pydantic.create_model(name, __base__=parent, **fields)
    config.__doc__ = cls.__doc__
    return config
