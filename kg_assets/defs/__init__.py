"""Dagster layer: thin assets, checks, jobs and resources over `kg_assets.lib`."""
