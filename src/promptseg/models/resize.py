"""Thresholded upscaling of low-resolution logits, computed only where the mask can be.

``Sam.postprocess_masks`` upsamples the (L, L) logits to the padded input (S, S), crops the valid (h, w)
part and resizes that to the original (H, W); both steps are bilinear (``align_corners=False``), so each
axis is a fixed linear map with non-negative weights that sum to one. A full-resolution pixel is thus a
convex combination of a few low-resolution logits, and it can only exceed the threshold if one of those
does. :func:`mask_crop` therefore finds the low-resolution box above the threshold, and evaluates the two
composed axis maps only over the rows and columns that box can reach: the same logits as the full
upscale (up to float rounding) at a cost in proportion to the object, not to the image.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch


def bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 matrix of 1-D bilinear resizing with ``align_corners=False``.

    The same source positions and clamping as ``torch.nn.functional.interpolate(mode="bilinear")``
    given an output size: source = (dst + 0.5) * n_in / n_out - 0.5, clamped at 0.
    """
    dst = np.arange(n_out, dtype=np.float64)
    src = np.maximum((dst + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    w = np.zeros((n_out, n_in))
    np.add.at(w, (np.arange(n_out), i0), 1.0 - frac)
    np.add.at(w, (np.arange(n_out), i1), frac)
    return w


@lru_cache(maxsize=32)
def axis_map(low: int, size: int, valid: int, original: int) -> torch.Tensor:
    """(original, low) float32 map of one axis: low -> padded input ``size`` -> first ``valid`` -> original."""
    m = bilinear_weights(low, size)[:valid]
    if valid != original:
        m = bilinear_weights(valid, original) @ m
    m[np.abs(m) < 1e-12] = 0.0  # exact zeros outside each row's taps, so the support below is tight
    return torch.from_numpy(m.astype(np.float32))


def _reach(m: torch.Tensor, lo: int, hi: int) -> tuple[int, int, int, int]:
    """Output rows of ``m`` touching low-resolution indices [lo, hi) -> (r0, r1, k0, k1): those rows and
    every low-resolution index they draw on (both half-open)."""
    rows = torch.nonzero(m[:, lo:hi].any(dim=1)).flatten()
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    taps = torch.nonzero(m[r0:r1].any(dim=0)).flatten()
    return r0, r1, int(taps[0]), int(taps[-1]) + 1


def reach(logits: np.ndarray, row_map: torch.Tensor, col_map: torch.Tensor, threshold: float):
    """Where ``upscale(logits) > threshold`` can be: ((r0, r1, c0, c1) in the original frame, (i0, i1, j0,
    j1) the low-resolution rows and columns those pixels draw on), all half-open; None when nothing can be.

    ``row_map`` (H, L) and ``col_map`` (W, L) come from :func:`axis_map`.
    """
    pos = torch.as_tensor(logits) > threshold
    if not bool(pos.any()):
        return None
    rows = torch.nonzero(pos.any(dim=1)).flatten()
    cols = torch.nonzero(pos.any(dim=0)).flatten()
    r0, r1, i0, i1 = _reach(row_map, int(rows[0]), int(rows[-1]) + 1)
    c0, c1, j0, j1 = _reach(col_map, int(cols[0]), int(cols[-1]) + 1)
    return (r0, r1, c0, c1), (i0, i1, j0, j1)


def mask_crop(logits: np.ndarray, row_map: torch.Tensor, col_map: torch.Tensor, threshold: float, where=None):
    """Low-resolution logits (L, L) float32 -> (bool crop, (row, col) of its origin), or None when empty.

    The crop lies in the original (H, W) frame and holds every pixel of ``upscale(logits) > threshold``;
    ``where`` is :func:`reach`'s answer when the caller has it.
    """
    where = reach(logits, row_map, col_map, threshold) if where is None else where
    if where is None:
        return None
    (r0, r1, c0, c1), (i0, i1, j0, j1) = where
    low = torch.as_tensor(logits, dtype=torch.float32)
    full = row_map[r0:r1, i0:i1] @ low[i0:i1, j0:j1] @ col_map[c0:c1, j0:j1].T
    return (full > threshold).numpy(), (r0, c0)
