"""Build assets: a repository to a complete index version, one partition per version."""
