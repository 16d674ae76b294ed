"""Hard-positive query mining (HQM): GBS, AMM and their joint-learning schedules.

``build_miners(cfg, detector)`` creates the miners a strategy needs, keyed by the names the
schedule (``hqm.mining.schedule``) activates and under which the criterion logs their losses:
``gbs`` (GBS), ``amm`` (AMM), both for ``ajl`` / ``pjl``, ``cjl`` (GBS queries with AMM masking).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from hqm.mining.amm import AMMMiner
from hqm.mining.base import MiningContext, QueryMiner
from hqm.mining.cjl import CJLMiner
from hqm.mining.gbs import GBSMiner
from hqm.mining.schedule import MiningSchedule


def build_miners(
    cfg, detector, matcher_factory: Callable[[], nn.Module] | None = None
) -> dict[str, QueryMiner]:
    """The miners ``cfg.mining.strategy`` needs for ``detector`` (empty for ``none``). Miners that
    need the learnable queries' Hungarian assignment inside forward get ``matcher_factory()`` (the
    detector's matcher, built through the registry ``hqm.detectors``)."""

    def matcher() -> nn.Module:
        if matcher_factory is None:
            raise ValueError(f"mining.strategy={cfg.mining.strategy} with these options needs a matcher")
        return matcher_factory()

    mc = cfg.mining
    names = MiningSchedule(mc.strategy).miner_names
    g, a = mc.gbs, mc.amm
    gbs_kwargs = dict(
        iou_range=tuple(g.iou_range),
        sampler=g.sampler,
        shift=g.shift,
        num_candidates=g.num_candidates,
        max_rounds=g.max_rounds,
        clip=g.clip,
        reference_points=g.reference_points,
    )
    miners: dict[str, QueryMiner] = {}
    if "gbs" in names:
        miners["gbs"] = GBSMiner(detector.hidden_dim, **gbs_kwargs)
    if "amm" in names:
        miners["amm"] = AMMMiner(
            k=a.k,
            gamma=a.gamma,
            mask=a.mask,
            select=a.select,
            reference=a.reference,
            target=a.target,
            queries=a.queries,
            skip_final_norm=a.skip_final_norm,
            matcher=matcher() if a.queries == "matched" else None,
        )
    if "cjl" in names:
        masking = dict(k=a.k, gamma=a.gamma, mode=a.mask, select=a.select)
        cjl_matcher = matcher() if mc.cjl_reference == "learnable" else None
        miners["cjl"] = CJLMiner(detector.hidden_dim, masking, mc.cjl_reference, cjl_matcher, **gbs_kwargs)
    return miners


__all__ = ["MiningContext", "QueryMiner", "build_miners"]
