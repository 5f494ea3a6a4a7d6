"""The embedder training job: every asset of the `embedder` group, in one run."""

import dagster as dg

from kg_assets.defs.embedder.assets import EMBEDDER_GROUP

embedder_training_job = dg.define_asset_job(
    "embedder_training",
    selection=dg.AssetSelection.groups(EMBEDDER_GROUP),
    description="Train the static code embedder: distill the teacher, fetch and chunk the corpus, featurize, fit.",
    tags={"kind": "embedder"},
)
