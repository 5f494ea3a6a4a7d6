"""How a failed Dagster run becomes one line and an exit code (`kg_assets.cli.runs._failure`)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import dagster as dg
import pytest

from kg_assets.cli.runs import _failure
from kg_assets.lib.errors import ConflictError, KgError
from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.helpers import run_build
from kg_assets_tests.sample_repo import write_repo


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/r/versions/v1.staging/faiss.index"), "No space left"),
        (OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), "/r/x" * 80), "File name too long"),
        (PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/r/versions"), "Permission denied: '/r/versions'"),
        (ValueError("cannot convert float NaN to integer"), "cannot convert float NaN to integer"),
    ],
)
def test_a_failed_step_is_reported_by_its_innermost_cause(error: Exception, message: str) -> None:
    @dg.op
    def failing() -> None:
        raise error

    result = (
        dg.GraphDefinition(name="failing_job", node_defs=[failing]).to_job().execute_in_process(raise_on_error=False)
    )
    failure = _failure(result)
    assert type(failure) is KgError
    assert str(failure).startswith("step failing failed: ") and message in str(failure)
    assert "DagsterExecutionStepExecutionError" not in str(failure)


def test_a_second_build_of_a_version_being_built_is_a_conflict(root: LifecycleRoot, tmp_path: Path) -> None:
    repo = write_repo(tmp_path / "repo")
    with root.staging_lock("v1"), dg.instance_for_test() as instance:  # another build of v1 holds it
        result = run_build(root, repo, "v1", instance)
    failure = _failure(result)
    assert isinstance(failure, ConflictError) and "staging of version v1 is busy" in str(failure)
