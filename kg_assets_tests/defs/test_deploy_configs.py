"""The shipped deployment configs pass Dagster's own config validation (no database, broker or cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config

from kg_assets_tests.helpers import REPO

DEPLOY = REPO / "deploy"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("instance", ["dagster.postgres.yaml", "k8s/dagster.yaml"])
def test_instance_configs_are_valid(instance: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("dagster_postgres")
    monkeypatch.setenv("KG_DAGSTER_PG_URL", "postgresql+psycopg2://dagster@127.0.0.1:5440/dagster")
    (tmp_path / "dagster.yaml").write_text((DEPLOY / instance).read_text())
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["storage"]["postgres"]["postgres_url"] == {"env": "KG_DAGSTER_PG_URL"}
    assert config["concurrency"]["pools"]["default_limit"] == 1


def test_celery_worker_config_is_the_executor_s() -> None:
    celery = pytest.importorskip("dagster_celery")
    result = process_config(
        celery.celery_executor.config_schema.config_type, load(DEPLOY / "celery.yaml")["execution"]["config"]
    )
    assert result.success, result.errors


def test_kubernetes_run_launcher_and_executor_configs_are_valid() -> None:
    k8s = pytest.importorskip("dagster_k8s")
    launcher = load(DEPLOY / "k8s" / "dagster.yaml")["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    result = process_config(k8s.K8sRunLauncher.config_type(), launcher["config"])
    assert result.success, result.errors
    run_config = load(DEPLOY / "k8s" / "build_run_config.yaml")
    result = process_config(k8s.k8s_job_executor.config_schema.config_type, run_config["execution"]["config"])
    assert result.success, result.errors
    assert run_config["resources"]["settings"]["config"]["shards"] == 8
