"""Small rendering helpers (no GUI): overlays of masks on images for reports and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skimage.segmentation import find_boundaries


def overlay(rgb: np.ndarray, mask: np.ndarray, color=(255, 40, 40), alpha: float = 0.45,
            edge=(255, 230, 0), points=None) -> np.ndarray:
    """Blend a mask onto an RGB image.

    Parameters
    ----------
    rgb : uint8 (H, W, 3).
    mask : bool (H, W).
    color, alpha : fill colour and opacity inside the mask; ``edge`` colours its outline.
    points : optional iterable of ((row, col), positive) drawn as small green / magenta squares.

    Returns
    -------
    uint8 (H, W, 3), a new array.
    """
    out = rgb.astype(np.float32).copy()
    m = np.asarray(mask, bool)
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(color, np.float32)
    out[find_boundaries(m, mode="inner")] = edge
    h, w = m.shape
    r = max(2, min(h, w) // 150)
    for (row, col), positive in points or ():
        rr, cc = int(round(row)), int(round(col))
        out[max(rr - r, 0) : rr + r + 1, max(cc - r, 0) : cc + r + 1] = (40, 220, 40) if positive else (230, 40, 230)
    return np.clip(out, 0, 255).astype(np.uint8)


def save_overlay(path, session, mask: np.ndarray, points=(), bbox=None) -> Path:
    """Write a PNG of ``mask`` over the session's image, shown as the Session shows it to the model
    (its intensity window); a volume shows the first slice of ``bbox`` (the prompted one).

    mask : bool or uint8 of the image's spatial shape. points : ((coords, positive), ...) in image
    coordinates. The file is replaced atomically (``io.writers.atomic_file``). Returns the path.
    """
    import imageio.v3 as iio

    from .io.writers import atomic_file

    emb = session.embedder
    if session.ndim == 3:
        k = bbox[session.axis].start
        raw, plane = emb.raw_slice(k), np.moveaxis(np.asarray(mask), session.axis, 0)[k]
        points = [(np.delete(np.asarray(p), session.axis), f) for p, f in points]
    else:
        raw, plane = np.asarray(session.image), np.asarray(mask)
    rgb = overlay(emb.intensity.apply(raw), plane.astype(bool), points=points)
    path = Path(path)
    atomic_file(path, ".png", lambda tmp: iio.imwrite(tmp, rgb))
    return path
