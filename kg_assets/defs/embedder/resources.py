"""The embedder training job's settings as a resource: one `TrainSettings` shared by every step of the group."""

import dagster as dg

from kg_assets.defs.config import config_class
from kg_assets.lib.settings import check_bounds, from_values
from kg_assets.lib.static_training import TrainSettings

EMBEDDER_TRAINING = "embedder_training"  # the resource key

_Fields = config_class(TrainSettings, "_TrainFields", parent=dg.ConfigurableResource)


class EmbedderTraining(_Fields):
    """Where the static embedder's training job reads its manifest, keeps its caches and writes the model."""

    def settings(self) -> TrainSettings:
        settings = from_values(TrainSettings, self.model_dump())
        check_bounds(settings)
        return settings
