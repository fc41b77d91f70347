"""The parts of an object and the parametric object classes of the synthetic dataset.

Each class is a builder ``f(rng, parts)`` that appends the primitive parts of one random instance, in
object coordinates (:mod:`sbir.data.datasets.synthetic.geometry`); :data:`CLASS_NAMES` fixes the order of
the classes and :data:`UNSEEN_CLASSES` the unseen classes of the ``synthetic`` split.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sbir.data.datasets.synthetic.geometry import (
    TAU,
    _bezier,
    _circle,
    _ellipse,
    _lens,
    _offset_line,
    _pts,
    _rect,
    _smooth_closed,
)


@dataclass
class _Part:
    """One primitive of an object, drawn in z-order.

    ``fill`` parts are closed polygons (filled in photos, outlined in sketches, and hiding the sketch
    lines of earlier parts and of the parts of the same ``group``); ``line`` parts are thick polylines
    (a bar in photos, one stroke in sketches). ``sketch`` replaces the default sketch strokes by a list
    of ``(points, closed)`` (an empty list: not drawn in sketches).
    """

    kind: str
    pts: np.ndarray
    role: int
    width: float = 0.0
    closed: bool = False
    group: int = -1
    sketch: list | None = None


class _Parts:
    def __init__(self):
        self.parts: list[_Part] = []

    def fill(self, pts, role, group=-1, sketch=None):
        self.parts.append(_Part("fill", np.asarray(pts, dtype=float), role, group=group, sketch=sketch))

    def line(self, pts, role, width, closed=False, sketch=None):
        self.parts.append(_Part("line", np.asarray(pts, dtype=float), role, width=width, closed=closed,
                                sketch=sketch))

    def ring(self, cx, cy, rx, ry, role, width, double=True):
        pts = _ellipse(cx, cy, rx, ry)
        sketch = None
        if double:
            sketch = [(_ellipse(cx, cy, rx + width / 2, ry + width / 2), True),
                      (_ellipse(cx, cy, max(rx - width / 2, 1e-3), max(ry - width / 2, 1e-3)), True)]
        self.line(pts, role, width, closed=True, sketch=sketch)

    def bar(self, pts, role, width):
        """A thick bar along ``pts``: filled in photos, its two long edges in sketches."""
        pts = np.asarray(pts, dtype=float)
        self.line(pts, role, width, sketch=[(_offset_line(pts, width / 2), False),
                                            (_offset_line(pts, -width / 2), False)])


def _house(r, P):
    w, h = r.uniform(1.0, 1.7), r.uniform(0.6, 1.1)
    o, rh, ax = r.uniform(0.0, 0.15) * w, r.uniform(0.35, 0.9), r.uniform(-0.2, 0.2) * w
    left, right = -w / 2 - o, w / 2 + o

    def roof_y(x):
        return -rh * (x - left) / (ax - left) if x < ax else -rh * (right - x) / (right - ax)

    if r.random() < 0.5:
        cx = r.uniform(0.15, 0.35) * w * r.choice([-1, 1])
        cw = r.uniform(0.08, 0.14) * w
        top = roof_y(cx) - r.uniform(0.12, 0.3)
        P.fill(_rect(cx - cw / 2, top, cx + cw / 2, roof_y(cx) + 0.15), 3)
    P.fill(_rect(-w / 2, 0, w / 2, h), 0)
    P.fill(_pts((left, 0), (ax, -rh), (right, 0)), 1)
    dw, dh = r.uniform(0.16, 0.28) * w, r.uniform(0.4, 0.75) * h
    dx = r.uniform(-w / 2 + dw / 2 + 0.05, w / 2 - dw / 2 - 0.05)
    P.fill(_rect(dx - dw / 2, h - dh, dx + dw / 2, h), 2)
    if r.random() < 0.5:
        P.fill(_circle(dx + dw * 0.3, h - dh / 2, 0.025), 4)
    ws = r.uniform(0.15, 0.24) * min(w, 1.5 * h)
    boxes = [(dx - dw / 2, dx + dw / 2)]
    bars = r.random() < 0.5
    for _ in range(int(r.integers(0, 4))):
        x = r.uniform(-w / 2 + 0.05 + ws / 2, w / 2 - 0.05 - ws / 2)
        if any(x + ws / 2 + 0.04 > a and x - ws / 2 - 0.04 < b for a, b in boxes):
            continue
        boxes.append((x - ws / 2, x + ws / 2))
        y = r.uniform(0.12, 0.3) * h
        P.fill(_rect(x - ws / 2, y, x + ws / 2, y + ws), 3)
        if bars:
            P.line(_pts((x, y), (x, y + ws)), 4, 0.02)
            P.line(_pts((x - ws / 2, y + ws / 2), (x + ws / 2, y + ws / 2)), 4, 0.02)


def _car(r, P):
    L, bh = 2.0, r.uniform(0.35, 0.55)
    ch = r.uniform(0.28, 0.5)
    a, b = r.uniform(-0.75, -0.35), r.uniform(0.2, 0.6)
    slant_back, slant_front = r.uniform(0.05, 0.3), r.uniform(0.15, 0.45)
    cabin = _pts((a, 0.02), (a + slant_back, -ch), (b - slant_front * 0.5, -ch), (b + slant_front, 0.02))
    P.fill(cabin, 0, group=0)
    nose = r.uniform(0.05, 0.2)
    body = _pts((-L / 2, 0), (L / 2 - nose, 0), (L / 2, nose), (L / 2, bh), (-L / 2, bh))
    P.fill(body, 0, group=0)
    inset = 0.06
    win = _pts((a + inset + slant_back * 0.8, -ch + inset), (b - slant_front * 0.5 - inset * 0.3, -ch + inset),
               (b + slant_front - inset * 1.6, -0.02), (a + inset * 1.2, -0.02))
    if r.random() < 0.55:
        mid = (win[0, 0] + win[1, 0]) / 2
        mid_low = (win[2, 0] + win[3, 0]) / 2
        P.fill(_pts(win[0], (mid - 0.03, win[0, 1]), (mid_low - 0.03, -0.02), win[3]), 2)
        P.fill(_pts((mid + 0.03, win[1, 1]), win[1], win[2], (mid_low + 0.03, -0.02)), 2)
    else:
        P.fill(win, 2)
    wr = r.uniform(0.2, 0.3)
    for x in (-L / 2 + r.uniform(0.3, 0.45), L / 2 - r.uniform(0.3, 0.45)):
        P.fill(_circle(x, bh, wr), 1)
        P.fill(_circle(x, bh, wr * r.uniform(0.35, 0.55)), 3)
    if r.random() < 0.6:
        P.fill(_rect(L / 2 - 0.08, nose + 0.04, L / 2, nose + 0.12), 4)


def _pine(r, P):
    tw, th = r.uniform(0.12, 0.25), r.uniform(0.25, 0.5)
    P.fill(_rect(-tw / 2, -0.05, tw / 2, th), 0)
    n = int(r.integers(2, 5))
    w, h = r.uniform(0.7, 1.0), r.uniform(0.5, 0.8)
    y = 0.0
    for _ in range(n):
        P.fill(_pts((-w, y), (0, y - h), (w, y)), 1, group=1)
        y -= h * r.uniform(0.4, 0.6)
        w *= r.uniform(0.7, 0.85)
        h *= r.uniform(0.8, 0.95)
    if r.random() < 0.4:
        P.fill(_pts(*[(0.12 * math.cos(a), y - h * 0.55 + 0.12 * math.sin(a)) for a in np.linspace(0, TAU, 10,
                                                                                                    endpoint=False)]
                    ), 2)


def _tree(r, P):
    if r.random() < 0.35:
        return _pine(r, P)
    tw, th = r.uniform(0.14, 0.3), r.uniform(0.6, 1.1)
    P.fill(_pts((-tw / 2, 0), (tw / 2, 0), (tw / 2 * 1.2, th), (-tw / 2 * 1.2, th)), 0)
    for _ in range(int(r.integers(0, 3))):
        side = r.choice([-1, 1])
        y0 = r.uniform(0.0, 0.4) * th
        P.line(_pts((0, y0), (side * r.uniform(0.25, 0.45), y0 - r.uniform(0.15, 0.35))), 0, tw * 0.35)
    R = r.uniform(0.55, 0.85)
    n = int(r.integers(1, 6))
    if n == 1:
        P.fill(_ellipse(0, -R * 0.6, R, R * r.uniform(0.8, 1.15)), 1, group=1)
    else:
        for i in range(n):
            ang = TAU * i / n + r.uniform(-0.3, 0.3)
            rr = R * r.uniform(0.45, 0.65)
            P.fill(_circle(math.cos(ang) * R * 0.45, -R * 0.6 + math.sin(ang) * R * 0.4, rr), 1, group=1)
        P.fill(_circle(0, -R * 0.6, R * 0.5), 1, group=1)
    for _ in range(int(r.integers(0, 4))):
        P.fill(_circle(r.uniform(-0.5, 0.5) * R, -R * 0.6 + r.uniform(-0.45, 0.45) * R, 0.06), 2)


def _umbrella_closed(r, P):
    w, ln = r.uniform(0.14, 0.24), r.uniform(1.3, 1.8)
    spindle = np.concatenate([_bezier((0, -ln), (w * 1.4, -ln * 0.3), (w * 0.3, 0.0), n=14),
                              _bezier((-w * 0.3, 0.0), (-w * 1.4, -ln * 0.3), (0, -ln), n=14)[:-1]])
    P.line(_pts((0, -ln), (0, -ln - r.uniform(0.1, 0.2))), 2, 0.04)
    P.fill(spindle, 0)
    for k in (-0.5, 0.4):
        P.line(_bezier((0, -ln), (k * w * 1.2, -ln * 0.3), (k * w * 0.3, 0.0), n=10), 1, 0.02)
    yb = -ln * r.uniform(0.3, 0.45)
    P.fill(_rect(-w * 0.9, yb - 0.05, w * 0.9, yb + 0.05), 1)
    sl = r.uniform(0.35, 0.6)
    if r.random() < 0.6:
        hook = r.uniform(0.1, 0.18) * r.choice([-1, 1])
        shaft = np.concatenate([_pts((0, 0), (0, sl)),
                                _ellipse(hook, sl, abs(hook), abs(hook), a0=0 if hook < 0 else math.pi,
                                         a1=math.pi if hook < 0 else 0, n=14)])
        P.bar(shaft, 2, 0.06)
    else:
        P.bar(_pts((0, 0), (0, sl)), 2, 0.06)
        P.fill(_ellipse(0, sl + 0.08, 0.08, 0.12), 2)


def _umbrella(r, P):
    if r.random() < 0.3:
        return _umbrella_closed(r, P)
    R, H = r.uniform(0.8, 1.1), r.uniform(0.45, 0.8)
    n = int(r.integers(4, 8))
    xs = np.linspace(-R, R, n + 1)
    top = _ellipse(0, 0, R, H, a0=math.pi, a1=TAU, n=48)
    sag = r.uniform(0.06, 0.16)
    bottom = []
    for i in range(n, 0, -1):
        seg = _bezier((xs[i], 0), ((xs[i] + xs[i - 1]) / 2, -sag * 2), (xs[i - 1], 0), n=10)
        bottom.append(seg[1:])
    P.fill(np.concatenate([top] + bottom), 0)
    for x in xs[1:-1]:
        P.line(_bezier((0, -H), (x * 0.55, -H * 0.85), (x, -0.01), n=12), 1, 0.02)
    P.line(_pts((0, -H), (0, -H - r.uniform(0.08, 0.18))), 2, 0.04)
    sl = r.uniform(0.9, 1.4)
    hook = r.uniform(0.1, 0.18) * r.choice([-1, 1])
    shaft = np.concatenate([_pts((0, -H * 0.3), (0, sl)),
                            _ellipse(hook, sl, abs(hook), abs(hook), a0=0 if hook < 0 else math.pi,
                                     a1=math.pi if hook < 0 else 0, n=14)])
    P.bar(shaft, 2, 0.05)


def _fish(r, P):
    ry = r.uniform(0.3, 0.6)
    tail = r.uniform(0.3, 0.55)
    if r.random() < 0.5:
        P.fill(_pts((-0.85, 0), (-1.0 - tail, -tail * 0.9), (-0.95 - tail * 0.6, 0), (-1.0 - tail, tail * 0.9)), 1)
    else:
        P.fill(_pts((-0.85, 0), (-1.0 - tail, -tail * 0.8), (-1.0 - tail, tail * 0.8)), 1)
    fx = r.uniform(-0.4, 0.2)
    P.fill(_pts((fx - 0.3, -ry * 0.8), (fx + r.uniform(-0.15, 0.1), -ry - r.uniform(0.2, 0.4)),
                (fx + 0.3, -ry * 0.8)), 1)
    P.fill(_ellipse(0, 0, 1.0, ry), 0)
    P.line(_ellipse(0.45, 0, 0.18, ry * 0.7, a0=-1.1, a1=1.1, n=12), 3, 0.03)
    for i in range(int(r.integers(0, 4))):
        x = -0.1 - 0.22 * i
        h = ry * math.sqrt(max(0.0, 1 - x * x)) * 0.9
        P.line(_bezier((x, -h), (x - 0.08, 0), (x, h)), 2, r.uniform(0.04, 0.09))
    P.fill(_circle(0.7, -ry * 0.25, 0.07), 3)
    if r.random() < 0.4:
        P.fill(_lens((0.1, ry * 0.35), (-0.25, ry * 0.75), 0.15), 1)


def _sun(r, P):
    R = r.uniform(0.4, 0.55)
    n = int(r.integers(7, 15))
    ln = r.uniform(0.3, 0.6)
    phase = r.uniform(0, TAU)
    tri = r.random() < 0.5
    for i in range(n):
        a = phase + TAU * i / n
        c, s = math.cos(a), math.sin(a)
        if tri:
            da = r.uniform(0.12, 0.2)
            P.fill(_pts((math.cos(a - da) * R * 0.9, math.sin(a - da) * R * 0.9), ((R + ln) * c, (R + ln) * s),
                        (math.cos(a + da) * R * 0.9, math.sin(a + da) * R * 0.9)), 1)
        else:
            P.line(_pts(((R + 0.08) * c, (R + 0.08) * s), ((R + ln) * c, (R + ln) * s)), 1, 0.06)
    P.fill(_circle(0, 0, R), 0)
    if r.random() < 0.4:
        for x in (-R * 0.35, R * 0.35):
            P.fill(_circle(x, -R * 0.2, R * 0.08), 2)
        P.line(_ellipse(0, R * 0.05, R * 0.45, R * 0.4, a0=0.5, a1=math.pi - 0.5, n=12), 2, 0.03)


def _cup(r, P):
    w1, h = r.uniform(0.8, 1.1), r.uniform(0.75, 1.2)
    w2 = w1 * r.uniform(0.65, 0.95)
    side = r.choice([-1, 1])
    hr = r.uniform(0.22, 0.35)
    P.ring(side * (w1 + w2) / 4 + side * hr * 0.8, h * 0.45, hr, hr * r.uniform(1.0, 1.4), 0, 0.08)
    if r.random() < 0.5:
        P.fill(_ellipse(0, h, w1 * 0.85, 0.12), 2)
    bottom = _ellipse(0, h - 0.06, w2 / 2, 0.06, a0=0, a1=math.pi, n=12)
    P.fill(np.concatenate([_pts((-w1 / 2, 0), (w1 / 2, 0)), bottom]), 0)
    P.fill(_ellipse(0, 0, w1 / 2, r.uniform(0.06, 0.12)), 1)
    for i in range(int(r.integers(0, 4))):
        x = (i - 1) * w1 * 0.25
        P.line(_bezier((x, -0.12), (x + 0.15, -0.3), (x, -0.5)), 3, 0.025)
    if r.random() < 0.4:
        P.fill(_rect(-w1 * 0.2, h * 0.3, w1 * 0.2, h * 0.55), 3)


def _bicycle(r, P):
    R = r.uniform(0.45, 0.6)
    d = R * r.uniform(2.2, 2.8)
    rear, front = np.array([-d / 2, 0.0]), np.array([d / 2, 0.0])
    spokes = int(r.choice([0, 4, 6, 8]))
    for c in (rear, front):
        P.ring(c[0], c[1], R, R, 0, 0.07, double=r.random() < 0.5)
        for k in range(spokes):
            a = TAU * k / spokes
            P.line(_pts(c, c + R * np.array([math.cos(a), math.sin(a)])), 3, 0.015)
    crank = np.array([r.uniform(-0.1, 0.15), r.uniform(0.0, 0.15)])
    seat = np.array([crank[0] - r.uniform(0.15, 0.35), -R * r.uniform(0.9, 1.3)])
    head = np.array([front[0] - r.uniform(0.25, 0.4), seat[1] + r.uniform(-0.05, 0.1)])
    for a, b in ((rear, crank), (crank, seat), (seat, rear), (seat, head), (crank, head), (head, front)):
        P.line(_pts(a, b), 1, 0.06)
    P.fill(_ellipse(seat[0], seat[1] - 0.08, 0.18, 0.05), 2)
    P.line(_pts(seat, (seat[0], seat[1] - 0.06)), 1, 0.05)
    bar = head + np.array([r.uniform(-0.05, 0.1), -r.uniform(0.15, 0.3)])
    P.line(_pts(head, bar, bar + np.array([r.uniform(-0.25, 0.05), 0.0])), 2, 0.05)
    P.fill(_circle(crank[0], crank[1], 0.1), 2)


def _lamp(r, P):
    bw, bh = r.uniform(0.5, 0.9), r.uniform(0.08, 0.2)
    P.fill(_ellipse(0, 0, bw / 2, bh), 0)
    ph = r.uniform(0.8, 1.6)
    if r.random() < 0.5:
        top = np.array([0.0, -ph])
        P.line(_pts((0, 0), top), 0, 0.07)
    else:
        elbow = np.array([r.uniform(-0.5, -0.2), -ph * 0.55])
        top = np.array([r.uniform(0.0, 0.3), -ph])
        P.line(_pts((0, 0), elbow, top), 0, 0.07)
        P.fill(_circle(elbow[0], elbow[1], 0.07), 0)
    sw1, sw2, sh = r.uniform(0.25, 0.45), r.uniform(0.7, 1.1), r.uniform(0.45, 0.7)
    y0 = top[1] - sh * 0.55
    if r.random() < 0.5:
        P.fill(_circle(top[0], y0 + sh + 0.05, 0.12), 2)
    P.fill(_pts((top[0] - sw1 / 2, y0), (top[0] + sw1 / 2, y0), (top[0] + sw2 / 2, y0 + sh),
                (top[0] - sw2 / 2, y0 + sh)), 1)
    if r.random() < 0.5:
        cx = top[0] + sw2 * 0.3
        P.line(_pts((cx, y0 + sh), (cx, y0 + sh + r.uniform(0.2, 0.4))), 3, 0.015)


def _flower(r, P):
    cr = r.uniform(0.13, 0.22)
    pl, pw = r.uniform(0.3, 0.5), r.uniform(0.15, 0.3)
    n = int(r.integers(5, 11))
    sl = r.uniform(0.9, 1.5)
    bend = r.uniform(-0.35, 0.35)
    stem = _bezier((0, 0), (bend, sl * 0.5), (bend * 0.3, sl))
    P.line(stem, 2, 0.06)
    for i in range(int(r.integers(1, 3))):
        t = r.uniform(0.35, 0.8)
        p = stem[int(t * (len(stem) - 1))]
        side = 1 if i % 2 == 0 else -1
        P.fill(_lens(p, p + np.array([side * r.uniform(0.3, 0.45), -r.uniform(0.05, 0.25)]), 0.16), 3)
    phase = r.uniform(0, TAU)
    round_petals = r.random() < 0.5
    for i in range(n):
        a = phase + TAU * i / n
        c, s = math.cos(a), math.sin(a)
        if round_petals:
            P.fill(_ellipse(c * (cr + pl * 0.45), s * (cr + pl * 0.45), pl * 0.55, pw * 0.5, rot=a), 0)
        else:
            P.fill(_lens((c * cr * 0.6, s * cr * 0.6), (c * (cr + pl), s * (cr + pl)), pw), 0)
    P.fill(_circle(0, 0, cr), 1)


def _boat(r, P):
    L, hh = r.uniform(1.6, 2.2), r.uniform(0.25, 0.45)
    k = r.uniform(0.15, 0.35) * L
    bow = _bezier((L / 2, 0), (L / 2 - k * 0.2, hh * 0.9), (L / 2 - k, hh), n=10)
    hull = np.concatenate([_pts((-L / 2, 0)), bow, _pts((-L / 2 + k * 0.4, hh))])
    mx = r.uniform(-0.15, 0.15) * L
    mh = r.uniform(1.0, 1.6)
    P.line(_pts((mx, 0), (mx, -mh)), 2, 0.05)
    P.fill(_pts((mx + 0.04, -mh * 0.95), (mx + 0.04, -0.12), (mx + r.uniform(0.4, 0.48) * L, -0.12)), 1)
    if r.random() < 0.6:
        P.fill(_pts((mx - 0.04, -mh * r.uniform(0.6, 0.85)), (mx - 0.04, -0.12),
                    (mx - r.uniform(0.25, 0.4) * L, -0.12)), 1)
    if r.random() < 0.5:
        P.fill(_pts((mx, -mh), (mx - r.uniform(0.2, 0.3), -mh + 0.06), (mx, -mh + 0.12)), 3)
    P.fill(hull, 0)
    if r.random() < 0.5:
        for j in range(int(r.integers(2, 5))):
            P.fill(_circle(-L / 2 + k * 0.5 + j * 0.22, hh * 0.45, 0.05), 3)
    if r.random() < 0.5:
        x = np.linspace(-L / 2 - 0.2, L / 2 + 0.2, 40)
        P.line(np.stack([x, hh + 0.1 + 0.04 * np.sin(x * r.uniform(8, 14))], axis=1), 3, 0.025)


def _key_flat(r, P):
    hw, hh = r.uniform(0.35, 0.55), r.uniform(0.4, 0.6)
    head = _smooth_closed([(-hw, 0), (-hw * 0.9, -hh * 0.9), (0, -hh), (hw * 0.8, -hh * 0.8), (hw, 0),
                           (hw * 0.8, hh * 0.8), (0, hh), (-hw * 0.9, hh * 0.9)], n=6)
    bl, bt = r.uniform(1.0, 1.5), r.uniform(0.2, 0.3)
    x0 = hw * 0.9
    n = int(r.integers(3, 7))
    xs = np.linspace(x0 + 0.1, x0 + bl - 0.15, n)
    cuts = [(x, -bt / 2 - r.uniform(0.0, 0.12)) for x in xs]
    blade = _pts((x0, -bt / 2 - 0.12), *cuts, (x0 + bl, -bt / 2 + 0.05), (x0 + bl, bt / 2), (x0, bt / 2))
    P.fill(blade, 0, group=0)
    P.fill(head, 1, group=0)
    P.fill(_circle(-hw * 0.45, 0, r.uniform(0.08, 0.13)), 2)
    if r.random() < 0.5:
        P.line(_pts((x0 + 0.05, 0.02), (x0 + bl - 0.1, 0.02)), 2, 0.02)


def _key(r, P):
    if r.random() < 0.4:
        return _key_flat(r, P)
    R = r.uniform(0.28, 0.42)
    sl, st = r.uniform(1.2, 1.8), r.uniform(0.1, 0.16)
    P.fill(_rect(R * 0.8, -st / 2, R + sl, st / 2), 0)
    nt = int(r.integers(2, 5))
    x = R + sl - 0.05
    for _ in range(nt):
        tw = r.uniform(0.08, 0.16)
        P.fill(_rect(x - tw, st / 2 - 0.01, x, st / 2 + r.uniform(0.08, 0.25)), 0, group=0)
        x -= tw + r.uniform(0.0, 0.08)
    if r.random() < 0.5:
        P.fill(_rect(R * 1.2, -st, R * 1.2 + 0.07, st), 0)
    if r.random() < 0.5:
        P.ring(0, 0, R, R, 0, R * 0.5)
    else:
        P.ring(0, 0, R, R * 0.75, 0, R * 0.45)
    if r.random() < 0.3:
        P.ring(-R * 1.8, 0, R * 0.9, R * 0.9, 1, 0.04, double=False)


def _rocket(r, P):
    bw, bh = r.uniform(0.35, 0.5), r.uniform(1.1, 1.7)
    if r.random() < 0.5:
        P.fill(_pts((-bw * 0.3, bh), (0, bh + r.uniform(0.3, 0.6)), (bw * 0.3, bh), (0.1, bh + 0.2),
                    (-0.1, bh + 0.25)), 3)
    nf = int(r.choice([2, 3]))
    fh, fw = r.uniform(0.3, 0.55), r.uniform(0.2, 0.35)
    for side in (-1, 1):
        P.fill(_pts((side * bw / 2, bh - fh * 1.4), (side * (bw / 2 + fw), bh + 0.08), (side * bw / 2, bh)), 1)
    P.fill(_rect(-bw / 2, 0, bw / 2, bh), 0)
    if nf == 3:
        P.fill(_pts((-0.035, bh - fh), (0.035, bh - fh), (0.035, bh + 0.08), (-0.035, bh + 0.08)), 1)
    nh = r.uniform(0.35, 0.7)
    if r.random() < 0.5:
        P.fill(_pts((-bw / 2, 0), (0, -nh), (bw / 2, 0)), 1)
    else:
        P.fill(np.concatenate([_bezier((-bw / 2, 0), (-bw / 2, -nh * 0.7), (0, -nh)),
                               _bezier((0, -nh), (bw / 2, -nh * 0.7), (bw / 2, 0))[1:]]), 1)
    for i in range(int(r.integers(1, 4))):
        P.fill(_circle(0, bh * (0.25 + 0.25 * i), bw * 0.22), 2)


def _bottle(r, P):
    bw, bh = r.uniform(0.45, 0.75), r.uniform(0.9, 1.4)
    nw, nl, sh = r.uniform(0.14, 0.24), r.uniform(0.25, 0.5), r.uniform(0.1, 0.35)
    outline = np.concatenate([
        _pts((-nw / 2, -sh - nl)), _bezier((-nw / 2, -sh), (-bw / 2, -sh * 0.3), (-bw / 2, 0.05), n=10),
        _pts((-bw / 2, bh - 0.05), (-bw / 2 + 0.05, bh), (bw / 2 - 0.05, bh), (bw / 2, bh - 0.05)),
        _bezier((bw / 2, 0.05), (bw / 2, -sh * 0.3), (nw / 2, -sh), n=10), _pts((nw / 2, -sh - nl))])
    P.fill(outline, 0)
    ch = r.uniform(0.08, 0.18)
    P.fill(_rect(-nw / 2 - 0.02, -sh - nl - ch, nw / 2 + 0.02, -sh - nl + 0.02), 1)
    if r.random() < 0.7:
        y0 = r.uniform(0.2, 0.45) * bh
        P.fill(_rect(-bw / 2, y0, bw / 2, y0 + r.uniform(0.25, 0.4) * bh), 2)
    if r.random() < 0.4:
        P.line(_pts((-bw * 0.3, bh * 0.1), (-bw * 0.3, bh * 0.8)), 3, 0.03, sketch=[])


def _mushroom(r, P):
    rx, ry = r.uniform(0.6, 0.95), r.uniform(0.35, 0.65)
    sw, sh = r.uniform(0.2, 0.36), r.uniform(0.4, 0.85)
    P.fill(np.concatenate([_bezier((-sw / 2, 0), (-sw * 0.7, sh * 0.6), (-sw * 0.6, sh), n=10),
                           _bezier((sw * 0.6, sh), (sw * 0.7, sh * 0.6), (sw / 2, 0), n=10)]), 1)
    lip = r.uniform(0.0, 0.12)
    cap = np.concatenate([_ellipse(0, 0, rx, ry, a0=math.pi, a1=TAU, n=40),
                          _bezier((rx, 0), (0, lip * 2), (-rx, 0), n=12)[1:-1]])
    P.fill(cap, 0)
    for _ in range(int(r.integers(0, 6))):
        a = r.uniform(math.pi * 1.15, math.pi * 1.85)
        rr = r.uniform(0.3, 0.8)
        P.fill(_ellipse(math.cos(a) * rx * rr, math.sin(a) * ry * rr, r.uniform(0.05, 0.1),
                        r.uniform(0.04, 0.08)), 2)
    if r.random() < 0.3:
        for _ in range(int(r.integers(3, 7))):
            x = r.uniform(-1.2, 1.2) * rx
            P.line(_pts((x, sh), (x + r.uniform(-0.05, 0.05), sh - r.uniform(0.1, 0.2))), 3, 0.02)


def _snowman(r, P):
    n = int(r.choice([2, 3]))
    r0 = r.uniform(0.45, 0.62)
    y, radii, centres = 0.0, [], []
    rr = r0
    for _ in range(n):
        centres.append(y - rr)
        radii.append(rr)
        y = y - 2 * rr + rr * r.uniform(0.15, 0.3)
        rr *= r.uniform(0.65, 0.8)
    for side in (-1, 1):
        i = 1 if n == 3 else 0
        cy, cr = centres[i], radii[i]
        a0 = np.array([side * cr * 0.9, cy - cr * 0.2])
        tip = a0 + np.array([side * r.uniform(0.35, 0.6), -r.uniform(-0.1, 0.4)])
        P.line(_pts(a0, tip), 3, 0.04)
        P.line(_pts(a0 + (tip - a0) * 0.7, tip + np.array([side * 0.02, -0.15])), 3, 0.03)
    for cy, cr in zip(centres, radii):
        P.fill(_circle(0, cy, cr), 0)
    hc, hr = centres[-1], radii[-1]
    for x in (-hr * 0.35, hr * 0.35):
        P.fill(_circle(x, hc - hr * 0.2, hr * 0.1), 2)
    P.fill(_pts((0, hc), (r.choice([-1, 1]) * hr * r.uniform(0.4, 0.8), hc + hr * 0.1), (0, hc + hr * 0.2)), 4)
    body = centres[1] if n == 3 else centres[0]
    bodyr = radii[1] if n == 3 else radii[0]
    for k in range(int(r.integers(0, 4))):
        P.fill(_circle(0, body - bodyr * 0.5 + k * bodyr * 0.35, bodyr * 0.07), 2)
    if r.random() < 0.6:
        top = hc - hr * 0.8
        hw = hr * r.uniform(0.6, 0.9)
        P.fill(_rect(-hw * 0.7, top - r.uniform(0.3, 0.5), hw * 0.7, top), 1)
        P.fill(_rect(-hw * 1.15, top - 0.05, hw * 1.15, top + 0.03), 1)


def _glasses(r, P):
    style = int(r.integers(0, 3))
    lr = r.uniform(0.32, 0.48)
    gap = r.uniform(0.12, 0.3)
    cxs = (-(lr + gap / 2), lr + gap / 2)
    lens = []
    for cx in cxs:
        if style == 0:
            lens.append(_circle(cx, 0, lr))
        elif style == 1:
            lens.append(_ellipse(cx, 0, lr, lr * r.uniform(0.6, 0.8)))
        else:
            h = lr * r.uniform(0.6, 0.85)
            lens.append(_rect(cx - lr, -h, cx + lr, h))
    lift = r.uniform(-0.15, 0.1)
    for side, cx in ((-1, cxs[0]), (1, cxs[1])):
        p0 = np.array([cx + side * lr, -lr * 0.3])
        P.line(_pts(p0, p0 + np.array([side * r.uniform(0.3, 0.6), lift])), 1, 0.045)
    P.line(_bezier((cxs[0] + lr * 0.95, -lr * 0.2), (0, -lr * 0.2 - gap * 1.2), (cxs[1] - lr * 0.95, -lr * 0.2)),
           1, 0.045)
    fw = r.uniform(0.04, 0.1)
    for pts in lens:
        P.fill(pts, 0)
        P.line(pts, 1, fw, closed=True)


def _clock(r, P):
    square = r.random() < 0.3
    if r.random() < 0.4:
        for side in (-1, 1):
            P.fill(_circle(side * 0.6, -0.78, 0.28, a0=math.pi, a1=TAU, n=20), 2)
            P.line(_pts((side * 0.6, 0.75), (side * 0.85, 1.1)), 1, 0.07)
    face = _rect(-1, -1, 1, 1) if square else _circle(0, 0, 1)
    P.fill(face, 0)
    P.line(face * 0.93, 1, r.uniform(0.06, 0.14), closed=True)
    nt = int(r.choice([4, 12]))
    for k in range(nt):
        a = TAU * k / nt
        P.line(_pts((0.72 * math.cos(a), 0.72 * math.sin(a)), (0.85 * math.cos(a), 0.85 * math.sin(a))), 3, 0.04)
    ah, am = r.uniform(0, TAU), r.uniform(0, TAU)
    P.line(_pts((0, 0), (0.45 * math.cos(ah), 0.45 * math.sin(ah))), 3, 0.07)
    P.line(_pts((0, 0), (0.7 * math.cos(am), 0.7 * math.sin(am))), 3, 0.045)
    P.fill(_circle(0, 0, 0.07), 3)


def _kite_delta(r, P):
    w, h = r.uniform(0.8, 1.1), r.uniform(0.7, 1.0)
    sag = r.uniform(0.1, 0.3)
    wing = np.concatenate([_pts((0, -h)), _pts((w, h * 0.4)),
                           _bezier((w, h * 0.4), (w * 0.5, h * 0.4 - sag), (0, h * 0.55), n=8)[1:],
                           _bezier((0, h * 0.55), (-w * 0.5, h * 0.4 - sag), (-w, h * 0.4), n=8)[1:]])
    P.fill(wing, 0)
    P.line(_pts((0, -h), (0, h * 0.55)), 2, 0.03)
    P.line(_pts((-w * 0.55, h * 0.0), (w * 0.55, h * 0.0)), 2, 0.025)
    P.fill(_pts((0, -h * 0.1), (r.uniform(-0.12, 0.12), h * 0.5), (0, h * 0.45)), 1)
    for side in (-1, 1):
        if r.random() < 0.7:
            t = np.linspace(0, 1, 20)
            tail = np.stack([side * w * (1 - 0.1 * t) + 0.08 * np.sin(TAU * 2 * t),
                             h * 0.4 + r.uniform(0.5, 1.0) * t], axis=1)
            P.line(tail, 1, 0.03)


def _kite(r, P):
    if r.random() < 0.4:
        return _kite_delta(r, P)
    w, cy, bot = r.uniform(0.5, 0.8), r.uniform(-0.45, -0.1), r.uniform(0.9, 1.3)
    skew = r.uniform(-0.1, 0.1)
    top, left, right, bottom = (skew, -1.0), (-w, cy), (w, cy + skew), (0, bot)
    centre = (skew * 0.5, cy + skew * 0.5)
    if r.random() < 0.5:
        P.fill(_pts(top, right, bottom, left), 0)
    else:
        for i, (a, b) in enumerate(((top, right), (right, bottom), (bottom, left), (left, top))):
            P.fill(_pts(a, b, centre), i % 2)
    P.line(_pts(top, bottom), 2, 0.03)
    P.line(_pts(left, right), 2, 0.03)
    tl = r.uniform(0.8, 1.5)
    t = np.linspace(0, 1, 30)
    amp, fr = r.uniform(0.08, 0.2), r.uniform(1.5, 3.0)
    tail = np.stack([amp * np.sin(TAU * fr * t), bot + tl * t], axis=1)
    P.line(tail, 2, 0.025)
    for k in range(int(r.integers(2, 5))):
        p = tail[int((k + 1) / 5 * (len(tail) - 1))]
        P.fill(_pts(p, p + (-0.12, -0.07), p + (-0.12, 0.07)), 1)
        P.fill(_pts(p, p + (0.12, -0.07), p + (0.12, 0.07)), 1)


def _guitar_electric(r, P):
    bw, bh = r.uniform(0.55, 0.75), r.uniform(0.8, 1.1)
    horn = r.uniform(0.25, 0.45)
    body = _smooth_closed([(0, bh * 0.55), (bw * 0.9, bh * 0.35), (bw, -bh * 0.05), (bw * 0.5, -bh * 0.25),
                           (bw * 0.75, -bh * 0.45 - horn), (bw * 0.25, -bh * 0.45), (0, -bh * 0.35),
                           (-bw * 0.3, -bh * 0.45), (-bw * 0.6, -bh * 0.45 - horn * 0.6), (-bw * 0.45, -bh * 0.2),
                           (-bw, 0.0), (-bw * 0.85, bh * 0.4)], n=6)
    nl, nw = r.uniform(1.2, 1.6), r.uniform(0.1, 0.15)
    top = -bh * 0.3 - nl
    hl = r.uniform(0.3, 0.45)
    P.fill(_pts((-nw * 0.6, top), (-nw * 0.9, top - hl), (nw * 1.6, top - hl * 1.1), (nw * 0.6, top)), 1)
    P.fill(_rect(-nw / 2, top, nw / 2, -bh * 0.2), 1)
    P.fill(body, 0)
    P.fill(_pts((-bw * 0.35, -bh * 0.3), (bw * 0.2, -bh * 0.3), (bw * 0.3, bh * 0.3), (-bw * 0.25, bh * 0.4)), 2)
    for k in range(int(r.integers(1, 4))):
        y = -bh * 0.15 + k * 0.2
        P.fill(_rect(-nw * 1.2, y, nw * 1.2, y + 0.09), 3)
    P.fill(_rect(-nw * 1.1, bh * 0.3, nw * 1.1, bh * 0.36), 3)
    for k in range(int(r.integers(1, 4))):
        P.fill(_circle(bw * 0.5, bh * (0.05 + 0.15 * k), 0.05), 3)
    ns = 6
    for k in range(ns):
        x = (k - (ns - 1) / 2) * nw / ns * 0.9
        P.line(_pts((x * 1.6, bh * 0.33), (x, top - hl * 0.2)), 3, 0.01)
    for k in range(ns):
        P.fill(_circle(nw * 1.1 + 0.04 * k, top - hl * (0.15 + 0.14 * k), 0.035), 3)


def _guitar(r, P):
    if r.random() < 0.4:
        return _guitar_electric(r, P)
    r1 = r.uniform(0.45, 0.6)
    r2 = r1 * r.uniform(0.68, 0.85)
    c1, c2 = 0.0, -r1 - r2 * r.uniform(0.5, 0.8)
    nl, nw = r.uniform(1.0, 1.5), r.uniform(0.12, 0.18)
    top = c2 - r2 * 0.6 - nl
    hl = r.uniform(0.25, 0.4)
    P.fill(_pts((-nw * 0.8, top), (-nw * 1.3, top - hl), (nw * 1.3, top - hl), (nw * 0.8, top)), 1)
    P.fill(_rect(-nw / 2, top, nw / 2, c2), 1)
    P.fill(_circle(0, c1, r1), 0, group=0)
    P.fill(_circle(0, c2, r2), 0, group=0)
    if r.random() < 0.4:
        P.fill(_ellipse(0, c2 + r2 * 0.45, r1 * 0.4, r1 * 0.12), 0, group=0, sketch=[])
    P.fill(_circle(0, (c1 + c2) / 2 - r2 * 0.2, r2 * r.uniform(0.3, 0.45)), 2)
    P.fill(_rect(-r1 * 0.4, r1 * 0.4, r1 * 0.4, r1 * 0.52), 3)
    ns = int(r.choice([4, 6]))
    for k in range(ns):
        x = (k - (ns - 1) / 2) * nw / ns * 0.9
        P.line(_pts((x * 2.2, r1 * 0.46), (x, top - hl * 0.3)), 3, 0.01)
    for k in range(ns // 2):
        for side in (-1, 1):
            P.fill(_circle(side * nw * 1.45, top - hl * (0.2 + 0.3 * k), 0.04), 3)


_BUILDERS: dict[str, Callable] = {
    "house": _house, "car": _car, "tree": _tree, "umbrella": _umbrella,
    "fish": _fish, "sun": _sun, "cup": _cup, "kite": _kite,
    "lamp": _lamp, "flower": _flower, "boat": _boat, "key": _key,
    "rocket": _rocket, "bottle": _bottle, "mushroom": _mushroom, "snowman": _snowman,
    "glasses": _glasses, "clock": _clock, "bicycle": _bicycle, "guitar": _guitar,
}
#: the classes, in generation order (``classes_count`` takes a prefix)
CLASS_NAMES: list[str] = list(_BUILDERS)
#: the unseen (test) classes of the ``synthetic`` split: every fourth class
UNSEEN_CLASSES: list[str] = CLASS_NAMES[3::4]
