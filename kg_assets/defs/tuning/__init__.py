"""Tuning: the `tuning_profile` asset of a version, its job and its (off by default) nightly schedule."""
