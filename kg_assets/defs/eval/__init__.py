"""Offline evaluation assets, checks and jobs."""
