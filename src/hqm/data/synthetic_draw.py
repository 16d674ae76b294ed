"""Rendering of synthetic HOI scenes: textured backgrounds, stick-figure people and 10 object shapes.

Every shape is drawn to touch all four sides of its annotated box, so the boxes are tight. Colours
are drawn from per-class palettes with per-instance jitter; all randomness comes from the caller's
``numpy.random.Generator`` (deterministic for a seed).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from hqm.data import synthetic_rules as R
from hqm.data.synthetic_rules import Person
from hqm.data.synthetic_scene import Scene, SceneObject

Colour = tuple[int, int, int]

PALETTES: dict[str, list[Colour]] = {
    "ball": [(240, 120, 20), (235, 235, 235), (200, 30, 40)],
    "cup": [(250, 250, 240), (60, 120, 200), (200, 60, 60)],
    "phone": [(25, 25, 30), (60, 60, 70)],
    "book": [(150, 40, 40), (40, 90, 150), (40, 130, 60), (200, 160, 40)],
    "bag": [(120, 70, 30), (30, 30, 30), (150, 30, 90)],
    "umbrella": [(220, 40, 40), (40, 60, 200), (240, 200, 30), (30, 160, 80)],
    "bicycle": [(200, 30, 30), (30, 80, 200), (20, 20, 20), (30, 150, 60)],
    "horse": [(120, 75, 40), (70, 45, 25), (200, 190, 170)],
    "chair": [(140, 95, 50), (90, 90, 95), (170, 40, 40)],
    "board": [(230, 200, 40), (40, 180, 200), (220, 90, 30)],
}
SKIN: list[Colour] = [(255, 220, 185), (230, 180, 140), (190, 140, 100), (140, 95, 60), (95, 65, 40)]


def _jitter(rng: np.random.Generator, c: Colour, amount: int = 20) -> Colour:
    return tuple(int(v) for v in np.clip(np.asarray(c) + rng.integers(-amount, amount + 1, 3), 0, 255))


def _pick(rng: np.random.Generator, options: list[Colour], amount: int = 20) -> Colour:
    return _jitter(rng, options[int(rng.integers(len(options)))], amount)


def _darker(c: Colour, k: float = 0.55) -> Colour:
    return tuple(int(v * k) for v in c)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear interpolation weights from a coarse grid to ``n_out`` samples."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] = 1 - frac
    m[np.arange(n_out), lo + 1] = frac
    return m


def background(rng: np.random.Generator, w: int, h: int, noise: float, clutter: int) -> Image.Image:
    """Sky/ground gradient + low-frequency colour blotches + pixel noise + a few low-contrast strokes."""
    sky, ground = rng.uniform(60, 230, 3), rng.uniform(40, 200, 3)
    horizon = rng.uniform(0.45, 0.85) * h
    y = np.arange(h, dtype=np.float64)[:, None]
    t = np.clip(y / max(horizon, 1.0), 0, 1)
    base = np.where(y[..., None] < horizon, sky * (0.75 + 0.25 * t[..., None]), ground[None, None, :])
    base = np.broadcast_to(base, (h, 1, 3)) * np.ones((1, w, 1))
    coarse = rng.normal(0.0, 18.0, (5, 5, 3))
    rows = np.tensordot(_interp_matrix(h, 5), coarse, axes=(1, 0))  # (h, 5, 3)
    blotches = np.tensordot(rows, _interp_matrix(w, 5), axes=(1, 1)).transpose(0, 2, 1)  # (h, w, 3)
    img = base + blotches + rng.normal(0.0, noise, (h, w, 3))
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(out)
    for _ in range(int(rng.integers(0, clutter + 1))):
        c = _jitter(rng, tuple(int(v) for v in (sky if rng.random() < 0.5 else ground)), 45)
        x0, x1 = sorted(rng.uniform(0, w, 2))
        y0, y1 = sorted(rng.uniform(0, h, 2))
        kind = rng.integers(3)
        if kind == 0:
            d.line([(x0, y0), (x1, y1)], fill=c, width=int(rng.integers(1, 4)))
        elif kind == 1:
            d.rectangle([x0, y0, x0 + (x1 - x0) * 0.4, y0 + (y1 - y0) * 0.4], fill=c)
        else:
            d.ellipse([x0, y0, x0 + (x1 - x0) * 0.3 + 1, y0 + (y1 - y0) * 0.3 + 1], outline=c, width=1)
    return out


def draw_person(d: ImageDraw.ImageDraw, p: Person, rng: np.random.Generator) -> None:
    """Back arm, legs, torso, head (hair, eye and mouth on the facing side), front arm."""
    u, f, kp = p.height, p.facing, p.kp
    skin = _pick(rng, SKIN, 10)
    shirt = tuple(int(v) for v in rng.integers(30, 256, 3))
    pants = tuple(int(v) for v in rng.integers(10, 160, 3))
    width = {k: max(1, int(round(v * u))) for k, v in R.WIDTHS.items()}
    pts = lambda *idx: [tuple(kp[i]) for i in idx]  # noqa: E731
    front = 1 if f == 1 else 0

    def arm(i: int) -> None:
        d.line(pts(R.SHOULDER[i], R.ELBOW[i]), fill=shirt, width=width["arm"], joint="curve")
        d.line(pts(R.ELBOW[i], R.WRIST[i]), fill=skin, width=width["arm"])
        r = 0.025 * u
        wx, wy = kp[R.WRIST[i]]
        d.ellipse([wx - r, wy - r, wx + r, wy + r], fill=skin)

    arm(1 - front)
    for i in (0, 1):
        d.line(pts(R.HIP[i], R.KNEE[i], R.ANKLE[i]), fill=pants, width=width["leg"], joint="curve")
        ax, ay = kp[R.ANKLE[i]]
        d.line([(ax, ay), (ax + f * R.WIDTHS["foot"] * u, ay)], fill=(30, 25, 20), width=width["leg"])
    sx = R.SHOULDER_X * u
    (nx, ny), (px, py) = kp[R.NECK], kp[R.PELVIS]
    shoulder_y = kp[R.SHOULDER[0], 1]
    d.polygon(
        [(nx - sx, shoulder_y), (nx + sx, shoulder_y), (px + 0.07 * u, py), (px - 0.07 * u, py)],
        fill=shirt,
    )
    d.line([(nx, ny - 0.02 * u), (nx, shoulder_y)], fill=skin, width=width["arm"])
    hx, hy = kp[R.HEAD]
    r = R.HEAD_R * u
    d.ellipse([hx - r, hy - r, hx + r, hy + r], fill=skin)
    hair = _pick(rng, [(20, 15, 10), (90, 60, 30), (200, 170, 90), (120, 120, 120)], 10)
    d.chord([hx - r, hy - r, hx + r, hy + r], 180 if f == 1 else 200, 340 if f == 1 else 360, fill=hair)
    e = max(0.6, 0.12 * r)
    ex, ey = hx + f * 0.45 * r, hy - 0.1 * r
    d.ellipse([ex - e, ey - e, ex + e, ey + e], fill=(10, 10, 10))
    mx, my = p.mouth()
    d.line([(mx - f * 0.3 * r, my), (mx, my)], fill=(120, 30, 30), width=1)
    arm(front)


def draw_object(d: ImageDraw.ImageDraw, o: SceneObject, rng: np.random.Generator) -> None:
    """Draw ``o`` so that it fills its box (its ``facing`` mirrors asymmetric shapes)."""
    x1, y1, x2, y2 = (float(v) for v in o.box)
    w, h = x2 - x1, y2 - y1
    c = _pick(rng, PALETTES[o.name])
    dark = _darker(c)
    X = (lambda t: x1 + t * w) if o.facing == 1 else (lambda t: x2 - t * w)  # noqa: E731
    Y = lambda t: y1 + t * h  # noqa: E731
    lw = lambda k: max(1, int(round(k * min(w, h))))  # noqa: E731

    def rect(ta: float, tb: float, ya: float, yb: float, **kw) -> None:
        xa, xb = sorted((X(ta), X(tb)))
        d.rectangle([xa, Y(ya), xb, Y(yb)], **kw)

    if o.name == "ball":
        d.ellipse([x1, y1, x2, y2], fill=c, outline=dark)
        d.arc([x1 + 0.2 * w, y1, x2 - 0.2 * w, y2], 100, 260, fill=dark, width=lw(0.06))
    elif o.name == "cup":
        a, b = X(0.0), X(0.72)
        d.polygon([(a, y1), (b, y1), (X(0.64), y2), (X(0.08), y2)], fill=c, outline=dark)
        xa, xb = sorted((X(0.6), X(1.0)))
        d.ellipse([xa, Y(0.22), xb, Y(0.7)], outline=c, width=lw(0.12))
    elif o.name == "phone":
        d.rounded_rectangle([x1, y1, x2, y2], radius=0.2 * w, fill=c)
        d.rectangle(
            [x1 + 0.15 * w, y1 + 0.12 * h, x2 - 0.15 * w, y2 - 0.18 * h], fill=_pick(rng, [(90, 170, 230)])
        )
    elif o.name == "book":
        d.rectangle([x1, y1, x2, y2], fill=c)
        rect(0.0, 0.15, 0.0, 1.0, fill=dark)
        rect(0.85, 0.97, 0.06, 0.94, fill=(245, 245, 235))
    elif o.name == "bag":
        d.rounded_rectangle([x1, Y(0.35), x2, y2], radius=0.12 * w, fill=c)
        d.arc([x1 + 0.2 * w, y1, x2 - 0.2 * w, Y(0.7)], 180, 360, fill=dark, width=lw(0.08))
    elif o.name == "umbrella":
        other = _pick(rng, [(245, 245, 245), (30, 30, 30)])
        for k in range(6):
            d.pieslice([x1, y1, x2, Y(1.3)], 180 + 30 * k, 210 + 30 * k, fill=c if k % 2 == 0 else other)
        cx = 0.5 * (x1 + x2)
        d.line([(cx, Y(0.6)), (cx, Y(0.9))], fill=(40, 40, 40), width=lw(0.03))
        d.arc([cx - 0.08 * h, Y(0.8), cx + 0.08 * h, y2], 0, 180, fill=(40, 40, 40), width=lw(0.03))
    elif o.name == "bicycle":
        dia = 0.7 * h
        tw = dia / w
        for t0 in (0.0, 1.0 - tw):
            xa, xb = sorted((X(t0), X(t0 + tw)))
            d.ellipse([xa, y2 - dia, xb, y2], outline=(30, 30, 30), width=lw(0.05))
        hub_y = y2 - dia / 2
        rear, front, crank = (X(tw / 2), hub_y), (X(1 - tw / 2), hub_y), (X(0.45), hub_y)
        seat, bar = (X(0.36), Y(0.1)), (X(0.78), Y(0.06))
        d.line([rear, seat, crank, rear], fill=c, width=lw(0.05))
        d.line([seat, bar, crank], fill=c, width=lw(0.05))
        d.line([bar, front], fill=c, width=lw(0.05))
        d.line(
            [(X(0.28), y1 + lw(0.05) / 2), (X(0.44), y1 + lw(0.05) / 2)], fill=(20, 20, 20), width=lw(0.06)
        )
        d.line([bar, (X(0.74), y1)], fill=(20, 20, 20), width=lw(0.04))
    elif o.name == "horse":
        for t in (0.22, 0.32, 0.66, 0.76):
            d.line([(X(t), Y(0.55)), (X(t), y2)], fill=dark, width=lw(0.07))
        xa, xb = sorted((X(0.12), X(0.84)))
        d.ellipse([xa, Y(0.3), xb, Y(0.64)], fill=c)
        d.polygon([(X(0.68), Y(0.36)), (X(0.84), Y(0.06)), (X(0.93), Y(0.14)), (X(0.8), Y(0.45))], fill=c)
        xa, xb = sorted((X(0.8), X(1.0)))
        d.ellipse([xa, y1, xb, Y(0.2)], fill=c)
        d.line([(X(0.7), Y(0.34)), (X(0.84), Y(0.05))], fill=dark, width=lw(0.05))
        d.line([(X(0.14), Y(0.38)), (X(0.0), Y(0.72))], fill=dark, width=lw(0.05))
    elif o.name == "chair":
        rect(0.0, 0.14, 0.0, 0.5, fill=c)
        rect(0.0, 1.0, 0.42, 0.52, fill=c)
        for t in (0.07, 0.93):
            d.line([(X(t), Y(0.5)), (X(t), y2)], fill=dark, width=lw(0.07))
    elif o.name == "board":
        d.rounded_rectangle([x1, y1, x2, Y(0.65)], radius=0.3 * h, fill=c)
        for t in (0.12, 0.78):
            xa, xb = sorted((X(t), X(t + 0.1)))
            d.ellipse([xa, Y(0.45), xb, y2], fill=(235, 235, 235))
    else:
        raise ValueError(f"unknown synthetic object {o.name!r}")


def render(scene: Scene, rng: np.random.Generator, noise: float, clutter: int) -> Image.Image:
    """The RGB image of ``scene`` (people and objects in ``scene.order``)."""
    img = background(rng, scene.width, scene.height, noise, clutter)
    d = ImageDraw.Draw(img)
    for kind, i in scene.order:
        if kind == "person":
            draw_person(d, scene.people[i], rng)
        else:
            draw_object(d, scene.objects[i], rng)
    return img
