"""Vocabulary, body model and the geometric verb rules of the synthetic HOI benchmark.

A person is an articulated stick figure given by 15 keypoints (pixel coordinates, y down) and its
height ``u`` in pixels (head top to feet); every rule threshold is a fraction of ``u``, so the rules are
scale invariant. A verb holds for a (person, object box) pair when its rule holds AND the (verb,
object) pair is valid (``VALID_PAIRS``); ``no_interaction`` holds when the object's box centre lies
inside the person's box and no other valid verb holds. ``label_pair`` is the single source of truth: the
generator poses people so that the sampled interaction holds, then labels EVERY pair by these rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

OBJECTS = ("ball", "cup", "phone", "book", "bag", "umbrella", "bicycle", "horse", "chair", "board")
VERBS = (
    "hold",
    "look_at",
    "carry",
    "ride",
    "kick",
    "throw",
    "sit_on",
    "stand_on",
    "drink_with",
    "talk_on",
    "stand_under",
    "no_interaction",
)

# Valid (verb, object) pairs, the sampling order of the long tail: the k-th pair (0-based) is sampled
# with probability proportional to tail_ratio ** (-k / (n - 1)); the last ones are the rare classes.
VALID_PAIRS = (
    ("hold", "ball"),
    ("ride", "bicycle"),
    ("hold", "cup"),
    ("sit_on", "chair"),
    ("hold", "phone"),
    ("ride", "horse"),
    ("kick", "ball"),
    ("stand_on", "board"),
    ("look_at", "phone"),
    ("carry", "bag"),
    ("no_interaction", "ball"),
    ("hold", "book"),
    ("drink_with", "cup"),
    ("no_interaction", "chair"),
    ("talk_on", "phone"),
    ("no_interaction", "bicycle"),
    ("stand_under", "umbrella"),
    ("hold", "bag"),
    ("no_interaction", "cup"),
    ("look_at", "book"),
    ("no_interaction", "horse"),
    ("throw", "ball"),
    ("no_interaction", "bag"),
    ("no_interaction", "phone"),
    ("no_interaction", "board"),
    ("no_interaction", "book"),
    ("no_interaction", "umbrella"),
    ("hold", "umbrella"),
    ("carry", "board"),
    ("look_at", "ball"),
    ("hold", "board"),
    ("carry", "book"),
    ("look_at", "cup"),
    ("carry", "ball"),
    ("stand_on", "chair"),
    ("carry", "chair"),
)

# Object size ranges (width, height) in units of the person height.
OBJECT_SIZES = {
    "ball": ((0.15, 0.21), None),  # a disc: height = width
    "cup": ((0.11, 0.14), (0.14, 0.18)),
    "phone": ((0.08, 0.10), (0.15, 0.19)),
    "book": ((0.18, 0.24), (0.15, 0.19)),
    "bag": ((0.22, 0.28), (0.22, 0.28)),
    "umbrella": ((0.50, 0.62), (0.30, 0.36)),
    "bicycle": ((0.75, 0.90), (0.45, 0.52)),
    "horse": ((0.95, 1.10), (0.62, 0.72)),
    "chair": ((0.32, 0.40), (0.52, 0.60)),
    "board": ((0.48, 0.58), (0.08, 0.10)),
}
# Where a rider / sitter rests on a support object, as a fraction of its box height from the top.
SEAT_LEVEL = {"bicycle": 0.02, "horse": 0.35, "chair": 0.45}
# Where feet rest on an object stood on.
STAND_LEVEL = {"board": 0.0, "chair": 0.45}

# Keypoint indices. Arm/leg 0 is on the -x side of the body, 1 on the +x side.
HEAD, NECK, PELVIS = 0, 1, 2
SHOULDER, ELBOW, WRIST = (3, 4), (5, 6), (7, 8)
HIP, KNEE, ANKLE = (9, 10), (11, 12), (13, 14)
NUM_KEYPOINTS = 15
LIMBS = (("arm", SHOULDER, ELBOW, WRIST), ("leg", HIP, KNEE, ANKLE))

# Body proportions in units of the height (pelvis at the origin, head top y = -0.55, feet y = +0.45).
HEAD_R = 0.09
HEAD_Y, NECK_Y, SHOULDER_Y = -0.46, -0.37, -0.34
SHOULDER_X, HIP_X = 0.10, 0.055
UPPER_ARM, FOREARM, THIGH, SHIN = 0.16, 0.15, 0.235, 0.215
WIDTHS = {"torso": 0.11, "arm": 0.045, "leg": 0.06, "foot": 0.06}

# Rule thresholds (fractions of the person height).
TOUCH = 0.04
MOUTH_TOUCH = 0.025
THROW_GAP = (TOUCH, 0.25)


@dataclass
class Person:
    """A posed figure: ``kp`` (15, 2) pixel keypoints, ``height`` u in pixels, ``facing`` +1 / -1."""

    kp: np.ndarray
    height: float
    facing: int

    def box(self) -> np.ndarray:
        """Tight (4,) xyxy box of everything drawn for the figure (limbs with their width, head, feet)."""
        u = self.height
        pad = 0.5 * max(WIDTHS["arm"], WIDTHS["leg"]) * u
        x1, y1 = self.kp.min(axis=0) - pad
        x2, y2 = self.kp.max(axis=0) + pad
        hx, hy = self.kp[HEAD]
        r = HEAD_R * u
        for a in ANKLE:
            fx = self.kp[a, 0] + self.facing * WIDTHS["foot"] * u
            x1, x2 = min(x1, fx - pad), max(x2, fx + pad)
        return np.array(
            [min(x1, hx - r), min(y1, hy - r), max(x2, hx + r), max(y2, hy + r)], dtype=np.float64
        )

    def mouth(self) -> np.ndarray:
        u = self.height
        return self.kp[HEAD] + np.array([self.facing * 0.75 * HEAD_R * u, 0.4 * HEAD_R * u])

    def ear(self) -> np.ndarray:
        u = self.height
        return self.kp[HEAD] + np.array([-self.facing * 0.8 * HEAD_R * u, 0.1 * HEAD_R * u])


def point_box_distance(p: np.ndarray, box: np.ndarray) -> float:
    """Euclidean distance from a point to an xyxy box (0 inside)."""
    dx = max(box[0] - p[0], 0.0, p[0] - box[2])
    dy = max(box[1] - p[1], 0.0, p[1] - box[3])
    return float(np.hypot(dx, dy))


def centre_inside(box: np.ndarray, region: np.ndarray) -> bool:
    """True when the centre of ``box`` lies inside ``region`` (both xyxy)."""
    cx, cy = 0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3])
    return bool(region[0] <= cx <= region[2] and region[1] <= cy <= region[3])


def _hold(p: Person, box: np.ndarray) -> bool:
    return min(point_box_distance(p.kp[w], box) for w in WRIST) <= TOUCH * p.height


def _carry(p: Person, box: np.ndarray) -> bool:
    u, (hx, hy) = p.height, p.kp[HEAD]
    above_head = box[3] <= hy - 0.6 * HEAD_R * u and abs(0.5 * (box[0] + box[2]) - hx) <= 0.12 * u
    arms_up = all(p.kp[w, 1] < p.kp[NECK, 1] for w in WRIST)
    return above_head and arms_up and _hold(p, box)


def _kick(p: Person, box: np.ndarray) -> bool:
    u = p.height
    for a, other in ((ANKLE[0], ANKLE[1]), (ANKLE[1], ANKLE[0])):
        raised = p.kp[a, 1] < p.kp[other, 1] - 0.05 * u
        if raised and point_box_distance(p.kp[a], box) <= TOUCH * u:
            return True
    return False


def _on_top(p: Person, box: np.ndarray) -> bool:
    """Pelvis resting on the upper half of the object, legs hanging below it (ride / sit_on)."""
    u, (px, py) = p.height, p.kp[PELVIS]
    bw, bh = box[2] - box[0], box[3] - box[1]
    inside_x = box[0] + 0.1 * bw <= px <= box[2] - 0.1 * bw
    on_upper_half = box[1] - 0.06 * u <= py <= box[1] + 0.55 * bh
    legs_down = all(p.kp[a, 1] > py + 0.15 * u for a in ANKLE)
    return inside_x and on_upper_half and legs_down


def _stand_on(p: Person, box: np.ndarray) -> bool:
    """Both feet on the object's upper half and the pelvis clearly above its top edge."""
    u = p.height
    bh = box[3] - box[1]
    feet = all(
        box[0] <= p.kp[a, 0] <= box[2] and box[1] - 0.05 * u <= p.kp[a, 1] <= box[1] + 0.5 * bh for a in ANKLE
    )
    return feet and p.kp[PELVIS, 1] < box[1] - 0.1 * u


def _look_at(p: Person, box: np.ndarray) -> bool:
    """Object centre in front of the face (facing side) at head height."""
    u, (hx, hy) = p.height, p.kp[HEAD]
    cx, cy = 0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3])
    ahead = p.facing * (cx - hx)
    return abs(cy - hy) <= 1.3 * HEAD_R * u and 1.5 * HEAD_R * u <= ahead <= 0.45 * u


def _throw(p: Person, box: np.ndarray) -> bool:
    """Object just released above a raised hand: above the wrist, close to it, not touching it."""
    u = p.height
    for w, s in zip(WRIST, SHOULDER):
        wx, wy = p.kp[w]
        if wy >= p.kp[s, 1] - 0.02 * u or box[3] >= wy:
            continue
        gap = point_box_distance(p.kp[w], box)
        if THROW_GAP[0] * u < gap <= THROW_GAP[1] * u and abs(0.5 * (box[0] + box[2]) - wx) <= 0.12 * u:
            return True
    return False


def _drink_with(p: Person, box: np.ndarray) -> bool:
    return point_box_distance(p.mouth(), box) <= MOUTH_TOUCH * p.height


def _talk_on(p: Person, box: np.ndarray) -> bool:
    return point_box_distance(p.ear(), box) <= MOUTH_TOUCH * p.height


def _stand_under(p: Person, box: np.ndarray) -> bool:
    """A wide object whose bottom edge is just above the head and which spans the head horizontally."""
    u, (hx, hy) = p.height, p.kp[HEAD]
    top = hy - HEAD_R * u
    return box[0] < hx < box[2] and top - 0.3 * u <= box[3] <= top + 0.05 * u and box[2] - box[0] >= 0.3 * u


RULES = {
    "hold": _hold,
    "look_at": _look_at,
    "carry": _carry,
    "ride": _on_top,
    "kick": _kick,
    "throw": _throw,
    "sit_on": _on_top,
    "stand_on": _stand_on,
    "drink_with": _drink_with,
    "talk_on": _talk_on,
    "stand_under": _stand_under,
}

RULE_TEXT = {
    "hold": "a wrist within 0.04 u of the object box",
    "look_at": "object centre at head height (+-1.3 head radii) and 1.5 head radii..0.45 u ahead of the face",
    "carry": "object above the head (bottom above head centre - 0.6 head radius, centred within 0.12 u), "
    "both wrists above the neck, one touching it",
    "ride": "pelvis over the middle 80% of the object, in its top 55%, both feet 0.15 u below the pelvis",
    "kick": "a raised foot (0.05 u above the other) within 0.04 u of the object",
    "throw": "object above a hand raised over its shoulder, 0.04..0.25 u from the wrist, "
    "centred within 0.12 u",
    "sit_on": "same geometry as ride (valid for chairs)",
    "stand_on": "both feet on the object's upper half and the pelvis 0.1 u above its top",
    "drink_with": "the mouth within 0.025 u of the object",
    "talk_on": "the ear (back of the head) within 0.025 u of the object",
    "stand_under": "object at least 0.3 u wide spanning the head, bottom edge 0..0.3 u above the head top",
    "no_interaction": "the object's box centre lies inside the person's box and no other valid verb holds",
}


def label_pair(
    person: Person, person_box: np.ndarray, obj_name: str, box: np.ndarray, verbs: tuple[str, ...]
) -> list[str]:
    """The verbs (among ``verbs`` and the valid pairs) whose rule holds for this pair, in ``verbs`` order."""
    valid = {v for v, o in VALID_PAIRS if o == obj_name}
    out = [v for v in verbs if v in RULES and v in valid and RULES[v](person, box)]
    if not out and "no_interaction" in verbs and "no_interaction" in valid and centre_inside(box, person_box):
        out = ["no_interaction"]
    return out


def cfg_verbs(cfg: Any) -> list[str]:
    """The verbs a config uses: the first ``num_verbs`` of the vocabulary."""
    return list(VERBS[: cfg.num_verbs])


def cfg_objects(cfg: Any) -> list[str]:
    """The object categories a config uses: the first ``num_object_classes`` of the vocabulary."""
    return list(OBJECTS[: cfg.num_object_classes])
