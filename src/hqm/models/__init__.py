"""Detectors, matcher, criterion and post-processor.

The registry of detectors (``model.detector``) is ``hqm.detectors.DETECTORS``: it sits above this
package and ``hqm.mining`` because building a detector attaches its miners.
"""

from __future__ import annotations

from hqm.models.criterion import HOILossTerms, LossNormalisers, build_criterion
from hqm.models.detector import DetectorSpec, DetrHOIModel, EncodedImages, MiningContext, QueryGroup
from hqm.models.group_criterion import FixedAssignment, GroupCriterion, LearnableAssignment, MinedGroup
from hqm.models.matcher import HungarianMatcher, build_matcher
from hqm.models.postprocess import PostProcessHOI, build_postprocessor

__all__ = [
    "DetectorSpec",
    "DetrHOIModel",
    "EncodedImages",
    "FixedAssignment",
    "GroupCriterion",
    "HOILossTerms",
    "HungarianMatcher",
    "LearnableAssignment",
    "LossNormalisers",
    "MinedGroup",
    "MiningContext",
    "PostProcessHOI",
    "QueryGroup",
    "build_criterion",
    "build_matcher",
    "build_postprocessor",
]
