"""Build settings and the per-run hold on a version's staging directory."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pydantic

from kg_assets.lib.embedding import Embedder, load_embedder
from kg_assets.lib.lifecycle import LifecycleRoot


class BuildSettings(dg.ConfigurableResource):
    """What to build from and how. Empty `repo` means $KG_REPO, else the current directory. `include`/`exclude`
    are path globs choosing the repository's files (see `chunking.chunk_repository`)."""

    repo: str = ""
    embedder: str = "minilm"
    factory: str = "auto"
    seed: int = 0
    publish: bool = False
    # With `publish`: the CURRENT the publish must still find ("" for nothing published; None skips the check).
    expect_current: str | None = None
    include: list[str] = pydantic.Field(default_factory=list)
    exclude: list[str] = pydantic.Field(default_factory=list)

    def repo_path(self) -> Path:
        return Path(self.repo or os.environ.get("KG_REPO") or ".").absolute()

    def load_embedder(self) -> Embedder:
        return load_embedder(self.embedder)


class StagingHold(dg.ConfigurableResource):
    """Holds the run's version lock from the first build step to the last, so no stage or second build of
    the same version can touch its staging directory in between. Empty `root`: as LifecycleResource."""

    root: str = ""

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator["StagingHold"]:
        version = context.dagster_run.tags.get("dagster/partition") if context.dagster_run else None
        if version is None:
            yield self
            return
        with LifecycleRoot(self.root or None).staging_lock(version):
            yield self
