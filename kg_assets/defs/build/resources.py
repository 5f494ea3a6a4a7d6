"""Build settings, the step-output IO manager and the build lease every build step holds."""

import os
import pickle
import socket
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import pydantic

from kg_assets.defs.lifecycle.resources import LifecycleResource
from kg_assets.lib import build, scip, workdir
from kg_assets.lib.embedding import Embedder, load_embedder
from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets.lib.workdir import WorkPath


class BuildSettings(dg.ConfigurableResource):
    """What to build from and how. Empty `repo` means $KG_REPO, else the current directory. `include`/`exclude`
    are path globs choosing the repository's files (see `chunking.chunk_repository`). `shards`: how many shards
    embed and encode in parallel steps (0: 1 below 20k chunks, else by chunk count and cores). `work_dir`: where
    step outputs go, a path or fsspec URL every worker sees (empty: `versions/<v>.staging/build`; else
    `<work_dir>/<v>`)."""

    repo: str = ""
    embedder: str = "minilm"
    factory: str = "auto"
    seed: int = 0
    shards: int = pydantic.Field(default=0, ge=0, le=1024)
    work_dir: str = ""
    publish: bool = False
    # With `publish`: the CURRENT the publish must still find ("" for nothing published; None skips the check).
    expect_current: str | None = None
    include: list[str] = pydantic.Field(default_factory=list)
    exclude: list[str] = pydantic.Field(default_factory=list)
    # `fast`: a version published ahead of `full_version` (kg_assets/lib/progressive.py): no SCIP indexers run.
    kind: Literal["fast", "full"] = "full"
    full_version: str = ""

    def repo_path(self) -> Path:
        return Path(self.repo or os.environ.get("KG_REPO") or ".").absolute()

    def load_embedder(self) -> Embedder:
        return load_embedder(self.embedder)

    def scip_indexers(self) -> tuple[scip.Indexer, ...]:
        """The SCIP indexers this build runs: none for a fast version (its full version brings SCIP data)."""
        return () if self.kind == "fast" else scip.INDEXERS

    def version_attrs(self) -> dict[str, str]:
        """What the manifest and the catalog's kg_meta record of the version's kind."""
        return {"kind": self.kind, **({"full_version": self.full_version} if self.full_version else {})}

    def work_path(self, root: LifecycleRoot, version: str) -> WorkPath:
        """The version's step-output location."""
        if not self.work_dir:
            return root.staging_dir(version) / build.BUILD_DIR
        return workdir.location(self.work_dir) / version

    def new_work_path(self, root: LifecycleRoot, version: str) -> WorkPath:
        """The version's step-output location, emptied and owned by this build (after `reset_staging`; see
        `build.claim_work_path`); one outside the staging directory is recorded in it, so it goes wherever that
        goes: gc of an abandoned build, the next build or stage of the version, sealing."""
        work = self.work_path(root, version)
        build.claim_work_path(root, self.repo_path(), version, work, outside=bool(self.work_dir))
        if self.work_dir:
            root.record_work_location(version, str(work))
        return work


class BuildOutputs(dg.IOManager):
    """Values passed between build steps (shard numbers, per-shard figures), pickled under the version's
    step-output location (`<work>/outputs/<run>/<step>/<output>`), so steps in other processes or on other hosts
    read them; a re-executed run reads its parent's outputs where they were written."""

    def __init__(self, lifecycle: LifecycleResource, settings: BuildSettings) -> None:
        self.lifecycle, self.settings = lifecycle, settings

    def _path(self, context: dg.InputContext | dg.OutputContext, output: dg.OutputContext) -> WorkPath:
        version = context.step_context.dagster_run.tags["dagster/partition"]
        work = self.settings.work_path(self.lifecycle.get_root(), version)
        step = output.step_key.replace("[", "-").replace("]", "")
        name = f"{output.name}-{output.mapping_key}" if output.mapping_key else output.name  # one per dynamic output
        return work / "outputs" / output.run_id / step / f"{name}.pickle"

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        path = self._path(context, context)
        workdir.ensure_dir(path.parent)
        workdir.write_bytes(path, pickle.dumps(obj))

    def load_input(self, context: dg.InputContext) -> Any:
        return pickle.loads(self._path(context, context.upstream_output).read_bytes())


@dg.io_manager(required_resource_keys={"lifecycle", "settings"})
def build_outputs(context: dg.InitResourceContext) -> BuildOutputs:
    """`BuildOutputs` at the run's own `lifecycle` root and `settings.work_dir`, as the run configures (or
    overrides) those resources; nested resource fields would keep their definition-time defaults instead (the
    current directory's ./indexes, no --work-dir)."""
    return BuildOutputs(context.resources.lifecycle, context.resources.settings)


def hold_build_lease(context: dg.OpExecutionContext, root: LifecycleRoot, version: str) -> None:
    """Take or keep `version`'s build lease for this run (see `LifecycleRoot.take_build_lease`): a run that
    re-executes a failed one inherits its lease; a lease of a run the instance has seen end is reclaimed."""
    run = context.run
    instance = context.instance

    def ended(run_id: str) -> bool:
        holder = instance.get_run_by_id(run_id)
        return holder is None or holder.is_finished

    inherits = {r for r in (run.parent_run_id, run.root_run_id) if r}
    root.take_build_lease(version, run.run_id, socket.gethostname(), inherits=inherits, is_dead=ended)


@dg.failure_hook(required_resource_keys={"lifecycle"})
def release_build_lease(context: dg.HookContext) -> None:
    """A failed build step gives up its run's build lease, so the version can be built again at once."""
    run = context.instance.get_run_by_id(context.run_id)
    version = run.tags.get("dagster/partition") if run else None
    if version:
        context.resources.lifecycle.get_root().release_build_lease(version, context.run_id)
