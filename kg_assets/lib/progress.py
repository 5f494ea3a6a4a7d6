"""Progress of long steps (embedding, tuning sweeps, evaluation): a live bar on a terminal, lines in a log.

The bar (label, counts, percent, rate) goes to stderr only when stderr is a terminal and $KG_PROGRESS is not
"0"; `indexctl ... --json` sets it to "0" (see `silence`) so machine-readable runs stay quiet.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

Progress = Callable[[int, int], None]  # (done, total)
PROGRESS_ENV = "KG_PROGRESS"
BAR_WIDTH = 30


def silence() -> None:
    """Switch the terminal bar off for this process and the processes it starts."""
    os.environ[PROGRESS_ENV] = "0"


def bar_enabled() -> bool:
    return sys.stderr.isatty() and os.environ.get(PROGRESS_ENV, "1") != "0"


def render_bar(label: str, done: int, total: int, rate: float) -> str:
    """`label [#####-----] done/total pct% rate/s`."""
    filled = int(BAR_WIDTH * done / total) if total else 0
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    pct = 100 * done / total if total else 0.0
    return f"{label} [{bar}] {done}/{total} {pct:3.0f}% {rate:.1f}/s"


def log_progress(log: Callable[[str], None] | None, label: str, steps: int = 10) -> Progress:
    """A progress callback: a line `label done/total (pct, rate)` to `log` each time another 1/`steps` of the
    work is done, and a live bar on stderr when `bar_enabled()` (decided once, when the callback is made)."""
    t0 = time.perf_counter()
    logged = {"step": 0}
    tty = bar_enabled()

    def report(done: int, total: int) -> None:
        if total <= 0:
            return
        rate = done / max(time.perf_counter() - t0, 1e-9)
        if tty:
            end = "\n" if done >= total else ""
            sys.stderr.write(f"\r{render_bar(label, done, total, rate)}{end}")
            sys.stderr.flush()
        step = min(done, total) * steps // total
        if log is not None and step > logged["step"]:
            log(f"{label} {done}/{total} ({100 * done / total:.0f}%, {rate:.1f}/s)")
            logged["step"] = step

    return report
