"""Which miners run at a training step, and the weight of each hard-query loss.

The schedule is a pure function of the global optimiser step (and the step at which the current
epoch began), identical on every rank and restored exactly on resume. It never lives in ``forward``:
the trainer asks it and passes the names to the detector.

* ``none``: no hard queries;  ``gbs`` / ``amm``: that miner every step, weight beta;
* ``ajl`` (alternate, the paper's HQM): one type per step, GBS, AMM, GBS, ... (``ajl.start`` picks
  the first; ``ajl.reset_each_epoch`` restarts from ``start`` at every epoch, as the released code);
* ``pjl`` (parallel): both every step, each weighted 0.5 * beta, in independent passes;
* ``cjl`` (cascaded): one group of GBS queries whose cross-attention is AMM-masked, weight beta.

``mining.epochs`` = N > 0 stops every strategy at the first step of epoch N (``stop_step``): the
learnable queries train alone for the rest of the run (not in the paper; a way to keep the hard
queries' early help without their competing for the decoder while the learning rate decays).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MiningSchedule:
    strategy: str = "none"
    beta: float = 1.0
    start: str = "gbs"
    reset_each_epoch: bool = False
    stop_step: int = 0  # > 0: no miner from this global step on

    @property
    def miner_names(self) -> tuple[str, ...]:
        """Every miner the strategy may activate (what ``build_miners`` must create)."""
        return {
            "none": (),
            "gbs": ("gbs",),
            "amm": ("amm",),
            "ajl": ("gbs", "amm"),
            "pjl": ("gbs", "amm"),
            "cjl": ("cjl",),
        }[self.strategy]

    def active(self, step: int, epoch_start_step: int = 0) -> tuple[str, ...]:
        """Names of the miners to run at global optimiser step ``step``."""
        if self.stop_step and step >= self.stop_step:
            return ()
        if self.strategy == "ajl":
            pos = step - epoch_start_step if self.reset_each_epoch else step
            first, second = ("gbs", "amm") if self.start == "gbs" else ("amm", "gbs")
            return (first,) if pos % 2 == 0 else (second,)
        return self.miner_names

    def weights(self, active: tuple[str, ...]) -> dict[str, float]:
        """Loss weight of each active group: beta, or 0.5 * beta for PJL."""
        w = 0.5 * self.beta if self.strategy == "pjl" else self.beta
        return {name: w for name in active}


def build_schedule(cfg_mining, steps_per_epoch: int | None = None) -> MiningSchedule:
    """``cfg.mining``'s schedule; ``steps_per_epoch`` (optimiser steps) places ``mining.epochs``'s stop.

    Raises ValueError when ``mining.epochs`` is set and ``steps_per_epoch`` is not given."""
    stop = 0
    if cfg_mining.epochs:
        if steps_per_epoch is None:
            raise ValueError("mining.epochs needs the number of optimiser steps per epoch")
        stop = cfg_mining.epochs * steps_per_epoch
    return MiningSchedule(
        cfg_mining.strategy, cfg_mining.beta, cfg_mining.ajl.start, cfg_mining.ajl.reset_each_epoch, stop
    )
