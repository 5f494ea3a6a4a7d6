"""kg-assets: versioned code-search retrieval artifacts built, published and rolled back with Dagster."""
