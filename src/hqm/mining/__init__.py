"""Hard-positive query mining (HQM): GBS, AMM and their joint-learning schedules."""

from __future__ import annotations

from hqm.mining.base import MiningContext, QueryMiner


def build_miners(cfg, detector) -> dict[str, QueryMiner]:
    """The miners ``cfg.mining.strategy`` needs, keyed by the names the schedule activates."""
    if cfg.mining.strategy == "none":
        return {}
    raise NotImplementedError(f"mining.strategy={cfg.mining.strategy!r} is not implemented yet")


__all__ = ["MiningContext", "QueryMiner", "build_miners"]
