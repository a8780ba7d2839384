"""Zoom: predict a small object again from a crop around it, encoded at the model's full input size.

A model's low-resolution logits are ``input_size / 4`` cells across the whole image (64 for the shipped
default, whose input is 256 px), so an object a few cells wide cannot get an exact boundary however
many clicks it gets. When the object is small next to the image, the Session cuts a square *window*
around it (the object's box grown by :data:`EXPAND`, at least ``input_size * MIN_FRACTION`` pixels),
embeds that window as an image of its own (kept in memory) and decodes the prompts that fall inside it,
with the full view's mask as the first ``mask_input``; later clicks feed the window's own mask back
(its logits, or the refined mask shown: :mod:`promptseg.feedback`).
The full view still runs first on every prompt: it finds the object and so places the first window;
after that the window follows the zoomed mask and the positive prompts, and moves only when they reach
its margin (:func:`keeps`) or the zoomed mask runs into its edge, so a correction click reuses the
window's embedding and the logits it fed back. A new window starts from the full view's mask, keeping
the previous window's finer boundary where the two agree. Until the window has won once, its mask
replaces the full view's only when its predicted IoU is at least as high: on real images unlike the
training data (scikit-image's coins), a magnified object's texture can mislead the decoder where the
full view did well, and the decoder's own IoU estimate tells the two cases apart. A full view that
sprawls too far for a window with a predicted IoU below :data:`UNSURE` (a thin object below its grid
can make the decoder flood the image) gets one more look: a window of :data:`UNSURE_FRACTION` of the
image around the prompts, decoded from the prompts alone (a lone click as SAM's three masks, the best
by predicted IoU), under the same IoU rule.

A viewer can set ``Session.defer_zoom``: a prompt then returns the full view's mask at once (one decoder
pass), and ``Session.refine()``, called once that mask is on screen, does the zoom step (and the edge
refiner's, :mod:`promptseg.edges`) and completes the prompt's undo step; the masks are the same as
without deferring.

The trainer cuts the same windows around training objects (:func:`window` with a random growth), so the
model learns the enlarged, softer crops it is given here.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._state import crop_of
from .preprocess import Frame

EXPAND = 1.6  # window side = EXPAND x the longest side of the object's box
MIN_FRACTION = 0.25  # window side >= input_size * MIN_FRACTION image pixels: at most 4x magnification
MAX_FRACTION = 2 / 3  # zoom only when the window's side is at most this fraction of the image's longest side
MARGIN = 0.08  # a window is kept while the object stays this fraction of its side away from its edges
UNSURE = 0.5  # a full view's predicted IoU below this, with no window of its own: try one around the prompts
UNSURE_FRACTION = 0.25  # ... whose side is this fraction of the image's longest side


def window(core: tuple, plane: tuple[int, int], input_size: int, expand: float = EXPAND, shift=(0.0, 0.0)):
    """The zoom window around an object's box, or None when zooming would not magnify it enough.

    Parameters
    ----------
    core : (r0, r1, c0, c1) half-open box (pixels of the plane) of the object and its positive prompts.
    plane : (H, W) of the image plane.
    input_size : the model's input side (pixels).
    expand : window side over the box's longest side.
    shift : (row, col) offset of the window's centre, in units of its side (training draws it).

    Returns
    -------
    (r0, r1, c0, c1) half-open, inside the plane, square unless cut by the plane's border; or None.
    """
    r0, r1, c0, c1 = core
    h, w = plane
    side = max(expand * max(r1 - r0, c1 - c0), input_size * MIN_FRACTION)
    if side > MAX_FRACTION * max(h, w):
        return None
    side = int(np.ceil(side))
    out = []
    for a, b, n, d in ((r0, r1, h, shift[0]), (c0, c1, w, shift[1])):
        s = min(side, n)
        start = int(round((a + b) / 2 + d * s - s / 2))
        start = min(max(start, 0), n - s)
        out += [start, start + s]
    return tuple(out)


def keeps(win: tuple, core: tuple, plane: tuple[int, int], input_size: int) -> bool:
    """Whether window ``win`` still serves an object whose box (with its positive prompts) is ``core``.

    It does while the box stays :data:`MARGIN` of the side away from every window edge that is not the
    image border, and while the window is not more than twice the size a new one would have.
    """
    r0, r1, c0, c1 = core
    wr0, wr1, wc0, wc1 = win
    m = MARGIN * max(wr1 - wr0, wc1 - wc0)
    h, w = plane
    inside = ((r0 >= wr0 + m or wr0 == 0) and (r1 <= wr1 - m or wr1 == h)
              and (c0 >= wc0 + m or wc0 == 0) and (c1 <= wc1 - m or wc1 == w))
    new = window(core, plane, input_size)
    return inside and new is not None and max(wr1 - wr0, wc1 - wc0) <= 2 * max(new[1] - new[0], new[3] - new[2])


def box_of(mask: np.ndarray | None, points=(), box=None) -> tuple | None:
    """Half-open (r0, r1, c0, c1) around a bool mask (H, W), (row, col) points and a (r0, c0, r1, c1)
    box; None when all are empty."""
    rows, cols = [], []
    if mask is not None and mask.any():
        rr, cc = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        rows += [rr[0], rr[-1]]
        cols += [cc[0], cc[-1]]
    for r, c in points:
        rows.append(r)
        cols.append(c)
    if box is not None:
        rows += [box[0], box[2]]
        cols += [box[1], box[3]]
    if not rows:
        return None
    return int(np.floor(min(rows))), int(np.floor(max(rows))) + 1, int(np.floor(min(cols))), int(np.floor(max(cols))) + 1


def resize_labels(labels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an int label image (h, w) to ``hw`` (pixel centres mapped)."""
    h, w = labels.shape
    rows = np.minimum(((np.arange(hw[0]) + 0.5) * h / hw[0]).astype(int), h - 1)
    cols = np.minimum(((np.arange(hw[1]) + 0.5) * w / hw[1]).astype(int), w - 1)
    return labels[rows[:, None], cols[None, :]]


class ZoomView(NamedTuple):
    """A slice's zoom window (r0, r1, c0, c1), the (1, L, L) float32 logits predicted in it, and the mask
    they gave (packed ``bits`` over ``extent``, as in ``_state.pack``)."""

    window: tuple
    logits: np.ndarray
    bits: np.ndarray | None = None
    extent: tuple | None = None
    own: bool = True  # False: the full view's mask was kept (its logits, made from that mask, feed the window)


class Pending(NamedTuple):
    """A slice whose zoom step was deferred (``Session.defer_zoom``); ``previous``: its last ZoomView;
    ``first_clicks``: the slice's prompts are positive clicks alone (:mod:`promptseg.wide`)."""

    previous: ZoomView | None
    first_clicks: bool = False


def cached(session, key, make):
    """The embedding under ``key`` in the session's small memory cache of extra views (zoom windows, the
    wide view of :mod:`promptseg.wide`), made by ``make()`` when missing; the 8 most recent are kept."""
    cache = session._zoom_cache
    if key not in cache:
        cache[key] = make()
        while len(cache) > 8:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return cache[key]


def features(session, k: int, win: tuple):
    """(1, C, g, g) embedding of window ``win`` of slice ``k``, kept in the session's small memory cache."""

    def make():
        emb = session.embedder
        r0, r1, c0, c1 = win
        rgb = emb.intensity.apply(emb.raw_slice(k)[r0:r1, c0:c1])
        frame = Frame.for_shape((r1 - r0, c1 - c0), session.model.input_size, session.model.spec.resize)
        return session.model.encode([frame.resize(rgb)])

    return cached(session, (k, win), make)


def _seed(full, previous: ZoomView | None, win: tuple, cell: int) -> np.ndarray:
    """The mask a new window starts from, bool (h, w) in the window: the full view's mask, but where an
    earlier window's (finer) mask lies within one full-view cell of it, that mask's boundary."""
    new = crop_of(full.bits, full.extent, win)
    if previous is None or previous.bits is None:
        return new
    from scipy import ndimage as ndi

    old = crop_of(previous.bits, previous.extent, win)
    near_new = ndi.distance_transform_edt(~new) <= cell if new.any() else np.zeros_like(new)
    near_old = ndi.distance_transform_edt(~old) <= cell if old.any() else np.zeros_like(old)
    return (old & near_new) | (new & ~near_old)


def _at_inner_edge(extent: tuple, win: tuple, plane: tuple[int, int]) -> bool:
    """Whether a mask's extent reaches an edge of the window that is not the image border."""
    r0, r1, c0, c1 = extent
    wr0, wr1, wc0, wc1 = win
    return (r0 <= wr0 and wr0 > 0) or (r1 >= wr1 and wr1 < plane[0]) or (c0 <= wc0 and wc0 > 0) or \
        (c1 >= wc1 and wc1 < plane[1])


def refine(session, k: int, full, previous: ZoomView | None, rc: np.ndarray, flags: np.ndarray, box, scribbles):
    """Zoom into the object of slice ``k`` and predict it again there (see the module docstring).

    Parameters
    ----------
    session : the Session (its model, embedder, plane shape and threshold are used).
    full : the SliceState just predicted on the full view (logits, score, mask).
    previous : the slice's zoom view before this prompt, or None.
    rc, flags : (N, 2) (row, col) points in the plane and (N,) bool (positive), squiggle points included.
    box : the slice's Box or None; scribbles : the slice's ((stroke, positive), ...).

    Returns
    -------
    ``full`` with the zoomed mask, score and ``zoom`` view; ``full``'s own mask with a ``zoom`` view that
    does not own it (``own=False``) when the window has not won yet and its predicted IoU is lower; or
    ``full`` unchanged when the object is too large to gain from zooming (or there is nothing to zoom on).
    """
    from dataclasses import replace

    from ._state import pack_crop, strokes_for

    plane, model = session._plane_shape(), session.model
    size, lowres = model.input_size, model.lowres_size
    # the object's extent: the last zoomed mask when there is one (finer and steadier than the full view,
    # which may wander off after a click; a mask that outgrows its window is caught below), else the
    # full view's; with the positive prompts and the box
    e = previous.extent if previous is not None and previous.extent is not None else full.extent
    corners = [] if e is None else [(e[0], e[2]), (e[1] - 1, e[3] - 1)]
    bx = None if box is None else (box.r0, box.c0, box.r1, box.c1)
    pos = [tuple(p) for p in rc[flags]]  # the positive clicks (row, col)
    core = box_of(None, pos + corners, bx)
    if core is None:
        return full
    fresh = False  # decode the window from the prompts alone, without a mask_input
    if previous is not None and keeps(previous.window, core, plane, size):
        win, prior = previous.window, previous.logits
    else:
        win, prior = window(core, plane, size), None
        near = box_of(None, pos, bx) if win is None and previous is None else None
        if near is not None and full.score < UNSURE:
            # an unsure full view that sprawls (a thin object below its grid, say): look closer at the
            # prompts themselves; the window must still beat the full view's predicted IoU (below)
            half = max(plane) * UNSURE_FRACTION / 2  # a window of that fraction of the image around them
            rm, cm = (near[0] + near[1]) / 2, (near[2] + near[3]) / 2
            core = (min(near[0], int(rm - half)), max(near[1], int(rm + half)), min(near[2], int(cm - half)),
                    max(near[3], int(cm + half)))
            win, fresh = window(core, plane, size, expand=1.0), True
    if win is None:
        return full
    cell = int(np.ceil(max(plane) / lowres))  # a full-view logit cell, in image pixels
    seed = None if prior is not None or fresh else _seed(full, previous, win, cell)  # a new window's first mask_input
    for _attempt in range(2):  # a second time when the zoomed mask runs into the window's edge
        r0, r1, c0, c1 = win
        frame = Frame.for_shape((r1 - r0, c1 - c0), size, model.spec.resize)
        if prior is None and seed is not None:
            prior = frame.mask_to_lowres(seed, lowres)
        inside = (rc[:, 0] >= r0) & (rc[:, 0] < r1) & (rc[:, 1] >= c0) & (rc[:, 1] < c1)
        local = rc[inside] - (r0, c0)
        xy, labels = (frame.to_input_xy(local), flags[inside].astype(int)) if len(local) else (None, None)
        box_in = None
        if bx is not None:
            box_in = frame.box_to_input(max(bx[0], r0) - r0, max(bx[1], c0) - c0, min(bx[2], r1 - 1) - r0,
                                        min(bx[3], c1 - 1) - c0)
        strokes = strokes_for(model, frame, scribbles, (r0, c0))
        multi = prior is None and len(rc) == 1 and bx is None  # a lone click, no mask: SAM's three masks
        low, iou = model.decode(features(session, k, win), xy, labels, box_in, prior, multi, strokes)
        if multi:
            best = int(np.argmax(iou))
            low, iou = low[best:best + 1], iou[best:best + 1]
        hit = model.mask(low[0], frame.input, frame.original, session.threshold)
        bits, extent = pack_crop(None if hit is None else (hit[0], (hit[1][0] + r0, hit[1][1] + c0)))
        if extent is None or not _at_inner_edge(extent, win, plane):
            break
        e = extent  # the object goes on beyond the window: a larger one around both, seeded with this mask
        grown = window((min(core[0], e[0]), max(core[1], e[1]), min(core[2], e[2]), max(core[3], e[3])), plane, size)
        if grown is None:  # too large to gain from a window: the full view's prediction stands
            return full
        if grown == win:
            break
        win, prior, seed = grown, None, crop_of(bits, extent, grown)
    if (previous is None or not previous.own) and float(iou[0]) < full.score:  # the full view stays, for now
        fb = frame.mask_to_lowres(crop_of(full.bits, full.extent, win), lowres)
        return replace(full, zoom=ZoomView(win, fb, full.bits, full.extent, own=False))
    return replace(full, bits=bits, extent=extent, score=float(iou[0]),
                   zoom=ZoomView(win, low[0:1].copy(), bits, extent))


def refine_pending(session) -> dict:
    """The deferred zoom (and edge) steps of a session's slices, as an undo step {slice: (pending,
    refined)}; each refined state also replaces the pending one in the undo record that made it."""
    from dataclasses import replace

    from ._state import points_of
    from .feedback import guard

    step = {}
    for k, st in session._states.items():
        if isinstance(st.zoom, Pending):
            rc, flags = points_of(st)
            done = session._finish(k, replace(st, zoom=None), st.zoom.previous, rc, flags, st.box, st.scribbles,
                                   first_clicks=st.zoom.first_clicks)
            step[k] = (st, done)
    for k, (pending, done) in step.items():
        for rec in reversed(session._undo):
            if k in rec and rec[k][1] is pending:
                done = guard(session, rec[k][0], done)  # a click that undid itself (as Session._update)
                step[k], rec[k] = (pending, done), (rec[k][0], done)
                break
    return step
