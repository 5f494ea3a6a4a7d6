"""Plain-Python engine: no Dagster imports below this package."""
