"""Progress of long loops (training steps, evaluation batches, synthetic images, predicted images):
the one implementation every entry point uses.

:class:`Progress` counts ``total`` units from ``start``. On a terminal it draws a tqdm bar; otherwise
(a log file, a batch job, a pipe) it writes a log line (logger ``hqm``, rank 0 only: ``enabled``)
every ``every`` units *and* at least every ``interval`` seconds, whichever comes first, and one at
the last unit, so that a short or a slow loop is never silent in a job log. The eta is for the whole
loop: units left x the mean busy time per unit since the (re)start; :meth:`Progress.pause` /
:meth:`Progress.resume` leave out time spent elsewhere (the evaluations inside a training run).

:func:`track` wraps an iterable with a ``Progress`` and ends with a summary line (count, time).
Training builds its own log line (losses, lr, memory) with ``hqm.engine.logging.train_line`` and
hands it to :meth:`Progress.update`.
"""

from __future__ import annotations

import datetime
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
LOGGER = logging.getLogger("hqm")


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: "1 image", "3 images", "0 triplets"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _seconds(s: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=int(s))


class Progress:
    """See the module docstring.

    total: units of the whole loop; start: units already done (a resumed run); every: a log line
    every that many units (0: only the time-based ones); interval: at least one line every that
    many seconds; clock: seconds (monotonic), replaceable in tests."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "it",
        start: int = 0,
        enabled: bool = True,
        every: int = 0,
        interval: float = 30.0,
        logger: logging.Logger = LOGGER,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.desc, self.unit, self.start = total, desc, unit, start
        self.enabled, self.every, self.interval = enabled, max(0, every), interval
        self.logger, self.clock = logger, clock
        self.busy = 0.0  # seconds counted since the (re)start, pauses excluded
        self.t_last: float | None = clock()
        self.t_logged = self.t_last
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=desc, unit=unit, dynamic_ncols=True, leave=False)

    def pause(self) -> None:
        """Stop counting time (an evaluation or a checkpoint follows)."""
        if self.t_last is not None:
            self.busy += self.clock() - self.t_last
            self.t_last = None

    def resume(self) -> None:
        self.t_last = self.clock()

    def elapsed(self) -> float:
        """Busy seconds since the (re)start."""
        return self.busy + (self.clock() - self.t_last if self.t_last is not None else 0.0)

    def eta(self, n: int) -> datetime.timedelta:
        """Time left for the whole loop after ``n`` units (of ``total``)."""
        done = max(n - self.start, 1)
        return _seconds(self.elapsed() / done * max(self.total - n, 0))

    def line(self, n: int) -> str:
        """The default log line: "DESC: n/total UNIT (rate UNIT/s), eta H:MM:SS"."""
        rate = (n - self.start) / max(self.elapsed(), 1e-9)
        return f"{self.desc}: {n}/{self.total} {self.unit} ({rate:.1f} {self.unit}/s), eta {self.eta(n)}"

    def update(
        self,
        n: int,
        line: Callable[[], str] | None = None,
        desc: str | None = None,
        postfix: dict[str, str] | None = None,
    ) -> None:
        """``n`` units are done. On a terminal: move the bar (with ``desc`` / ``postfix`` if given);
        otherwise log ``line()`` (default :meth:`line`) when one is due (see the module docstring)."""
        if not self.enabled:
            return
        if self.bar is not None:
            if desc is not None:
                self.bar.set_description(desc, refresh=False)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n - self.bar.n)
            return
        now = self.clock()
        due = (self.every and n % self.every == 0) or n >= self.total or now - self.t_logged >= self.interval
        if due:
            self.t_logged = now
            self.logger.info(line() if line is not None else self.line(n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def track(
    items: Iterable[T],
    total: int,
    desc: str,
    unit: str = "it",
    enabled: bool = True,
    interval: float = 30.0,
    logger: logging.Logger = LOGGER,
) -> Iterator[T]:
    """Yield ``items`` (``total`` of them, counted in ``unit``) with a :class:`Progress` named
    ``desc``; without a terminal, a last line "DESC: n/total UNIT in H:MM:SS" (ending in "(stopped)"
    when the loop ended early: a stopped evaluation, an error). ``enabled=False``
    (e.g. ranks other than 0) shows nothing."""
    if not enabled:
        yield from items
        return
    progress = Progress(total, desc, unit, enabled=True, interval=interval, logger=logger)
    done = 0
    try:
        for item in items:
            yield item
            done += 1
            if done < total:  # the summary below replaces the line of the last unit
                progress.update(done)
    finally:
        if progress.bar is None and done:
            stopped = " (stopped)" if done < total else ""
            logger.info(f"{desc}: {done}/{total} {unit} in {_seconds(progress.elapsed())}{stopped}")
        progress.close()
