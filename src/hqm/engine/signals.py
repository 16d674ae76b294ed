"""Pre-emption: SIGTERM and SIGINT become a request to stop at the next step boundary.

While ``Trainer.fit`` runs, :class:`StopSignals` replaces the handlers of SIGTERM (what a batch
scheduler, a cloud pre-emption notice or torchrun's elastic agent sends) and SIGINT (Ctrl-C). The
handler only records the signal; the trainer polls :meth:`StopSignals.requested` after every
optimiser step (and between evaluation batches), saves ``last.pt`` there and exits with
``hqm.errors.Interrupted`` (exit code 128 + the signal: 143 for SIGTERM, 130 for SIGINT), so at most
one step of work is lost instead of up to an epoch. A second SIGINT stops at once
(``KeyboardInterrupt``, nothing saved), for a user who does not want to wait for the step.

Under torchrun every rank polls the same collective (:meth:`requested` all-reduces the flag), so all
ranks stop after the same step even when the signal reached them at different moments.

DataLoader worker processes ignore both signals (:func:`ignore_stop_signals`, their
``worker_init_fn``): a terminal's Ctrl-C or a scheduler's SIGTERM reaches the whole process group,
and a worker that died on it would break the batch the main process still has to finish. Workers
end with the main process as usual.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from hqm.distributed import all_reduce_sum, is_dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def ignore_stop_signals(worker_id: int = 0) -> None:
    """``worker_init_fn`` of the data loaders: the worker ignores SIGTERM and SIGINT (see above)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


class StopSignals:
    """Context manager recording SIGTERM / SIGINT while training (see the module docstring).

    Handlers are installed only in the main thread (Python allows no other); elsewhere the context
    does nothing and :meth:`requested` stays None. The previous handlers come back on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # no logging here: the handler may run while the logging lock is held; the trainer reports
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now, without a checkpoint
        if self.signum is None:
            self.signum = signum

    def requested(self) -> int | None:
        """The signal to stop for, or None. Collective under torch.distributed: every rank must call
        it at the same point; all get a signal when any rank received one (SIGTERM for a rank that
        did not receive it itself)."""
        if is_dist() and all_reduce_sum([1.0 if self.signum is not None else 0.0])[0] > 0:
            self.signum = self.signum or int(signal.SIGTERM)  # another rank received it
        return self.signum
