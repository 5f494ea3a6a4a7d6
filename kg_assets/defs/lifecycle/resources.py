"""The lifecycle root as a Dagster resource."""

import dagster as dg

from kg_assets.lib.lifecycle import LifecycleRoot


class LifecycleResource(dg.ConfigurableResource):
    """Where index versions live; an empty `root` means $KG_INDEXES_DIR, $CODEINTEL_INDEXES_DIR or ./indexes."""

    root: str = ""

    def get_root(self) -> LifecycleRoot:
        return LifecycleRoot(self.root or None)
