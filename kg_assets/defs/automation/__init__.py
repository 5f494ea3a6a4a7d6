"""Automation: nightly schedules and the new-commit sensors (all off by default)."""
