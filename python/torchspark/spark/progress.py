"""The driver's progress line for a running ``predict``: :class:`Progress`.

Rows scored, rows/s, bad rows and, when the input's row count is known, the
share done and an ETA; read from the tasks' live figures (:mod:`.live`), so it
costs the job nothing but the datagrams the tasks send anyway. In a terminal
one line is rewritten in place (stderr); otherwise a log line (the
``torchspark`` logger, INFO) every :data:`LOG_EVERY_S`. When no task has
been running for a while the run's last line is printed and the next action
on the same DataFrame starts a new count.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from .job_metrics import latest_attempts
from .live import Receiver

logger = logging.getLogger("torchspark")

REFRESH_S = 0.5
LOG_EVERY_S = 10.0
_IDLE_S = 3.0  # no task running and nothing heard for this long: the action ended


@dataclass
class _Run:
    df: Any  # the DataFrame scored: its row count is looked up when figures arrive
    total: int | None = None  # input rows, when known
    counted: bool = False  # whether the count was looked up
    printed: float = 0.0  # when its last log line was written
    ended: set[tuple[Any, ...]] = field(default_factory=set)  # tasks of the actions that ended


def input_rows(df: Any) -> int | None:
    """``df``'s row count where Spark's plan statistics know it (a range, a
    table with statistics), without running a job; else None."""
    try:
        count = df._jdf.queryExecution().optimizedPlan().stats().rowCount()
        return int(count.get().toString()) if count.isDefined() else None
    except Exception:  # Spark Connect, or statistics out of reach
        return None


def line(rows: int, seconds: float, bad: int, total: int | None) -> str:
    """``12,000 rows, 4,000 rows/s, 3 bad rows, 40% done, ETA 18 s``."""
    rate = rows / seconds if seconds > 0 else 0.0
    text = f"torchspark: {rows:,} rows scored, {rate:,.0f} rows/s"
    if bad:
        text += f", {bad:,} bad rows"
    if total:
        text += f", {min(rows / total, 1.0):.0%} of {total:,}"
        if rate > 0 and rows < total:
            text += f", ETA {(total - rows) / rate:,.0f} s"
    return text


class Progress:
    """Shows the runs :meth:`track`-ed, from ``receiver``'s figures, on a
    daemon thread. ``stream``: where the terminal line goes (stderr)."""

    def __init__(self, receiver: Receiver, stream: TextIO | None = None) -> None:
        self.receiver = receiver
        self.stream = stream if stream is not None else sys.stderr
        self.runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="torchspark-progress", daemon=True)
        self._thread.start()

    def track(self, run: str, df: Any) -> None:
        """Show ``run``'s progress; ``df``: the DataFrame it scores (its row
        count, where Spark knows it, looked up on this thread, off the
        ``predict`` call: planning statistics take tens of ms)."""
        with self._lock:
            self.runs[run] = _Run(df)

    def _terminal(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def _loop(self) -> None:
        while not self._stop.wait(REFRESH_S):
            try:
                self.refresh()
            except Exception as e:  # the progress line must never take the driver down
                logger.debug("torchspark: progress: %s", e)

    def refresh(self) -> None:
        now = time.time()
        with self._lock:
            runs = dict(self.runs)
        for run, state in runs.items():
            current = [
                t
                for t in latest_attempts(self.receiver.tasks(run))
                if (t["stage"], t["partition"]) not in state.ended
            ]
            if not current:
                continue
            if not state.counted:
                state.total, state.counted, state.df = input_rows(state.df), True, None
            rows = sum(t["rows"] for t in current)
            bad = sum(t["bad_rows"] for t in current)
            idle = all(t["done"] and now - t["received"] > _IDLE_S for t in current)
            end = max(t["received"] for t in current) if idle else now
            text = line(rows, end - min(t["start"] for t in current), bad, state.total)
            if self._terminal():
                self.stream.write("\r" + text + ("\n" if idle else "\x1b[K"))
                self.stream.flush()
            elif idle or now - state.printed >= LOG_EVERY_S:
                logger.info("%s%s", text, " (done)" if idle else "")
                state.printed = now
            if idle:  # the action ended: the next one on this DataFrame counts anew
                state.ended |= {(t["stage"], t["partition"]) for t in current}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
