"""Prompt types and their checks, in napari coordinates.

Points are ``(row, col)`` in 2D and ``(z, row, col)`` in 3D, in pixels of the full-resolution image; a
pixel's centre sits at integer coordinates, so a valid point lies within ``[-0.5, size - 0.5]`` on each
axis. The conversion to SAM's (x, y) input frame lives in :class:`promptseg.preprocess.Frame`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import PromptError


@dataclass(frozen=True)
class Point:
    """One click. ``rc`` = (row, col) on the slice; ``positive`` False for a background click."""

    rc: tuple[float, float]
    positive: bool = True


@dataclass(frozen=True)
class Box:
    """A rectangle given by two corners (row, col) on the slice, any order."""

    r0: float
    c0: float
    r1: float
    c1: float


def as_coords(values, ndim: int, what: str = "point") -> np.ndarray:
    """Coerce to a float array of shape (N, ndim); PromptError on wrong size or non-finite values."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise PromptError(f"{what} {values!r} is not a list of numbers") from e
    arr = arr.reshape(-1, arr.shape[-1]) if arr.ndim else arr.reshape(1, 1)
    if arr.shape[-1] != ndim or arr.shape[0] == 0:
        raise PromptError(f"{what} {np.asarray(values).tolist()} must have {ndim} coordinates per point for a {ndim}D image")
    if not np.all(np.isfinite(arr)):
        raise PromptError(f"{what} {arr.tolist()} has NaN or infinite coordinates")
    return arr


def inside(coords: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Which rows of ``coords`` (N, ndim) lie inside an image of spatial ``shape`` (bool (N,))."""
    hi = np.asarray(shape, dtype=np.float64) - 0.5
    return np.all((coords >= -0.5) & (coords <= hi), axis=1)


def check_inside(coords: np.ndarray, shape: tuple[int, ...], what: str = "point") -> None:
    """PromptError naming the first coordinate outside the image."""
    ok = inside(coords, shape)
    if not ok.all():
        bad = tuple(round(float(v), 2) for v in coords[~ok][0])
        raise PromptError(f"{what} {bad} lies outside the image of shape {tuple(shape)}")


def one_slice(coords: np.ndarray, what: str) -> int:
    """For 3D prompts: the single slice index all coordinates lie on (first column)."""
    z = np.rint(coords[:, 0])
    if not np.all(z == z[0]):
        raise PromptError(f"{what} spans slices {sorted(set(z.astype(int).tolist()))}; draw it on one slice")
    return int(z[0])


def to_plane(coords: np.ndarray, shape: tuple[int, ...], axis: int, what: str) -> tuple[int, np.ndarray]:
    """(N, ndim) image coordinates of one prompt -> (slice index along ``axis``, (N, 2) in-plane (row, col));
    2D coordinates are on slice 0. PromptError when they span slices or lie outside the volume ``shape``."""
    if len(shape) == 2:
        return 0, coords
    moved = np.concatenate([coords[:, [axis]], np.delete(coords, axis, axis=1)], axis=1)
    k = one_slice(moved, what)
    if not 0 <= k < shape[axis]:
        raise PromptError(f"{what} on slice {k} lies outside the volume of shape {tuple(shape)}")
    return k, moved[:, 1:]


def clip_box(corners: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Clip box corners (2, 2) in (row, col) to the slice; PromptError if the box misses it entirely."""
    lo = corners.min(axis=0)
    hi = corners.max(axis=0)
    limit = np.asarray(shape, dtype=np.float64) - 0.5
    if np.any(hi < -0.5) or np.any(lo > limit):
        raise PromptError(f"box {corners.tolist()} lies outside the image of shape {tuple(shape)}")
    return np.stack([np.clip(lo, -0.5, limit), np.clip(hi, -0.5, limit)])


def clip_stroke(rc: np.ndarray, plane: tuple[int, int]) -> tuple:
    """Keep the vertices (N, 2) of a stroke that lie on the slice; PromptError if none does."""
    keep = rc[inside(rc, plane)]
    if not len(keep):
        raise PromptError(f"scribble lies outside the image of shape {tuple(plane)}")
    return tuple((float(r), float(c)) for r, c in keep)


def scribble_to_points(polyline: np.ndarray, max_points: int = 8, spacing: float = 12.0) -> np.ndarray:
    """Well-spread points along a polyline (N, 2) in (row, col).

    The stroke is resampled by arc length; points are placed evenly along it, one per ``spacing`` pixels,
    at most ``max_points`` (stroke ends included). Used with models that have no squiggle input.
    """
    poly = np.asarray(polyline, dtype=np.float64).reshape(-1, 2)
    if len(poly) == 1:
        return poly.copy()
    seg = np.linalg.norm(np.diff(poly, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    length = arc[-1]
    if length == 0:
        return poly[:1].copy()
    n = int(np.clip(round(length / spacing) + 1, 2, max_points))
    targets = np.linspace(0.0, length, n)
    return np.stack([np.interp(targets, arc, poly[:, 0]), np.interp(targets, arc, poly[:, 1])], axis=1)


def stroke_map(strokes, to_lowres, lowres: int) -> np.ndarray:
    """Rasterise squiggles into a decoder stroke map: float32 (1, 2, L, L), 1 on the strokes.

    Parameters
    ----------
    strokes : iterable of ((N, 2) (row, col) polyline, positive: bool).
    to_lowres : maps (N, 2) (row, col) to (N, 2) (row, col) in the frame of the low-resolution logits.
    lowres : L, the side of the low-resolution logits.

    Channel 0 holds the positive strokes, channel 1 the negative ones; each polyline is drawn as
    connected 1-pixel lines (``skimage.draw.line``) and clipped to the map.
    """
    from skimage.draw import line

    out = np.zeros((1, 2, lowres, lowres), np.float32)
    for poly, positive in strokes:
        p = np.rint(to_lowres(np.asarray(poly, dtype=np.float64).reshape(-1, 2))).astype(int)
        segs = zip(p[:-1], p[1:]) if len(p) > 1 else [(p[0], p[0])]
        for (r0, c0), (r1, c1) in segs:
            rr, cc = line(r0, c0, r1, c1)
            ok = (rr >= 0) & (rr < lowres) & (cc >= 0) & (cc < lowres)
            out[0, 0 if positive else 1, rr[ok], cc[ok]] = 1.0
    return out
