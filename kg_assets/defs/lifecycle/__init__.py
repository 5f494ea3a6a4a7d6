"""Lifecycle jobs: stage, publish, rollback and gc of index versions."""
