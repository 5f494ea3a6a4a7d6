"""One definition per setting: the CLI options and the Dagster config of `tune` and `eval` come from the engine's
settings dataclasses (names, defaults, help), and the override options from the one KNOBS table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kg_assets.cli.main import evaluate, tune
from kg_assets.defs.eval.assets import EvalConfig
from kg_assets.defs.tuning.assets import TuneConfig
from kg_assets.lib.errors import UsageError
from kg_assets.lib.evaluation import EvalSettings
from kg_assets.lib.settings import check_bounds, from_values, to_values
from kg_assets.lib.tuning import KNOBS
from kg_assets.lib.tuning_run import TuneSettings


@pytest.mark.parametrize(
    ("settings", "command", "config", "extra"),
    [(EvalSettings, evaluate, EvalConfig, set()), (TuneSettings, tune, TuneConfig, set(KNOBS))],
)
def test_cli_options_and_dagster_config_are_derived_from_the_settings(settings, command, config, extra) -> None:
    fields = {f.name: f for f in dataclasses.fields(settings)}
    assert set(config.model_fields) == set(fields) | extra
    options = {p.name: p for p in command.params}
    assert set(fields) - {"mode"} <= set(options) and extra <= set(options)
    for name, f in fields.items():
        assert config.model_fields[name].default == f.default
        assert config.model_fields[name].description == f.metadata["help"]
        if name in options:
            assert options[name].default == f.default and options[name].help == f.metadata["help"]


def test_values_round_trip_through_the_run_config(tmp_path: Path) -> None:
    settings = EvalSettings(k=7, queries_file=tmp_path / "q.jsonl", out_dir=tmp_path / "out")
    values = to_values(settings)
    assert values["queries_file"] == str(tmp_path / "q.jsonl") and values["k_factor"] is None
    assert from_values(EvalSettings, EvalConfig(**values).model_dump()) == settings


def test_bounds_are_checked_for_values_that_did_not_come_through_the_cli(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--k must be at least 1"):
        check_bounds(EvalSettings(k=0, out_dir=tmp_path))
    with pytest.raises(UsageError, match=r"--recall-floor must be in \[0, 1\]"):
        check_bounds(EvalSettings(recall_floor=1.5, out_dir=tmp_path))
    check_bounds(TuneSettings())
