"""Progress of long steps (embedding, tuning sweeps, evaluation): a live bar on a terminal, lines in a log.

The bar (label, counts, percent, rate) is drawn only on a terminal and never when $KG_PROGRESS is "0"
(`indexctl ... --json` sets it, see `silence`). While a Dagster step runs, its stderr is redirected into the
run's compute logs, so `indexctl` calls `claim_terminal` before it starts a run: the bar then goes to the
terminal stderr was at that moment. Runs launched by the daemon or the UI have no terminal: log lines only.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

Progress = Callable[[int, int], None]  # (done, total)
PROGRESS_ENV = "KG_PROGRESS"
BAR_WIDTH = 30
_claimed: dict[str, int] = {}  # "fd": a duplicate of the terminal's descriptor, taken by claim_terminal


def silence() -> None:
    """Switch the terminal bar off for this process and the processes it starts."""
    os.environ[PROGRESS_ENV] = "0"


def claim_terminal() -> None:
    """Keep a handle on stderr's terminal (if it is one) for bars drawn while Dagster redirects stderr."""
    if "fd" not in _claimed and sys.stderr.isatty():
        _claimed["fd"] = os.dup(sys.stderr.fileno())


def bar_stream() -> TextIO | None:
    """Where a bar goes now: the claimed terminal, else stderr if it is a terminal; None when switched off."""
    if os.environ.get(PROGRESS_ENV, "1") == "0":
        return None
    if "fd" in _claimed:
        return open(_claimed["fd"], "w", closefd=False)  # a new writer; the descriptor stays open
    return sys.stderr if sys.stderr.isatty() else None


def render_bar(label: str, done: int, total: int, rate: float) -> str:
    """`label [#####-----] done/total pct% rate/s`."""
    filled = int(BAR_WIDTH * done / total) if total else 0
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    pct = 100 * done / total if total else 0.0
    return f"{label} [{bar}] {done}/{total} {pct:3.0f}% {rate:.1f}/s"


def log_progress(log: Callable[[str], None] | None, label: str, steps: int = 10) -> Progress:
    """A progress callback: a line `label done/total (pct, rate)` to `log` each time another 1/`steps` of the
    work is done, and a live bar on `bar_stream()` (chosen once, when the callback is made)."""
    t0 = time.perf_counter()
    logged = {"step": 0}
    stream = bar_stream()

    def report(done: int, total: int) -> None:
        if total <= 0:
            return
        rate = done / max(time.perf_counter() - t0, 1e-9)
        if stream is not None:
            end = "\n" if done >= total else ""
            stream.write(f"\r{render_bar(label, done, total, rate)}{end}")
            stream.flush()
        step = min(done, total) * steps // total
        if log is not None and step > logged["step"]:
            log(f"{label} {done}/{total} ({100 * done / total:.0f}%, {rate:.1f}/s)")
            logged["step"] = step

    return report
