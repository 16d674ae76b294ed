"""Scene sampling for the synthetic HOI benchmark: pose people around sampled interactions, add
non-interacting people and distractor objects, then label every (person, object) pair by the rules.

The interaction is sampled FIRST; the figure is then posed (inverse kinematics for arms and legs) and
the object placed at the body part the verb needs (a hand, a foot, the face, above the head, under the
pelvis), in body units (height 1, pelvis at the origin). The person+object group is scaled and placed
in the image as a whole, so the geometry survives placement. Labels come from ``label_pair`` on the
final pixel geometry: accidental configurations (a distractor ball at someone's hand) are labelled too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hqm.data import synthetic_rules as R
from hqm.data.synthetic_rules import Person, cfg_objects, cfg_verbs


@dataclass
class SceneObject:
    name: str
    box: np.ndarray  # (4,) pixel xyxy
    facing: int = 1  # which way asymmetric shapes (horse head, chair back, cup handle) point
    behind: bool = False  # drawn before the people


@dataclass
class Scene:
    width: int
    height: int
    people: list[Person] = field(default_factory=list)
    objects: list[SceneObject] = field(default_factory=list)
    order: list[tuple[str, int]] = field(default_factory=list)  # draw order: ("person" | "object", index)
    intended: list[tuple[int, int, str]] = field(default_factory=list)  # (person, object, verb) sampled
    labels: list[tuple[int, int, str]] = field(default_factory=list)  # every labelled (person, object, verb)
    person_boxes: list[np.ndarray] = field(default_factory=list)  # (4,) pixel xyxy, as written


def _dir(angle: float) -> np.ndarray:
    """Unit vector at ``angle`` radians from straight down (positive turns towards +x)."""
    return np.array([math.sin(angle), math.cos(angle)])


def _ik(
    start: np.ndarray, target: np.ndarray, l1: float, l2: float, prefer: Callable[[np.ndarray], float]
) -> tuple[np.ndarray, np.ndarray]:
    """Two-link inverse kinematics: (middle joint, end point) reaching towards ``target``.

    An unreachable target is approached along the line; ``prefer(mid)`` scores the two bend solutions.
    """
    d = target - start
    dist = float(np.clip(np.hypot(*d), abs(l1 - l2) + 1e-6, l1 + l2 - 1e-6))
    base = math.atan2(d[0], d[1])
    inner = math.acos(np.clip((l1 * l1 + dist * dist - l2 * l2) / (2 * l1 * dist), -1.0, 1.0))
    mids = [start + l1 * _dir(base + s * inner) for s in (1.0, -1.0)]
    mid = max(mids, key=prefer)
    return mid, start + dist * _dir(base)


def base_pose(rng: np.random.Generator, facing: int) -> np.ndarray:
    """A standing or walking figure, arms relaxed: (15, 2) keypoints in body units."""
    kp = np.zeros((R.NUM_KEYPOINTS, 2))
    kp[R.HEAD] = (0.0, R.HEAD_Y)
    kp[R.NECK] = (0.0, R.NECK_Y)
    walking = rng.random() < 0.5
    for i, side in enumerate((-1, 1)):
        kp[R.SHOULDER[i]] = (side * R.SHOULDER_X, R.SHOULDER_Y)
        kp[R.HIP[i]] = (side * R.HIP_X, 0.0)
        a1 = side * math.radians(rng.uniform(5, 35))
        a2 = a1 + facing * math.radians(rng.uniform(-15, 45))
        set_limb(kp, "arm", i, a1, a2)
        if walking:
            b1 = (1 if side == facing else -1) * facing * math.radians(rng.uniform(10, 25))
        else:
            b1 = side * math.radians(rng.uniform(2, 10))
        set_limb(kp, "leg", i, b1, b1 + math.radians(rng.uniform(-5, 5)))
    return kp


def set_limb(kp: np.ndarray, kind: str, i: int, a1: float, a2: float) -> None:
    root, mid, end = (R.SHOULDER, R.ELBOW, R.WRIST) if kind == "arm" else (R.HIP, R.KNEE, R.ANKLE)
    l1, l2 = (R.UPPER_ARM, R.FOREARM) if kind == "arm" else (R.THIGH, R.SHIN)
    kp[mid[i]] = kp[root[i]] + l1 * _dir(a1)
    kp[end[i]] = kp[mid[i]] + l2 * _dir(a2)


def reach(kp: np.ndarray, kind: str, i: int, target: Any, prefer: Callable[[np.ndarray], float]) -> None:
    """Move arm/leg ``i`` so that its end point reaches (towards) ``target``."""
    root, mid, end = (R.SHOULDER, R.ELBOW, R.WRIST) if kind == "arm" else (R.HIP, R.KNEE, R.ANKLE)
    l1, l2 = (R.UPPER_ARM, R.FOREARM) if kind == "arm" else (R.THIGH, R.SHIN)
    kp[mid[i]], kp[end[i]] = _ik(kp[root[i]], np.asarray(target, dtype=float), l1, l2, prefer)


def object_size(rng: np.random.Generator, name: str) -> tuple[float, float]:
    """(width, height) in body units."""
    wr, hr = R.OBJECT_SIZES[name]
    w = rng.uniform(*wr)
    return w, (w if hr is None else rng.uniform(*hr))


def _box(cx: float, cy: float, w: float, h: float) -> np.ndarray:
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def pose_interaction(
    rng: np.random.Generator, verb: str, obj: str, facing: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Pose a figure for ``verb`` with ``obj``: (keypoints (15, 2), object box (4,), object behind?)."""
    kp = base_pose(rng, facing)
    w, h = object_size(rng, obj)
    f = facing
    front = 1 if f == 1 else 0  # index of the arm / leg on the facing side
    down = lambda m: m[1]  # noqa: E731 - elbow / knee below the line
    outward = lambda m: abs(m[0])  # noqa: E731
    forward = lambda m: f * m[0]  # noqa: E731
    behind = False
    head_top = R.HEAD_Y - R.HEAD_R
    if verb == "hold":
        arm = front if rng.random() < 0.7 else 1 - front
        side = -1 if arm == 0 else 1
        a = math.radians(rng.uniform(15, 75))  # below shoulder height: not in front of the face
        reach(kp, "arm", arm, kp[R.SHOULDER[arm]] + rng.uniform(0.2, 0.29) * _dir(side * a), down)
        wx, wy = kp[R.WRIST[arm]]
        if obj == "bag":  # hangs from the hand by its strap
            box = np.array([wx - w / 2, wy - 0.02, wx + w / 2, wy - 0.02 + h])
        elif obj == "umbrella":  # held by the handle at the bottom of its box
            box = np.array([wx - w / 2, wy + 0.01 - h, wx + w / 2, wy + 0.01])
        else:
            u = (kp[R.WRIST[arm]] - kp[R.ELBOW[arm]]) / R.FOREARM
            c = kp[R.WRIST[arm]] + 0.3 * min(w, h) * u
            box = _box(c[0], c[1], w, h)
    elif verb == "carry":
        cx, y2 = rng.uniform(-0.04, 0.04), head_top - rng.uniform(0.0, 0.04)
        box = np.array([cx - w / 2, y2 - h, cx + w / 2, y2])
        reach(kp, "arm", 0, (box[0] + 0.15 * w, y2 - 0.01), outward)
        reach(kp, "arm", 1, (box[2] - 0.15 * w, y2 - 0.01), outward)
    elif verb == "kick":
        leg = front
        reach(kp, "leg", leg, kp[R.HIP[leg]] + (f * rng.uniform(0.15, 0.3), rng.uniform(0.25, 0.36)), forward)
        set_limb(kp, "leg", 1 - leg, -f * math.radians(8), -f * math.radians(8))
        ax, ay = kp[R.ANKLE[leg]]
        box = _box(ax + f * 0.4 * w, ay + 0.05 * w, w, h)
    elif verb in ("ride", "sit_on"):
        y1 = -R.SEAT_LEVEL[obj] * h + rng.uniform(-0.03, 0.02)
        cx = (-f * rng.uniform(0.0, 0.1) if obj == "chair" else rng.uniform(-0.15, 0.15)) * w
        box = np.array([cx - w / 2, y1, cx + w / 2, y1 + h])
        for i in (0, 1):
            knee = kp[R.HIP[i]] + (f * rng.uniform(0.12, 0.22), rng.uniform(0.03, 0.17))
            reach(kp, "leg", i, knee + (-f * 0.02, 0.21), forward)
        reach(kp, "arm", front, (f * rng.uniform(0.18, 0.28), rng.uniform(-0.2, 0.0)), down)
        behind = True
    elif verb == "stand_on":
        for i, side in enumerate((-1, 1)):
            set_limb(
                kp, "leg", i, side * math.radians(rng.uniform(2, 8)), side * math.radians(rng.uniform(2, 8))
            )
        y1 = max(kp[a, 1] for a in R.ANKLE) - R.STAND_LEVEL[obj] * h + rng.uniform(-0.01, 0.02)
        cx = rng.uniform(-0.05, 0.05)
        box = np.array([cx - w / 2, y1, cx + w / 2, y1 + h])
        behind = True
    elif verb == "look_at":
        c = kp[R.HEAD] + (f * rng.uniform(1.8 * R.HEAD_R, 0.32), rng.uniform(-0.8, 0.8) * R.HEAD_R)
        box = _box(c[0], c[1], w, h)
        if obj != "ball":  # phones, books and cups are held up in front of the face
            reach(kp, "arm", front, (c[0], box[3] - 0.02), down)
    elif verb == "throw":
        arm = front if rng.random() < 0.6 else 1 - front
        side = -1 if arm == 0 else 1
        reach(
            kp,
            "arm",
            arm,
            kp[R.SHOULDER[arm]] + (side * rng.uniform(0.0, 0.12), -rng.uniform(0.2, 0.27)),
            outward,
        )
        wx, wy = kp[R.WRIST[arm]]
        gap = rng.uniform(0.07, 0.15)
        box = _box(wx + rng.uniform(-0.05, 0.05), wy - gap - h / 2, w, h)
    elif verb == "drink_with":
        m = kp[R.HEAD] + (f * 0.75 * R.HEAD_R, 0.4 * R.HEAD_R)
        cy = m[1] + rng.uniform(-0.02, 0.02)
        x_near = m[0] - f * 0.01
        box = (
            np.array([x_near, cy - h / 2, x_near + w, cy + h / 2])
            if f == 1
            else np.array([x_near - w, cy - h / 2, x_near, cy + h / 2])
        )
        reach(kp, "arm", front, (0.5 * (box[0] + box[2]), box[3] - 0.02), down)
    elif verb == "talk_on":
        e = kp[R.HEAD] + (-f * 0.8 * R.HEAD_R, 0.1 * R.HEAD_R)
        box = _box(e[0] - f * 0.02, e[1], w, h)
        reach(kp, "arm", 1 - front, (0.5 * (box[0] + box[2]), box[3] - 0.01), down)
    elif verb == "stand_under":
        arm = front
        side = -1 if arm == 0 else 1
        reach(kp, "arm", arm, (side * rng.uniform(0.02, 0.08), head_top - rng.uniform(0.02, 0.1)), outward)
        wx, wy = kp[R.WRIST[arm]]
        cx = wx + rng.uniform(-0.05, 0.05)
        box = np.array([cx - w / 2, wy + 0.01 - h, cx + w / 2, wy + 0.01])
    elif verb == "no_interaction":
        box = _beside(rng, kp, f, obj, w, h)
        behind = rng.random() < 0.5
    else:
        raise ValueError(f"no pose for verb {verb!r}")
    return kp, box, behind


def _beside(
    rng: np.random.Generator, kp: np.ndarray, facing: int, obj: str, w: float, h: float
) -> np.ndarray:
    """An object box centred inside the person's box that triggers no other rule (``no_interaction``)."""
    person = Person(kp, 1.0, facing)
    pb = person.box()
    verbs = tuple(v for v in R.VERBS if v != "no_interaction")
    box = _box(pb[2] + w / 2, 0.0, w, h)
    for _ in range(30):
        cx = rng.uniform(pb[0], pb[2])
        cy = rng.uniform(pb[1] + 0.2 * (pb[3] - pb[1]), pb[3])
        box = _box(cx, cy, w, h)
        if not R.label_pair(person, pb, obj, box, verbs):
            break
    return box


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _place(
    rng: np.random.Generator,
    local: np.ndarray,
    scale: float,
    w: int,
    h: int,
    taken: list[np.ndarray],
    penalty: Callable[[np.ndarray], float] | None = None,
    tries: int = 8,
):
    """Scale (clipped so the group fits) and offset of a group: the best of a few random draws, scored by
    the largest IoU with ``taken`` boxes plus ``penalty(pixel box)``."""
    gw, gh = local[2] - local[0], local[3] - local[1]
    s = min(scale, 0.95 * w / gw, 0.95 * h / gh)
    best = (math.inf, 0.0, 0.0)
    for _ in range(tries):
        tx = rng.uniform(-local[0] * s, w - local[2] * s)
        ty = rng.uniform(-local[1] * s, h - local[3] * s)
        pix = local * s + np.array([tx, ty, tx, ty])
        score = max((_iou(pix, b) for b in taken), default=0.0)
        if penalty is not None:
            score += penalty(pix)
        if score < best[0]:
            best = (score, tx, ty)
        if score < 0.1:
            break
    return s, np.array(best[1:])


def _finish_box(box: np.ndarray, w: int, h: int) -> np.ndarray:
    """Clip to the image and round to the 2 decimals written to the JSON (labels see the same box)."""
    box = np.clip(box, 0.0, [w, h, w, h])
    return np.round(box, 2)


def sample_scene(
    rng: np.random.Generator,
    cfg: Any,
    classes: list[tuple[str, str]],
    probs: np.ndarray,
    force_class: int | None = None,
) -> Scene:
    """One image's layout. ``cfg``: a ``SynthConfig``; ``classes``/``probs``: the sampled (verb, object)
    interaction classes and their long-tail probabilities; ``force_class``: the first person performs
    ``classes[force_class]`` (used to give every class at least one test instance)."""
    width = int(rng.integers(cfg.image_min, cfg.image_max + 1))
    height = int(rng.integers(cfg.image_min, cfg.image_max + 1))
    scene = Scene(width, height)
    n_people = int(rng.integers(cfg.min_people, cfg.max_people + 1))
    n_objects = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    if force_class is not None:
        n_objects = max(n_objects, 1)
    objects_used = cfg_objects(cfg)
    taken: list[np.ndarray] = []
    groups = []
    for _ in range(n_people):
        facing = 1 if rng.random() < 0.5 else -1
        free_objects = sum(g[2] is not None for g in groups) < n_objects
        forced = force_class is not None and not groups
        if forced or (free_objects and rng.random() < cfg.interact_prob):
            verb, obj = classes[force_class if forced else int(rng.choice(len(classes), p=probs))]
            kp, box, behind = pose_interaction(rng, verb, obj, facing)
            groups.append((kp, facing, (verb, obj, box, behind)))
        else:
            groups.append((base_pose(rng, facing), facing, None))
    for kp, facing, inter in groups:
        local = Person(kp, 1.0, facing).box()
        if inter is not None:
            b = inter[2]
            local = np.array(
                [min(local[0], b[0]), min(local[1], b[1]), max(local[2], b[2]), max(local[3], b[3])]
            )
        hp = rng.uniform(cfg.person_min, cfg.person_max) * height
        s, t = _place(rng, local, hp, width, height, taken)
        taken.append(local * s + np.concatenate([t, t]))
        j = len(scene.people)
        scene.people.append(Person(kp * s + t, float(s), facing))
        if inter is None:
            scene.order.append(("person", j))
            continue
        verb, obj, b, behind = inter
        i = len(scene.objects)
        scene.objects.append(
            SceneObject(obj, _finish_box(b * s + np.concatenate([t, t]), width, height), facing, behind)
        )
        scene.intended.append((j, i, verb))
        scene.order += [("object", i), ("person", j)] if behind else [("person", j), ("object", i)]
    verbs = tuple(cfg_verbs(cfg))
    person_boxes = [p.box() for p in scene.people]
    for _ in range(n_objects - len(scene.objects)):
        name = objects_used[int(rng.integers(len(objects_used)))]
        ref = rng.uniform(cfg.person_min, cfg.person_max) * height
        bw, bh = object_size(rng, name)
        k = min(ref, 0.9 * width / bw, 0.9 * height / bh)

        def interacts(box: np.ndarray, name: str = name) -> float:
            # distractors should mostly not interact: keeps the sampled long tail intact
            return float(
                sum(bool(R.label_pair(p, pb, name, box, verbs)) for p, pb in zip(scene.people, person_boxes))
            )

        s, t = _place(rng, np.array([0.0, 0.0, bw, bh]), k, width, height, taken, interacts, tries=12)
        box = _finish_box(np.array([0.0, 0.0, bw, bh]) * s + np.concatenate([t, t]), width, height)
        taken.append(box)
        behind = rng.random() < 0.6
        i = len(scene.objects)
        scene.objects.append(SceneObject(name, box, 1 if rng.random() < 0.5 else -1, behind))
        scene.order.insert(0, ("object", i)) if behind else scene.order.append(("object", i))
    for j, p in enumerate(scene.people):
        pb = _finish_box(p.box(), width, height)
        scene.person_boxes.append(pb)
        for i, o in enumerate(scene.objects):
            scene.labels += [(j, i, v) for v in R.label_pair(p, pb, o.name, o.box, verbs)]
    return scene
