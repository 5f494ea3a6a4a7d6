"""What the new-commit sensor watches, as a resource (tests and deployments set it; the default reads the env)."""

import os
from pathlib import Path

import dagster as dg

WATCH_REPO_ENV = "KG_WATCH_REPO"
AUTO_PUBLISH_ENV = "KG_WATCH_AUTO_PUBLISH"


class RepoWatch(dg.ConfigurableResource):
    """Empty `repo`: $KG_WATCH_REPO (unset: the sensor skips). `auto_publish` None: $KG_WATCH_AUTO_PUBLISH
    (1, true, yes or on): evaluate each new build and publish it when its checks and the eval gate pass."""

    repo: str = ""
    auto_publish: bool | None = None

    def repo_path(self) -> Path | None:
        repo = self.repo or os.environ.get(WATCH_REPO_ENV, "")
        return Path(repo).expanduser().absolute() if repo else None

    def auto_publish_enabled(self) -> bool:
        if self.auto_publish is not None:
            return self.auto_publish
        return os.environ.get(AUTO_PUBLISH_ENV, "").strip().lower() in ("1", "true", "yes", "on")
