"""Issue 11 in the engine: a flip that fails part-way leaves the pointer and the history as they were."""

from __future__ import annotations

import errno
import os

import pytest

from kg_assets.lib import lifecycle
from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.conftest import published_state


def _disk_full(*args: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("failing", ["atomic_write_json", "atomic_write_text"])
def test_a_disk_full_during_publish_leaves_pointer_and_history(
    sample_versions: LifecycleRoot, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    root = sample_versions
    before = published_state(root)
    history = root.history()
    with monkeypatch.context() as patch:
        patch.setattr(lifecycle, failing, _disk_full)
        with pytest.raises(OSError, match="No space left"):
            root.publish("v2")
    assert root.current() == "v1" and os.readlink(root.current_link) == "versions/v1"
    assert root.history() == history  # a record written before the failed commit is not history
    if failing == "atomic_write_json":
        assert published_state(root) == before
    # gc still protects v1's predecessor chain as the history says, and the next publish records correctly.
    assert root.publish("v2").from_version == "v1"
    assert [(e["from"], e["to"]) for e in root.history()] == [(None, "v1"), ("v1", "v2")]
