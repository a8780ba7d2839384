"""Look wider: a first click that the decoder answers with a blob inside a flat region.

The shipped model's encoder sees the image at 256 px, and each of its tokens sees only so far around
it. A click in the middle of an object that fills much of the image (a bright organ, a cell that fills
the crop, a coin photographed close up) lands where every token sees the same flat intensity, and the
decoder answers with a blob around the click: its outline runs through the flat inside of the object,
with the same intensity on both sides. More clicks do not fix it; the same object, shown smaller, is
found at once.

So when a slice's first prompt is positive clicks alone (no mask, box or squiggle before them) and
their mask, after the zoom step, has an outline without contrast (below :data:`FLAT`, see
:func:`outline_contrast`), the Session decodes the clicks once more on a *wide view*: the slice shrunk
to 1 / :data:`SHRINK` of the input and padded around by its own edge pixels. The wide mask replaces the
first only when its outline has clear contrast (at least :data:`CLEAR`), it holds every click, and the
intensities inside it spread at most :data:`ALIKE` times as much as inside the blob: it should be the
flat region the blob lay in, not that region and something else (a click on grass in scikit-image's
``camera`` gave a wide mask of the photographer and the ground). The next prompts start from the mask
shown, as always, so they go on from the wide mask in the full view.
It costs one contrast measure per first prompt, and one more encoder pass (kept in the Session's zoom
cache) when the mask is flat. It runs where the zoom step does: models whose encoder is cheap enough to
run again on a click.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from PIL import Image

from ._state import crop_of, pack_crop, unpack
from .preprocess import Frame
from .zoom import cached

RING = 3  # pixels of the plane on each side of an outline that its contrast compares
FLAT = 0.25  # an outline whose contrast is below this runs through a flat region
CLEAR = 0.8  # the wide mask is taken only when its outline's contrast is at least this ...
ALIKE = 1.5  # ... and its inside's intensities spread at most this much more than the blob's
SHRINK = 2  # the wide view shows the slice at 1 / SHRINK of the input's side
MEASURED = 512 * 512  # pixels around a mask measured at full resolution; more are subsampled


def outline_contrast(grey: np.ndarray, mask: np.ndarray, ring: int = RING, gap: int = 0) -> float:
    """How well a mask's outline separates intensities: |mean inside - mean outside| / mean std.

    grey : float (H, W) image; mask : bool (H, W). The inside band is the mask's pixels deeper than
    ``gap`` and at most ``gap + ring`` px from its outline, the outside band the pixels outside at those
    distances (image borders are not outline); a ``gap`` makes the measure blind to an outline placed
    up to ``gap`` px off. NaN (cannot tell) when a band is empty: an empty mask, one that fills the
    image, or one no deeper than ``gap``. A step edge between intensities a and b in noise of std s
    gives about |a - b| / s.
    """
    from scipy import ndimage as ndi

    def grown(m, n):
        return ndi.binary_dilation(m, iterations=n) if n else m

    def shrunk(m, n):
        return ndi.binary_erosion(m, iterations=n, border_value=1) if n else m

    inner = shrunk(mask, gap) & ~shrunk(mask, gap + ring)
    outer = grown(mask, gap + ring) & ~grown(mask, gap)
    if not inner.any() or not outer.any():
        return float("nan")
    a, b = grey[inner], grey[outer]
    return float(abs(a.mean() - b.mean()) / (0.5 * (a.std() + b.std()) + 1e-6))


def _measure(session, k: int, bits, extent, gap: int = 0) -> tuple[float, float]:
    """A packed mask of slice ``k``: its :func:`outline_contrast` and the spread (std) of the intensity
    inside it deeper than ``gap``, on the slice as the encoder sees it (intensity mapping, before
    resizing, grey) around the mask's extent. A neighbourhood of more than :data:`MEASURED` pixels is
    read on every ``step``-th pixel, which keeps both (they compare means and spreads of pixels, and a
    large mask's bands hold many) and costs a fraction of the time."""
    from scipy import ndimage as ndi

    h, w = session._plane_shape()
    pad = gap + RING + 1
    a, b, c, d = max(0, extent[0] - pad), min(h, extent[1] + pad), max(0, extent[2] - pad), min(w, extent[3] + pad)
    step = int(np.ceil(np.sqrt((b - a) * (d - c) / MEASURED)))
    emb = session.embedder
    grey = emb.intensity.apply(emb.raw_slice(k)[a:b:step, c:d:step]).astype(np.float32).mean(axis=-1)
    mask = np.zeros((b - a, d - c), bool)
    mask[extent[0] - a:extent[1] - a, extent[2] - c:extent[3] - c] = unpack(bits, extent)
    mask, gap = mask[::step, ::step], gap // step
    deep = ndi.binary_erosion(mask, iterations=gap, border_value=1) if gap else mask
    return outline_contrast(grey, mask, max(1, RING // step), gap), float(grey[deep].std()) if deep.any() else np.nan


def _features(session, k: int, frame: Frame, offset: tuple[int, int]):
    """(1, C, g, g) embedding of slice ``k``'s wide view (kept in the Session's zoom cache)."""

    def make():
        emb = session.embedder
        rgb = emb.intensity.apply(emb.raw_slice(k))
        (hh, ww), (sr, sc) = frame.input, frame.scale_rc
        top, left = int(round(offset[0] * sr)), int(round(offset[1] * sc))
        sh, sw = max(1, int(round(rgb.shape[0] * sr))), max(1, int(round(rgb.shape[1] * sc)))
        small = np.array(Image.fromarray(rgb).resize((sw, sh), Image.BILINEAR))  # shrink first: cheap
        canvas = np.pad(small, ((top, max(0, hh - top - sh)), (left, max(0, ww - left - sw)), (0, 0)), mode="edge")
        return session.model.encode([canvas[:hh, :ww]])

    return cached(session, (k, "wide"), make)


def decode(session, k: int, rc: np.ndarray) -> tuple[tuple, float]:
    """Positive clicks ``rc`` (N, 2) (row, col) on slice ``k``'s wide view: SAM's three masks, the best
    by predicted IoU, as ((bits, extent) in the plane, predicted IoU); bits None when it is empty."""
    model = session.model
    h, w = session._plane_shape()
    offset = ((SHRINK - 1) * h // 2, (SHRINK - 1) * w // 2)  # the slice's origin in the padded plane
    frame = Frame.for_shape((SHRINK * h, SHRINK * w), model.input_size, model.spec.resize)
    feats = _features(session, k, frame, offset)
    xy = frame.to_input_xy(np.asarray(rc, float).reshape(-1, 2) + offset)
    with model.threads_for_click():
        # three masks for several clicks too: the single mask for two clicks inside a large disk was a part
        low, iou = model.decode(feats, xy, np.ones(len(xy), int), None, None, True, None)
        best = int(np.argmax(iou))
        hit = model.mask(low[best], frame.input, frame.original, session.threshold)
    if hit is None:
        return (None, None), float(iou[best])
    crop, (r0, c0) = hit
    r0, c0 = r0 - offset[0], c0 - offset[1]  # to the plane, then cut by it
    a, b, c, d = max(r0, 0), min(r0 + crop.shape[0], h), max(c0, 0), min(c0 + crop.shape[1], w)
    if a >= b or c >= d:
        return (None, None), float(iou[best])
    return pack_crop((crop[a - r0:b - r0, c - c0:d - c0], (a, c))), float(iou[best])


def look(session, k: int, state, rc: np.ndarray):
    """``state`` (slice ``k``, after its first prompt, positive clicks at ``rc`` (N, 2) (row, col), and
    the zoom step), or the wide view's mask in its place when the module docstring's test says so; the
    new state's logits (the next ``mask_input`` when the edge step is off) are made from that mask."""
    if state.bits is None:
        return state
    # both outlines may sit up to half a logit cell of the view that drew them off the object's edge, so
    # they are measured that far inside and outside them (the edge step redraws them next); the first
    # mask's view is the zoom window when it won there. NaN (a mask too thin to measure) is kept.
    low, z = session.model.lowres_size, state.zoom
    h, w = session._plane_shape()
    cell = max(h, w) / low  # a full-view logit cell, in pixels
    drawn = max(z.window[1] - z.window[0], z.window[3] - z.window[2]) / low if z is not None and z.own else cell
    contrast, spread = _measure(session, k, state.bits, state.extent, int(np.ceil(drawn / 2)))
    if not contrast < FLAT:
        return state
    (bits, extent), score = decode(session, k, rc)
    if bits is None:
        return state
    plane = crop_of(bits, extent, (0, h, 0, w))
    r, c = np.floor(np.asarray(rc, float).reshape(-1, 2)).astype(int).T
    held = plane[np.clip(r, 0, h - 1), np.clip(c, 0, w - 1)].all()
    wide_contrast, wide_spread = _measure(session, k, bits, extent, int(np.ceil(SHRINK * cell / 2)))
    # the flat region the blob lies in is what the wide view should find: as uniform as the blob inside
    if not held or not wide_contrast >= CLEAR or not wide_spread <= ALIKE * spread:
        return state
    return replace(state, bits=bits, extent=extent, score=score, logits=session.frame.mask_to_lowres(plane, low),
                   zoom=None)
