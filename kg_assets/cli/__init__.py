"""`indexctl`: the operator CLI (a thin layer over the engine and the Dagster jobs)."""
