"""Numerical faults: a step whose loss or gradient is not finite never reaches the optimiser.

``Trainer.train_step`` asks :class:`NonFiniteGuard` before every optimiser step (after the backward
passes of the accumulation window, before ``optimizer.step``):

* the **loss** of every micro-batch must be finite (checked on every rank, agreed by all-reduce, so
  all ranks skip the same step);
* the **gradient norm** must be finite (after DDP's all-reduce, identical on every rank). With
  ``train.amp=fp16`` this check is left to the ``GradScaler``, which already skips a step with
  infinite gradients and lowers its scale: such steps are routine in fp16 and are not counted here.

What happens to a bad step (``train.on_nonfinite``):

* ``skip`` (default): the gradients are dropped, the step counts as done (the data position, the lr
  and the mining schedule move on as for any step) and one log line names the step, the loss terms
  and the running counts; a ``nonfinite`` event goes to ``metrics.jsonl``. ``train.max_nonfinite_skips``
  consecutive skips stop the run as below: a diverged run does not burn its budget on skips.
* ``stop``: the first bad step stops the run.

A stop raises :class:`NonFiniteError` (exit code 1) before anything is written: ``checkpoints/last.pt``
stays the last good checkpoint, and the message gives the resume command.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hqm.errors import UserError


class NonFiniteError(UserError):
    """Training stopped on non-finite losses or gradients; the last good checkpoint is intact."""


@dataclass
class NonFiniteGuard:
    """Counts bad steps and decides skip or stop (see the module docstring).

    policy: ``skip`` | ``stop``; max_skips: consecutive skips that stop the run."""

    policy: str = "skip"
    max_skips: int = 10
    consecutive: int = 0
    total: int = 0

    def check(self, step: int, loss_finite: bool, grad_norm: float | None, terms: dict[str, float]) -> str:
        """After the backward passes of optimiser step ``step`` (0-based): ``"ok"`` or ``"skip"``;
        raises :class:`NonFiniteError` (without the resume hint, which the trainer adds) to stop.

        loss_finite: every micro-batch loss on every rank was finite; grad_norm: the total gradient
        norm, None when not checked (fp16: the GradScaler's business); terms: the loss terms of the
        window, for the message."""
        bad = not loss_finite or (grad_norm is not None and not math.isfinite(grad_norm))
        if not bad:
            self.consecutive = 0
            return "ok"
        self.consecutive += 1
        self.total += 1
        what = self.describe(step, loss_finite, grad_norm, terms)
        if self.policy == "stop":
            raise NonFiniteError(f"{what}; train.on_nonfinite=stop")
        if self.consecutive >= self.max_skips:
            raise NonFiniteError(
                f"{what}; {self.consecutive} consecutive steps were not finite "
                f"(train.max_nonfinite_skips={self.max_skips}): the run has diverged"
            )
        return "skip"

    @staticmethod
    def describe(step: int, loss_finite: bool, grad_norm: float | None, terms: dict[str, float]) -> str:
        bad_terms = [f"{k}={v:.4g}" for k, v in terms.items() if not math.isfinite(v)]
        if not loss_finite:
            shown = ", ".join(bad_terms[:6]) or "the total"
            return f"step {step + 1}: the loss is not finite ({shown})"
        return f"step {step + 1}: the gradient norm is {grad_norm} (the loss was finite)"
