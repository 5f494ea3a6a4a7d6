"""Git on an untrusted repository: the build's git calls run nothing its configuration names."""

from __future__ import annotations

from pathlib import Path

from kg_assets.lib import chunking
from kg_assets.lib.commits import head_commit
from kg_assets_tests.hostile_repo import arm_git_config, commit_all


def test_a_hostile_git_config_runs_nothing_when_the_build_lists_files_or_reads_head(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "mod.py").write_text("def f():\n    return 1\n")
    (repo / ".gitignore").write_text("*.log\n")
    commit_all(repo)
    marks = tmp_path / "marks"
    arm_git_config(repo, marks)
    (repo / "untracked.py").write_text("X = 1\n")
    (repo / "noise.log").write_text("ignored\n")
    (repo / "pkg" / "mod.py").write_text("def f():\n    return 2\n")  # a modified file: git would refresh it
    assert chunking.list_files(repo) == [".gitattributes", ".gitignore", "pkg/mod.py", "untracked.py"]
    assert len(head_commit(repo).sha) == 40
    assert sorted(p.name for p in marks.iterdir()) == []
