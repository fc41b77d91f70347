"""One instance of the synthetic dataset: its pose, its photo and its sketches, as encoded bytes.

:func:`render_instance` depends only on ``(seed, class index, instance)`` (one
:class:`numpy.random.SeedSequence` stream for the pose, one for the photo, one per sketch);
:func:`_write_instance` is the worker task of :func:`sbir.data.datasets.synthetic.generation.generate`.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from sbir.data.datasets.synthetic.geometry import TAU, _inside, _pts, _resample
from sbir.data.datasets.synthetic.objects import _BUILDERS, CLASS_NAMES, UNSEEN_CLASSES, _Part, _Parts

SUPERSAMPLE = 2
JPEG_QUALITY = 90


def _rng(seed: int, class_index: int, instance: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, class_index, instance, stream]))


def _instance(name: str, rng: np.random.Generator, size: int, extent=(0.32, 0.85)) -> list[_Part]:
    """The parts of one instance, in image pixel coordinates (flip, rotation, scale, position)."""
    P = _Parts()
    _BUILDERS[name](rng, P)
    parts = P.parts
    flip = rng.random() < 0.5
    rot = rng.uniform(-0.4, 0.4)
    extent = rng.uniform(*extent) * size
    allpts = np.concatenate([p.pts for p in parts])
    lo, hi = allpts.min(0), allpts.max(0)
    centre = (lo + hi) / 2
    c, s = math.cos(rot), math.sin(rot)
    m = np.array([[c, -s], [s, c]]) @ np.diag([-1.0 if flip else 1.0, 1.0])
    scale = extent / max(hi - lo)
    moved = (allpts - centre) @ m.T * scale
    span = moved.max(0) - moved.min(0)
    fit = min(1.0, 0.92 * size / max(span))
    scale *= fit
    moved *= fit
    lo2, hi2 = moved.min(0), moved.max(0)
    margin = 0.04 * size
    shift = np.array([rng.uniform(margin - lo2[i], size - margin - hi2[i]) if size - 2 * margin > hi2[i] - lo2[i]
                      else size / 2 - (lo2[i] + hi2[i]) / 2 for i in range(2)])
    out = []
    for p in parts:
        def tf(q, p=p):
            return (np.asarray(q) - centre) @ m.T * scale + shift
        sketch = None if p.sketch is None else [(tf(q), closed) for q, closed in p.sketch]
        out.append(_Part(p.kind, tf(p.pts), p.role, p.width * scale, p.closed, p.group, sketch))
    return out


def _hsv(h, s, v) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]) * 255


def _random_colour(rng, s=(0.25, 0.95), v=(0.3, 0.95)) -> np.ndarray:
    return _hsv(rng.random(), rng.uniform(*s), rng.uniform(*v))


def _smooth_noise(rng, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1], ``size`` x ``size``."""
    small = Image.fromarray(((rng.random((cells, cells)) * 255)).astype(np.uint8))
    return np.asarray(small.resize((size, size), Image.BICUBIC), dtype=np.float32) / 127.5 - 1


def _background(rng, size: int) -> Image.Image:
    # the out-of-focus part (gradient, horizon, blobs) is drawn and blurred at a quarter of the size
    small = max(16, size // 4)
    yy, xx = np.mgrid[0:small, 0:small].astype(np.float32) / small
    a = rng.uniform(0, TAU)
    t = np.clip((xx - 0.5) * math.cos(a) + (yy - 0.5) * math.sin(a) + 0.5, 0, 1)[..., None]
    bg = _random_colour(rng, v=(0.2, 1.0)) * (1 - t) + _random_colour(rng, v=(0.2, 1.0)) * t
    if rng.random() < 0.6:  # a horizon: floor or table below, wall above
        hy = rng.uniform(0.45, 0.85) + (xx - 0.5) * rng.uniform(-0.2, 0.2)
        floor = _random_colour(rng, v=(0.2, 0.9)) * (0.75 + 0.5 * yy[..., None])
        bg = np.where((yy > hy)[..., None], floor, bg)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 11))):
        x, y, rr = rng.uniform(0, small), rng.uniform(0, small), rng.uniform(0.05, 0.3) * small
        draw.ellipse([x - rr, y - rr * rng.uniform(0.5, 1.5), x + rr, y + rr], fill=tuple(
            int(v) for v in _random_colour(rng)))
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.015, 0.06) * small))
    img = img.resize((size, size), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 11))):  # sharper distractors: rods, polygons, rings
        col = tuple(int(v) for v in _random_colour(rng))
        kind = rng.integers(0, 3)
        x, y = rng.uniform(0, size, 2)
        if kind == 0:
            a = rng.uniform(0, TAU)
            ln = rng.uniform(0.1, 0.5) * size
            draw.line([x, y, x + ln * math.cos(a), y + ln * math.sin(a)], fill=col,
                      width=max(1, int(rng.uniform(0.005, 0.03) * size)))
        elif kind == 1:
            k = int(rng.integers(3, 7))
            ang = np.sort(rng.uniform(0, TAU, k))
            rad = rng.uniform(0.03, 0.16) * size * rng.uniform(0.6, 1.0, k)
            draw.polygon([(x + rr * math.cos(q), y + rr * math.sin(q)) for q, rr in zip(ang, rad)], fill=col)
        else:
            rr = rng.uniform(0.02, 0.14) * size
            draw.ellipse([x - rr, y - rr, x + rr, y + rr], outline=col, width=max(1, int(rr * 0.3)))
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5) * size / 256))


def _distractors(bg: Image.Image, rng: np.random.Generator, size: int, name: str) -> Image.Image:
    """Small, out-of-focus objects of other (seen) classes in the background, as in real photos."""
    count = int(rng.choice([0, 1, 2, 3]))
    if not count:
        return bg
    others = [c for c in CLASS_NAMES if c != name and c not in UNSEEN_CLASSES]
    layer = bg.copy()
    draw = ImageDraw.Draw(layer)
    for _ in range(count):
        parts = _instance(str(rng.choice(others)), rng, size, extent=(0.15, 0.3))
        palette = [tuple(int(v) for v in _random_colour(rng)) for _ in range(max(p.role for p in parts) + 1)]
        for p in parts:
            if p.kind == "fill":
                draw.polygon([tuple(v) for v in p.pts], fill=palette[p.role])
            else:
                seq = np.concatenate([p.pts, p.pts[:1]]) if p.closed else p.pts
                draw.line([tuple(v) for v in seq], fill=palette[p.role], width=max(1, int(round(p.width))),
                          joint="curve")
    layer = layer.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 2.5) * size / 256))
    return Image.blend(bg, layer, rng.uniform(0.5, 0.9))


def _photo(parts: list[_Part], rng: np.random.Generator, size: int, name: str) -> Image.Image:
    big = size * SUPERSAMPLE
    label = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(label)
    for i, p in enumerate(parts, start=1):
        q = p.pts * SUPERSAMPLE
        if p.kind == "fill":
            draw.polygon([tuple(v) for v in q], fill=i)
        else:
            w = max(1, int(round(p.width * SUPERSAMPLE)))
            seq = np.concatenate([q, q[:1]]) if p.closed else q
            draw.line([tuple(v) for v in seq], fill=i, width=w, joint="curve")
            if not p.closed:
                for e in (q[0], q[-1]):
                    draw.ellipse([e[0] - w / 2, e[1] - w / 2, e[0] + w / 2, e[1] + w / 2], fill=i)
    lab_full = np.asarray(label)
    n_roles = max(p.role for p in parts) + 1
    palette = np.stack([_random_colour(rng) for _ in range(n_roles)])
    colours = np.zeros((len(parts) + 1, 3), np.float32)
    cx = np.zeros(len(parts) + 1, np.float32)
    cy = np.zeros_like(cx)
    rad = np.ones_like(cx)
    strength = np.zeros_like(cx)
    for i, p in enumerate(parts, start=1):
        colours[i] = np.clip(palette[p.role] * rng.uniform(0.9, 1.1), 0, 255)
        c = p.pts.mean(0) * SUPERSAMPLE
        cx[i], cy[i] = c
        rad[i] = max(2.0, float(np.hypot(*(p.pts * SUPERSAMPLE - c).T).max()))
        strength[i] = rng.uniform(0.2, 0.5)
    la = rng.uniform(0, TAU)
    lx, ly = math.cos(la), math.sin(la)
    gloss = 70 * rng.uniform(0.0, 1.0)
    texture = _smooth_noise(rng, big, 12)
    # shade only the object's bounding box (in whole output pixels)
    rows, cols = np.flatnonzero(lab_full.any(1)), np.flatnonzero(lab_full.any(0))
    if len(rows) == 0:
        rows = cols = np.array([0])
    y0, y1 = rows[0] // SUPERSAMPLE, rows[-1] // SUPERSAMPLE + 1
    x0, x1 = cols[0] // SUPERSAMPLE, cols[-1] // SUPERSAMPLE + 1
    sl = np.s_[y0 * SUPERSAMPLE:y1 * SUPERSAMPLE, x0 * SUPERSAMPLE:x1 * SUPERSAMPLE]
    lab = lab_full[sl]
    yy, xx = np.mgrid[sl].astype(np.float32)
    dx, dy, rr = xx - cx[lab], yy - cy[lab], rad[lab]
    t = np.clip((dx * lx + dy * ly) / rr, -1, 1)
    shade = 1 - strength[lab] * t + 0.08 * texture[sl]
    # highlight: a soft spot towards the light on every part
    spot = np.clip(1 - np.hypot(dx + 0.4 * rr * lx, dy + 0.4 * rr * ly) / (0.5 * rr), 0, 1)
    mask = (lab > 0).astype(np.float32)
    obj = (colours[lab] * shade[..., None] + (gloss * spot * spot)[..., None]) * mask[..., None]

    def down(a):
        h, w = a.shape[0] // SUPERSAMPLE, a.shape[1] // SUPERSAMPLE
        return a.reshape(h, SUPERSAMPLE, w, SUPERSAMPLE, *a.shape[2:]).mean(axis=(1, 3))

    obj_full = np.zeros((size, size, 3), np.float32)
    alpha = np.zeros((size, size, 1), np.float32)
    obj_full[y0:y1, x0:x1] = down(obj)
    alpha[y0:y1, x0:x1, 0] = down(mask)
    obj = obj_full
    bg = np.asarray(_distractors(_background(rng, size), rng, size, name), dtype=np.float32)
    if rng.random() < 0.7:  # drop shadow
        sh = Image.fromarray((alpha[..., 0] * 255).astype(np.uint8))
        dx, dy = (int(v) for v in rng.uniform(-0.04, 0.06, 2) * size)
        sh = sh.transform(sh.size, Image.AFFINE, (1, 0, -dx, 0, 1, -dy)).filter(
            ImageFilter.GaussianBlur(rng.uniform(0.01, 0.03) * size))
        bg = bg * (1 - rng.uniform(0.3, 0.6) * np.asarray(sh, dtype=np.float32)[..., None] / 255)
    img = obj + (1 - alpha) * bg
    img = img * rng.uniform(0.85, 1.15) + rng.uniform(2, 8) * rng.standard_normal(img.shape, np.float32)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 0.9) * size / 256))
    return out


def _visible_runs(pts: np.ndarray, closed: bool, occluders: list[np.ndarray]) -> list[np.ndarray]:
    """The pieces of a (resampled) stroke not hidden by any of ``occluders``."""
    hidden = np.zeros(len(pts), bool)
    for poly in occluders:
        hidden |= _inside(pts, poly)
    if not hidden.any():
        return [np.concatenate([pts, pts[:1]]) if closed else pts]
    if closed:  # start the walk at a hidden point so that no visible run wraps around
        k = int(np.argmax(hidden))
        pts, hidden = np.roll(pts, -k, axis=0), np.roll(hidden, -k)
    runs, cur = [], []
    for p, h in zip(pts, hidden):
        if h:
            if len(cur) >= 2:
                runs.append(np.array(cur))
            cur = []
        else:
            cur.append(p)
    if len(cur) >= 2:
        runs.append(np.array(cur))
    return runs


def _strokes(parts: list[_Part], size: int) -> list[np.ndarray]:
    """Every visible stroke of an instance, as polylines in image coordinates."""
    step = 2.0 * size / 256
    strokes = []
    for i, p in enumerate(parts):
        later = [q.pts for q in parts[i + 1:] if q.kind == "fill"]
        if p.kind == "fill" and p.group >= 0:
            later += [q.pts for j, q in enumerate(parts) if j < i and q.kind == "fill" and q.group == p.group]
        if p.sketch is not None:
            lines = p.sketch
        elif p.kind == "fill":
            lines = [(p.pts, True)]
        else:
            lines = [(p.pts, p.closed)]
        for pts, closed in lines:
            res = _resample(pts, step, closed)
            if len(res) < 2:
                continue
            strokes.extend(_visible_runs(res, closed, later))
    return strokes


def _wobble(pts: np.ndarray, rng, amp: float) -> np.ndarray:
    d = np.gradient(pts, axis=0) if len(pts) > 2 else np.repeat(pts[1:] - pts[:1], len(pts), axis=0)
    nrm = np.stack([-d[:, 1], d[:, 0]], axis=1)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True) + 1e-9
    s = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
    off = np.zeros(len(pts))
    for _ in range(3):
        f = rng.uniform(0.3, 2.5) / 100  # cycles per pixel
        off += rng.uniform(0.3, 1.0) * np.sin(TAU * f * s + rng.uniform(0, TAU))
    return pts + amp * off[:, None] * nrm + rng.normal(0, amp * 0.6, 2)


def _sketch(parts: list[_Part], rng: np.random.Generator, size: int) -> Image.Image:
    # the sketcher's global inaccuracy: a small similarity (plus a slight stretch) about the object
    allpts = np.concatenate([p.pts for p in parts])
    centre = (allpts.min(0) + allpts.max(0)) / 2
    a = rng.uniform(-0.12, 0.12)
    c, s = math.cos(a), math.sin(a)
    m = np.array([[c, -s], [s, c]]) @ np.diag(rng.uniform(0.85, 1.15) * rng.uniform(0.92, 1.08, 2))
    shift = rng.uniform(-0.08, 0.08, 2) * size

    def tf(q):
        return (q - centre) @ m.T + centre + shift

    moved = [_Part(p.kind, tf(p.pts), p.role, p.width, p.closed, p.group,
                   None if p.sketch is None else [(tf(q), cl) for q, cl in p.sketch]) for p in parts]
    strokes = _strokes(moved, size)
    px = size / 256
    out = []
    lengths = [float(np.hypot(*np.diff(st, axis=0).T).sum()) for st in strokes]
    longest = max(lengths, default=0.0)
    for st, length in zip(strokes, lengths):
        if length < 0.3 * longest and rng.random() < 0.15:  # a missing (minor) stroke
            continue
        if length > 60 * px and rng.random() < 0.3:  # drawn in two goes, or with a piece left out
            k = int(rng.integers(len(st) // 4, 3 * len(st) // 4))
            g = int(rng.integers(0, 3)) if rng.random() < 0.7 else int(rng.integers(3, max(4, len(st) // 5)))
            out += [st[: k + 1], st[k + g:]]
        else:
            out.append(st)
    for _ in range(int(rng.poisson(1.0))):  # extra strokes
        kind = rng.integers(0, 3)
        if kind == 0 and out:  # a re-traced line
            out.append(out[int(rng.integers(0, len(out)))].copy())
        elif kind == 1:  # a ground line
            lo, hi = allpts.min(0), allpts.max(0)
            y = hi[1] + rng.uniform(0, 0.05) * size
            x0 = lo[0] - rng.uniform(0, 0.15) * size
            x1 = hi[0] + rng.uniform(0, 0.15) * size
            out.append(tf(_resample(_pts((x0, y), (x1, y + rng.uniform(-4, 4) * px)), 2 * px, False)))
        else:  # hatching on a part
            p = moved[int(rng.integers(0, len(moved)))]
            cen = p.pts.mean(0)
            rr = min(0.08 * size, float(np.hypot(*(p.pts - cen).T).max()) * 0.6 + 2 * px)
            ang = rng.uniform(0, math.pi)
            dvec = np.array([math.cos(ang), math.sin(ang)])
            nvec = np.array([-dvec[1], dvec[0]])
            for j in range(int(rng.integers(3, 7))):
                o = cen + nvec * (j - 2.5) * rr * 0.3
                out.append(_resample(np.stack([o - dvec * rr * 0.6, o + dvec * rr * 0.6]), 2 * px, False))
    big = size * SUPERSAMPLE
    img = Image.new("L", (big, big), 255)
    draw = ImageDraw.Draw(img)
    base_w = rng.uniform(1.0, 2.4) * px
    ink = rng.uniform(0, 70)
    amp = rng.uniform(0.8, 2.2) * px
    for st in out:
        q = _wobble(st, rng, amp) * SUPERSAMPLE
        w = max(1, int(round(base_w * rng.uniform(0.8, 1.25) * SUPERSAMPLE)))
        col = int(np.clip(ink + rng.uniform(-20, 20), 0, 120))
        draw.line([tuple(v) for v in q], fill=col, width=w, joint="curve")
    return img.resize((size, size), Image.BOX)


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=JPEG_QUALITY)
    else:
        img.save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def render_instance(seed: int, class_index: int, instance: int, sketches: int, size: int
                    ) -> tuple[bytes, list[bytes]]:
    """The JPEG bytes of one photo and the PNG bytes of its ``sketches`` sketches."""
    name = CLASS_NAMES[class_index]
    parts = _instance(name, _rng(seed, class_index, instance, 0), size)
    photo = _encode(_photo(parts, _rng(seed, class_index, instance, 1), size, name), "JPEG")
    sk = [_encode(_sketch(parts, _rng(seed, class_index, instance, 2 + k), size), "PNG")
          for k in range(sketches)]
    return photo, sk


def _photo_stem(name: str, instance: int) -> str:
    return f"{name}_{instance + 1:04d}"


def _write_instance(task) -> int:
    seed, ci, inst, sketches, size, root = task
    name = CLASS_NAMES[ci]
    photo, sk = render_instance(seed, ci, inst, sketches, size)
    stem = _photo_stem(name, inst)
    root = Path(root)
    (root / "photo" / name / f"{stem}.jpg").write_bytes(photo)
    for k, data in enumerate(sk, start=1):
        (root / "sketch" / name / f"{stem}-{k}.png").write_bytes(data)
    return 1 + len(sk)
