"""One real `dagster dev` on loopback, one version built through its GraphQL API, and a headless Chromium.

Tests marked `ui` run only when CI=true or KG_UI_TESTS=1 (they take about a minute and need Debian's chromium);
once enabled, a missing prerequisite fails rather than skips, so CI cannot pass without running them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kg_assets.cli.runs import ensure_dagster_home
from kg_assets.lib.lifecycle import ROOT_ENV_VARS, LifecycleRoot
from kg_assets_tests.helpers import REPO, SCIP_PYTHON
from kg_assets_tests.sample_repo import write_repo

UI_TESTS_ENABLED = os.environ.get("CI") == "true" or os.environ.get("KG_UI_TESTS") == "1"
ARTIFACTS = REPO / "test-artifacts" / "ui"
LOCATION = "kg_assets"
VERSION = "v1"
# Upper bounds that only stop a hung server or run from blocking CI; nothing waits for them to pass.
START_TIMEOUT_S = 300
RUN_TIMEOUT_S = 900
STOP_TIMEOUT_S = 60

LOCATION_STATUS = """{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
ADD_PARTITION = """mutation($location: String!, $key: String!) {
  addDynamicPartition(repositorySelector: {repositoryLocationName: $location, repositoryName: "__repository__"},
                      partitionsDefName: "index_versions", partitionKey: $key) {
    __typename ... on PythonError { message } ... on UnauthorizedError { message } } }"""
LAUNCH_RUN = """mutation($params: ExecutionParams!) { launchPipelineExecution(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } } ... on PipelineNotFoundError { message } } }"""
RUN = """query($id: ID!) { runOrError(runId: $id) {
  __typename ... on Run { runId status jobName tags { key value } } } }"""
STEP_FAILURES = """query($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events {
  ... on ExecutionStepFailureEvent { stepKey error { message causes { message } } } } } } }"""
MATERIALIZATIONS = """query($key: AssetKeyInput!, $partition: String!) { assetOrError(assetKey: $key) {
  ... on Asset { assetMaterializations(partitions: [$partition]) { runId partition metadataEntries {
    label ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue }
    ... on TextMetadataEntry { text } ... on PathMetadataEntry { path } ... on JsonMetadataEntry { jsonString }
    ... on BoolMetadataEntry { boolValue } } } } } }"""
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `ui` tests unless enabled, saying how to enable them."""
    if UI_TESTS_ENABLED:
        return
    skip = pytest.mark.skip(reason="UI test (real dagster dev + Chromium): set KG_UI_TESTS=1; CI=true runs it")
    for item in items:
        if item.get_closest_marker("ui"):
            item.add_marker(skip)


@dataclass(frozen=True)
class DagsterDev:
    """A running `dagster dev`: its address, the lifecycle root its runs write to, and its log file."""

    url: str
    root: LifecycleRoot
    env: dict[str, str]
    log: Path

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST one GraphQL request; a GraphQL-level error fails the test with its messages."""
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.load(response)
        assert "errors" not in body, body["errors"]
        return body["data"]

    def run(self, run_id: str) -> dict[str, Any]:
        return self.graphql(RUN, {"id": run_id})["runOrError"]

    def materialization_metadata(self, asset: str, partition: str) -> dict[str, Any]:
        """Label -> value of the latest materialization of `asset` for `partition` (JSON entries decoded)."""
        found = self.graphql(MATERIALIZATIONS, {"key": {"path": [asset]}, "partition": partition})["assetOrError"]
        assert found.get("assetMaterializations"), f"no materialization of {asset} for {partition}"
        entries = found["assetMaterializations"][0]["metadataEntries"]
        meta: dict[str, Any] = {}
        for entry in entries:
            label = entry.pop("label")
            meta[label] = json.loads(entry["jsonString"]) if "jsonString" in entry else next(iter(entry.values()), None)
        return meta


@dataclass(frozen=True)
class BuiltVersion:
    """A version whose build ran to SUCCESS after being launched through the GraphQL API."""

    version: str
    repo: Path
    run_id: str


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _wait_until_loaded(proc: subprocess.Popen[bytes], server: DagsterDev) -> None:
    """Wait for HTTP 200 on /server_info, then for the code location to finish loading (or fail on its error)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dagster dev exited with {proc.returncode} before serving:\n{_log_tail(server.log)}")
        try:
            with urllib.request.urlopen(f"{server.url}/server_info", timeout=5) as response:
                serving = response.status == 200
        except OSError:
            serving = False
        if serving:
            entries = server.graphql(LOCATION_STATUS)["workspaceOrError"].get("locationEntries", [])
            entry = next((e for e in entries if e["name"] == LOCATION), None)
            if entry and entry["loadStatus"] == "LOADED":
                error = entry["locationOrLoadError"]
                if error and error["__typename"] == "PythonError":
                    pytest.fail(f"code location {LOCATION} failed to load: {error['message']}")
                return
        time.sleep(0.5)
    pytest.fail(f"dagster dev did not load {LOCATION} within {START_TIMEOUT_S}s:\n{_log_tail(server.log)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT the whole process group (dagster dev shuts its webserver, daemon and code servers down); SIGKILL
    the group only if that did not finish in time."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="session")
def dagster_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterDev]:
    """`dagster dev -w workspace.yaml` on a free loopback port, in its own process group, over a fresh root.

    DAGSTER_HOME is `<root>/.dagster` seeded as indexctl seeds it (the nux pop-up off), and the root reaches
    the resources only through $KG_INDEXES_DIR, as in an operator's `dagster dev`.
    """
    if not SCIP_PYTHON.exists():
        pytest.fail("the build needs scip-python: run scripts/setup.sh (npm ci)")
    root = LifecycleRoot(tmp_path_factory.mktemp("ui") / "indexes")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("DAGSTER_HOME", raising=False)
        home = ensure_dagster_home(root.root)
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "KG_REPO", *ROOT_ENV_VARS)}
    env.update(DAGSTER_HOME=str(home), KG_INDEXES_DIR=str(root.root))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    server = DagsterDev(f"http://127.0.0.1:{port}", root, env, ARTIFACTS / "dagster-dev.log")
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with server.log.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_loaded(proc, server)
        yield server
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def built_version(dagster_dev: DagsterDev, tmp_path_factory: pytest.TempPathFactory) -> BuiltVersion:
    """Register VERSION and materialize the `build` job for it through GraphQL, as the UI's Materialize does.

    The run goes through the instance's run coordinator and launcher (a run-worker subprocess of the code
    server), not indexctl; only the repository comes from run config, the root from the server's environment.
    """
    repo = write_repo(tmp_path_factory.mktemp("ui-repo") / "repo")
    added = dagster_dev.graphql(ADD_PARTITION, {"location": LOCATION, "key": VERSION})["addDynamicPartition"]
    assert added["__typename"] == "AddDynamicPartitionSuccess", added
    params = {
        "selector": {"repositoryLocationName": LOCATION, "repositoryName": "__repository__", "pipelineName": "build"},
        "runConfigData": {"resources": {"settings": {"config": {"repo": str(repo)}}}},
        "mode": "default",
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": VERSION}]},
    }
    launched = dagster_dev.graphql(LAUNCH_RUN, {"params": params})["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while (status := dagster_dev.run(run_id)["status"]) not in FINISHED:
        if time.monotonic() > deadline:
            pytest.fail(f"build run {run_id} still {status} after {RUN_TIMEOUT_S}s")
        time.sleep(1)
    if status != "SUCCESS":
        events = dagster_dev.graphql(STEP_FAILURES, {"id": run_id})["logsForRun"]["events"]
        failures = [
            f"{e['stepKey']}: " + " <- ".join(m["message"].strip() for m in [e["error"], *e["error"]["causes"]])
            for e in events
            if e.get("stepKey")
        ]
        pytest.fail(f"build run {run_id} ended {status}: {failures}")
    return BuiltVersion(VERSION, repo, run_id)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's headless Chromium driven by Playwright (no Playwright browser download)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("UI tests need Debian's chromium: run KG_UI_TESTS=1 bash scripts/setup.sh (apt-get)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("UI tests need Playwright: run KG_UI_TESTS=1 bash scripts/setup.sh (the `ui` extra)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    yield page
    page.close()
