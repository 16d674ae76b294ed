"""Progress of long loops that are not training steps: evaluation batches, synthetic images.

:func:`track` wraps an iterable: on a terminal a tqdm bar; otherwise (a log file, a batch job) one
log line (logger ``hqm``) at least every ``interval`` seconds and at the end, with the count, the
rate and the time left, so that a long evaluation or generation in a job log is never silent.
Training has its own whole-run progress (``hqm.engine.logging.Progress``).
"""

from __future__ import annotations

import datetime
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
LOGGER = logging.getLogger("hqm")


def track(
    items: Iterable[T],
    total: int,
    desc: str,
    unit: str = "it",
    enabled: bool = True,
    interval: float = 30.0,
    logger: logging.Logger = LOGGER,
) -> Iterator[T]:
    """Yield ``items`` (``total`` of them, counted in ``unit``) and show the progress as ``desc``
    (see the module docstring). ``enabled=False`` (e.g. ranks other than 0) shows nothing."""
    if not enabled:
        yield from items
        return
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
        return
    start = last = time.time()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.time()
        if now - last >= interval and done < total:
            last = now
            left = datetime.timedelta(seconds=int((now - start) / done * (total - done)))
            logger.info(f"{desc}: {done}/{total} {unit} ({done / (now - start):.1f} {unit}/s), eta {left}")
    if done:
        elapsed = time.time() - start
        logger.info(f"{desc}: {done}/{total} {unit} in {datetime.timedelta(seconds=int(elapsed))}")
