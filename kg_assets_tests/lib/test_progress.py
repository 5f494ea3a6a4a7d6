"""The progress helper: a bar with counts and rate on a terminal, quiet when switched off, log lines either way."""

from __future__ import annotations

import io

import pytest

from kg_assets.lib import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def terminal(monkeypatch: pytest.MonkeyPatch) -> Terminal:
    """Make stderr a terminal for the rest of the test (in the test body: pytest's capture re-installs its own
    stderr after fixtures ran)."""
    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    return term


def test_terminal_gets_a_bar_with_counts_percent_and_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    term = terminal(monkeypatch)
    lines: list[str] = []
    report = progress.log_progress(lines.append, "embedded")
    for done in range(1, 11):
        report(done, 10)
    frames = term.getvalue().split("\r")[1:]
    assert len(frames) == 10
    assert frames[4].startswith("embedded [" + "#" * 15 + "-" * 15 + "] 5/10  50% ")
    assert frames[-1].endswith("/s\n") and "10/10 100%" in frames[-1]
    assert len(lines) == 10 and lines[-1].startswith("embedded 10/10 (100%, ")


def test_silence_keeps_the_terminal_quiet_but_still_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    term = terminal(monkeypatch)
    monkeypatch.setenv(progress.PROGRESS_ENV, "1")
    progress.silence()
    lines: list[str] = []
    report = progress.log_progress(lines.append, "points", steps=2)
    for done in range(1, 5):
        report(done, 4)
    assert term.getvalue() == ""
    assert [line.split(" (")[0] for line in lines] == ["points 2/4", "points 4/4"]


def test_no_bar_when_stderr_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    report = progress.log_progress(None, "x")
    report(1, 1)
    report(0, 0)  # an empty job reports nothing
    assert pipe.getvalue() == "" and progress.bar_stream() is None
