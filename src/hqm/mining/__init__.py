"""Hard-positive query mining (HQM): GBS, AMM and their joint-learning schedules.

``build_miners(cfg, detector)`` creates the miners a strategy needs, keyed by the names the
schedule (``hqm.mining.schedule``) activates and under which the criterion logs their losses:
``gbs`` (GBS), ``amm`` (AMM), both for ``ajl`` / ``pjl``, ``cjl`` (GBS queries with AMM masking).
"""

from __future__ import annotations

from hqm.mining.base import MiningContext, QueryMiner


def build_miners(cfg, detector) -> dict[str, QueryMiner]:
    """The miners ``cfg.mining.strategy`` needs (empty for ``none``). The miners that need the
    learnable queries' Hungarian assignment inside forward get a matcher built from ``cfg.loss``."""
    from hqm.mining.amm import AMMMiner
    from hqm.mining.cjl import CJLMiner
    from hqm.mining.gbs import GBSMiner
    from hqm.mining.schedule import build_schedule
    from hqm.models.matcher import build_matcher

    mc = cfg.mining
    names = build_schedule(mc).miner_names
    g, a = mc.gbs, mc.amm
    gbs_kwargs = dict(
        iou_range=tuple(g.iou_range),
        sampler=g.sampler,
        shift=g.shift,
        num_candidates=g.num_candidates,
        max_rounds=g.max_rounds,
    )
    miners: dict[str, QueryMiner] = {}
    if "gbs" in names:
        miners["gbs"] = GBSMiner(detector.hidden_dim, **gbs_kwargs)
    if "amm" in names:
        matcher = build_matcher(cfg.loss) if a.queries == "matched" else None
        miners["amm"] = AMMMiner(
            a.k, a.gamma, a.mask, a.select, a.reference, a.target, a.queries, a.skip_final_norm, matcher
        )
    if "cjl" in names:
        matcher = build_matcher(cfg.loss) if mc.cjl_reference == "learnable" else None
        masking = dict(k=a.k, gamma=a.gamma, mode=a.mask, select=a.select)
        miners["cjl"] = CJLMiner(detector.hidden_dim, masking, mc.cjl_reference, matcher, **gbs_kwargs)
    return miners


__all__ = ["MiningContext", "QueryMiner", "build_miners"]
