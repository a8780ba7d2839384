"""Prompt simulation for training and evaluation: clicks, boxes, squiggles and correction clicks.

All coordinates are napari / numpy ``(row, col)`` in pixels of the mask; :func:`to_xy` turns them into
Segment Anything's ``(x, y)``.
"""

from __future__ import annotations

import numpy as np

from ..evaluate import inner_distance
from ..prompts import scribble_to_points


def _pick(rng: np.random.Generator, weight: np.ndarray) -> np.ndarray:
    """One (row, col) drawn with probability proportional to ``weight`` (H, W) >= 0; float (2,)."""
    flat = weight.ravel()
    idx = rng.choice(flat.size, p=flat / flat.sum())
    return np.array(np.unravel_index(idx, weight.shape), dtype=np.float64)


def first_click(rng: np.random.Generator, mask: np.ndarray, centre_power: float = 2.0, p_uniform: float = 0.2) -> np.ndarray:
    """A positive click inside the object, biased to its centre.

    Parameters
    ----------
    mask : bool (H, W), non-empty.
    centre_power : weights are ``distance_to_boundary ** centre_power``.
    p_uniform : probability of a uniform draw over the object instead.

    Returns
    -------
    float (2,) (row, col) of a pixel of ``mask``.
    """
    dist = inner_distance(mask)
    weight = mask.astype(np.float64) if rng.random() < p_uniform else dist ** centre_power
    return _pick(rng, weight)


def box(rng: np.random.Generator, mask: np.ndarray, jitter: float = 0.1, max_px: float = 20.0) -> np.ndarray:
    """The object's bounding box with each side moved by up to ``jitter`` of its size (at most ``max_px``).

    Returns float (4,) ``(r0, c0, r1, c1)`` clipped to the image (corners on pixel centres, inclusive).
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1], cols[0], cols[-1]
    hs, ws = min((r1 - r0 + 1) * jitter, max_px), min((c1 - c0 + 1) * jitter, max_px)
    d = rng.normal(0, 0.5, 4) * np.array([hs, ws, hs, ws])
    d = np.clip(d, -np.array([hs, ws, hs, ws]), np.array([hs, ws, hs, ws]))
    h, w = mask.shape
    return np.array([np.clip(r0 + d[0], 0, h - 1), np.clip(c0 + d[1], 0, w - 1),
                     np.clip(r1 + d[2], 0, h - 1), np.clip(c1 + d[3], 0, w - 1)])


def squiggle_path(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """A random stroke drawn inside a region, as a person scribbles: float (K, 2) (row, col), K >= 1.

    A random walk from a centre-biased point, with steps of ~1/8 of the region's size that stay inside
    ``mask`` (bool (H, W), non-empty).
    """
    dist = inner_distance(mask)
    size = 2.0 * float(dist.max())
    step = max(1.5, size / 8)
    pos = _pick(rng, dist ** 2)
    path = [pos]
    heading = rng.uniform(0, 2 * np.pi)
    h, w = mask.shape
    for _ in range(int(rng.integers(3, 12))):
        for _try in range(6):
            heading += rng.normal(0, 0.8)
            nxt = pos + step * np.array([np.sin(heading), np.cos(heading)])
            r, c = int(round(nxt[0])), int(round(nxt[1]))
            if 0 <= r < h and 0 <= c < w and mask[r, c]:
                pos = nxt
                path.append(pos)
                break
    return np.array(path)


def spread(path: np.ndarray, mask: np.ndarray, max_points: int = 8) -> np.ndarray:
    """The points the Session sends for a stroke (:func:`promptseg.prompts.scribble_to_points`), kept
    where they fall inside ``mask``: float (K, 2), K >= 1."""
    size = 2.0 * float(inner_distance(mask).max())
    pts = scribble_to_points(path, max_points=max_points, spacing=max(4.0, max(1.5, size / 8)))
    h, w = mask.shape
    keep = mask[np.clip(np.rint(pts[:, 0]).astype(int), 0, h - 1), np.clip(np.rint(pts[:, 1]).astype(int), 0, w - 1)]
    return pts[keep] if keep.any() else path[:1]


def squiggle(rng: np.random.Generator, mask: np.ndarray, max_points: int = 8) -> np.ndarray:
    """A random stroke inside the object (:func:`squiggle_path`), returned as spread points as the
    Session sends them: float (K, 2) (row, col), 1 <= K <= ``max_points``, all inside ``mask``."""
    return spread(squiggle_path(rng, mask), mask, max_points)


def correction_click(rng: np.random.Generator | None, gt: np.ndarray, pred: np.ndarray, centre_power: float = 2.0):
    """A correction click in the larger error region, as a user would place it.

    Parameters
    ----------
    rng : Generator for a random draw weighted by ``distance ** centre_power`` inside the error region;
        ``None`` for the deterministic choice (the point farthest from the region's boundary, as in
        interactive-segmentation benchmarks).
    gt, pred : bool (H, W) ground truth and current prediction.

    Returns
    -------
    ((row, col) float (2,), positive bool), or None when the prediction is perfect.
    """
    missed = gt & ~pred
    extra = pred & ~gt
    if not missed.any() and not extra.any():
        return None
    positive = missed.sum() >= extra.sum()
    region = missed if positive else extra
    dist = inner_distance(region)
    if rng is None:
        return np.array(np.unravel_index(int(np.argmax(dist)), dist.shape), dtype=np.float64), bool(positive)
    return _pick(rng, dist ** centre_power), bool(positive)


def coarse_mask(rng: np.random.Generator, labels: np.ndarray, k: int, magnification: float) -> np.ndarray:
    """What a full-view prediction of object ``k`` looks like inside a zoom window (the Session's first
    ``mask_input`` there): the object seen through the full view's coarser grid, sometimes merged with a
    touching neighbour, grown or shrunk.

    labels : int (H, W) in the zoomed image; magnification : zoomed pixels per full-view pixel (1 = none).
    Returns bool (H, W), never empty.
    """
    from scipy import ndimage as ndi

    m = labels == k
    cell = 4.0 * magnification  # one full-view logit cell, in zoomed pixels
    if rng.random() < 0.3:  # merged with a neighbour, a common full-view mistake
        ring = ndi.binary_dilation(m, iterations=max(1, int(cell / 2))) & ~m & (labels > 0)
        if ring.any():
            m = m | (labels == rng.choice(np.unique(labels[ring])))
    if rng.random() < 0.15:  # a part missed: everything beyond a random line through the object is dropped
        rc = np.argwhere(m)
        d = rc @ np.array([np.cos(a := rng.uniform(0, 2 * np.pi)), np.sin(a)])
        cut = np.zeros_like(m)
        cut[tuple(rc[d > np.quantile(d, rng.uniform(0.5, 0.9))].T)] = True
        m = m & ~cut
    out = ndi.gaussian_filter(m.astype(np.float32), cell * rng.uniform(0.25, 0.9)) > rng.uniform(0.3, 0.7)
    grow = int(round(rng.normal(0, 0.5) * cell))
    if grow > 0:
        out = ndi.binary_dilation(out, iterations=grow)
    elif grow < 0:
        out = ndi.binary_erosion(out, iterations=-grow)
    return out if out.any() else labels == k


def to_xy(rc: np.ndarray) -> np.ndarray:
    """(N, 2) (row, col) -> (N, 2) SAM (x, y), same pixel scale."""
    rc = np.asarray(rc, dtype=np.float64).reshape(-1, 2)
    return rc[:, ::-1].copy()
