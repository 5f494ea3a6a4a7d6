"""The real Dagster UI in headless Chromium shows the build lineage and a GraphQL-built version's metadata.

Each test saves a screenshot under test-artifacts/ui/, also when it fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from kg_assets_tests.ui.conftest import ARTIFACTS, LOCATION, BuiltVersion, DagsterDev

pytestmark = pytest.mark.ui

# Upper bound for a page element to appear; only guards against a hang.
APPEAR_TIMEOUT_MS = 60_000


@contextmanager
def screenshot_after(page: Any, name: str) -> Iterator[None]:
    """Whatever happens inside, leave a full-page screenshot `<name>.png` in the artifacts directory."""
    try:
        yield
    finally:
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def wait_visible(locator: Any) -> None:
    locator.filter(visible=True).first.wait_for(state="visible", timeout=APPEAR_TIMEOUT_MS)


def wait_texts(page: Any, *texts: str) -> None:
    for text in texts:
        wait_visible(page.get_by_text(text, exact=True))


def wait_table_row(page: Any, key: str, value: str) -> None:
    """A metadata table row whose cells include exactly `key` and `value`."""
    by_text = page.get_by_text
    wait_visible(page.locator("tr").filter(has=by_text(key, exact=True)).filter(has=by_text(value, exact=True)))


def test_build_group_lineage_shows_every_build_asset_materialized(
    dagster_dev: DagsterDev, built_version: BuiltVersion, page: Any
):
    page.goto(f"{dagster_dev.url}/locations/{LOCATION}/asset-groups/build/lineage")
    with screenshot_after(page, "build-lineage"):
        for asset in ("chunks", "embeddings", "scip_index", "faiss_index", "faiss_idmap", "catalog", "index_version"):
            # Dagster 1.13 draws a node green (this style variable) once its status has loaded and every
            # registered partition, here only the built version, is materialized; gray while one is missing.
            node = page.locator("div[style*='--color-background-green']")
            wait_visible(node.filter(has=page.get_by_text(asset, exact=True)))


def test_faiss_index_page_shows_lineage_and_description(
    dagster_dev: DagsterDev, built_version: BuiltVersion, page: Any
):
    page.goto(f"{dagster_dev.url}/assets/faiss_index")
    with screenshot_after(page, "faiss_index-overview"):
        wait_texts(page, "Upstream assets", "embeddings", "Downstream assets", "faiss_idmap", "index_version")
        wait_visible(page.get_by_text("FAISS inner-product index over the chunk vectors"))


def test_faiss_index_partition_shows_the_built_versions_metadata(
    dagster_dev: DagsterDev, built_version: BuiltVersion, page: Any
):
    meta = dagster_dev.materialization_metadata("faiss_index", built_version.version)
    page.goto(f"{dagster_dev.url}/assets/faiss_index?view=partitions&partition={built_version.version}")
    with screenshot_after(page, f"faiss_index-partition-{built_version.version}"):
        wait_texts(page, "Materialized", built_version.run_id[:8])
        wait_table_row(page, "factory", meta["factory"])
        wait_table_row(page, "ntotal", str(meta["ntotal"]))
        wait_table_row(page, "path", meta["path"])
