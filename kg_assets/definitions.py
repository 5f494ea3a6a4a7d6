"""The single Dagster entry point for `dagster dev -w workspace.yaml`, `dagster asset materialize`."""

import dagster as dg

from kg_assets.defs.lifecycle.jobs import JOBS
from kg_assets.defs.lifecycle.resources import LifecycleResource

defs = dg.Definitions(
    jobs=JOBS,
    resources={"lifecycle": LifecycleResource()},
    # In-process: the multiprocess default spawns an interpreter per step (~2 s each on these machines).
    executor=dg.in_process_executor,
)
