"""Geometry helpers of the synthetic dataset: primitive outlines and polyline operations.

Object coordinates: about one unit across, y pointing down. Everything here is a pure function of its
arguments (no randomness).
"""

from __future__ import annotations

import math

import numpy as np

TAU = 2 * math.pi


def _ellipse(cx, cy, rx, ry, rot=0.0, a0=0.0, a1=TAU, n=None) -> np.ndarray:
    full = abs(a1 - a0) >= TAU - 1e-9
    if n is None:
        n = max(8, int(72 * abs(a1 - a0) / TAU))
    t = np.linspace(a0, a1, n, endpoint=not full)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = math.cos(rot), math.sin(rot)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _circle(cx, cy, r, **kw) -> np.ndarray:
    return _ellipse(cx, cy, r, r, **kw)


def _rect(x0, y0, x1, y1) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def _pts(*pts) -> np.ndarray:
    return np.array(pts, dtype=float)


def _bezier(p0, p1, p2, n=24) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    p0, p1, p2 = (np.asarray(p, dtype=float) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _lens(p0, p1, width, n=16) -> np.ndarray:
    """A leaf or petal: a pointed shape from ``p0`` to ``p1``, ``width`` across at the middle."""
    p0, p1 = np.asarray(p0, dtype=float), np.asarray(p1, dtype=float)
    d = p1 - p0
    nrm = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9)
    t = np.linspace(0, 1, n)
    side = np.sin(np.pi * t)[:, None] * width / 2
    a = p0 + t[:, None] * d + side * nrm
    b = (p0 + t[:, None] * d - side * nrm)[::-1]
    return np.concatenate([a, b[1:-1]])


def _smooth_closed(ctrl, n=10) -> np.ndarray:
    """A closed Catmull-Rom curve through the control points ``ctrl``."""
    c = np.asarray(ctrl, dtype=float)
    out = []
    for i in range(len(c)):
        p0, p1, p2, p3 = c[i - 1], c[i], c[(i + 1) % len(c)], c[(i + 2) % len(c)]
        t = np.linspace(0, 1, n, endpoint=False)[:, None]
        out.append(0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                          + (3 * p1 - p0 - 3 * p2 + p3) * t**3))
    return np.concatenate(out)


def _offset_line(pts: np.ndarray, dist: float) -> np.ndarray:
    """The polyline ``pts`` moved sideways by ``dist`` (for the two edges of a thick bar)."""
    d = np.gradient(pts, axis=0)
    nrm = np.stack([-d[:, 1], d[:, 0]], axis=1)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True) + 1e-12
    return pts + dist * nrm


def _inside(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over ``points``."""
    x, y = points[:, :1], points[:, 1:2]
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crosses = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xint = x0 + (y - y0) * (x1 - x0) / np.where(y1 == y0, 1e-12, y1 - y0)
    return (crosses & (x < xint)).sum(axis=1) % 2 == 1


def _resample(pts: np.ndarray, step: float, closed: bool) -> np.ndarray:
    if closed:
        pts = np.concatenate([pts, pts[:1]])
    seg = np.hypot(*np.diff(pts, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    if s[-1] <= 0:
        return pts[:1].copy()
    n = max(2, int(math.ceil(s[-1] / step)) + 1)
    u = np.linspace(0, s[-1], n)
    out = np.stack([np.interp(u, s, pts[:, 0]), np.interp(u, s, pts[:, 1])], axis=1)
    return out[:-1] if closed else out
