"""Artifact validation is given to the lifecycle: reading CURRENT loads no artifact format, sealing uses the
checks a root is given, and `LifecycleRoot.resolve_version` names the version a reader means."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kg_assets.lib.errors import NotFoundError, ValidationError
from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.conftest import stage_sample


def test_reading_current_loads_no_artifact_format(sample_versions: LifecycleRoot) -> None:
    formats = ("faiss", "duckdb", "google.protobuf", "kg_assets.lib.validation")
    code = (
        "import sys; from kg_assets.lib.lifecycle import LifecycleRoot; "
        f"root = LifecycleRoot({str(sample_versions.root)!r}); "
        "print(root.resolve_version(None), root.list_versions()); "
        f"print(sorted(m for m in {formats!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["v1 ['v1', 'v2']", "[]"]


class Refusing:
    """Checks that refuse everything, to show which checks a root seals with."""

    def validate_artifacts(self, vdir: Path) -> dict[str, Any]:
        raise ValidationError(f"refused {vdir.name}")

    def check_sidecar(self, path: Path) -> None:
        raise ValidationError(f"refused {path.name}")


def test_a_root_seals_and_verifies_with_the_checks_it_is_given(tmp_path: Path, samples: dict) -> None:
    refusing = LifecycleRoot(tmp_path / "indexes", validation=Refusing())
    with pytest.raises(ValidationError, match=r"refused v1\.staging"):
        stage_sample(refusing, "v1", samples["a"])
    assert refusing.list_versions() == []
    stage_sample(LifecycleRoot(tmp_path / "indexes"), "v1", samples["a"])  # the default checks pass
    with pytest.raises(ValidationError, match=r"refused tuning\.json"):
        refusing.verify_version("v1")


def test_resolve_version_is_the_given_version_else_the_current_one(sample_versions: LifecycleRoot) -> None:
    assert sample_versions.resolve_version(None) == "v1" and sample_versions.resolve_version("v2") == "v2"
    with pytest.raises(NotFoundError, match="unknown version v9"):
        sample_versions.resolve_version("v9")
    with pytest.raises(NotFoundError, match="nothing is published"):
        LifecycleRoot(sample_versions.root.parent / "empty").resolve_version(None)
