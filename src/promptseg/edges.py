"""The Session's last step on a prompt: the model's edge refiner redraws the mask's boundary.

After the decoder (and the zoom window, :mod:`promptseg.zoom`) a slice's mask is cut out with
:data:`~promptseg.models.edges.MARGIN` pixels around it, from the image as the encoder sees it (the
Session's intensity mapping, before resizing), and given to the model's
:class:`~promptseg.models.edges.EdgeRefiner` with the slice's clicks, squiggle points and box; its output
replaces the mask. The state keeps the decoder's own logits (propagation carries them from slice to
slice); a person's next prompt starts from the refined mask shown (:mod:`promptseg.feedback`).

Cost: the refiner runs at the image's pixels, so a crop of more than :data:`MAX_PIXELS` is averaged
down by an integer factor to fit, refined there and its logits scaled back: a large object's boundary
is then placed to within that factor, which is small next to the object. A viewer that defers the zoom
step (``Session.defer_zoom``) defers this step with it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ._state import pack_crop, unpack

MAX_PIXELS = 128 * 128  # a larger crop is refined at a coarser scale (module docstring)


def refine(session, k: int, state, rc: np.ndarray, flags: np.ndarray, own: int | None = None):
    """``state`` (a :class:`~promptseg._state.SliceState` of slice ``k``) with its mask redrawn; the
    mask it was given is kept as its ``unrefined`` (bits, extent), the refiner's input (for training).

    rc : (N, 2) float (row, col) of the slice's point prompts (squiggle points included) in the plane;
    flags : (N,) bool, positive. own : the first ``own`` points are the user's (None: all); the rest
    carry a mask along a propagation walk. The user's are honoured: each clicked pixel gets its click's
    label (``PromptModel.honour_clicks``). An empty mask is returned unchanged (the refiner moves
    boundaries; it does not find objects).
    """
    from .models.edges import MARGIN

    if state.bits is None:
        return state
    h, w = session._plane_shape()
    r0, r1, c0, c1 = state.extent
    a, b, c, d = max(0, r0 - MARGIN), min(h, r1 + MARGIN), max(0, c0 - MARGIN), min(w, c1 + MARGIN)
    emb = session.embedder
    rgb = emb.intensity.apply(emb.raw_slice(k)[a:b, c:d])
    mask = np.zeros((b - a, d - c), bool)
    mask[r0 - a:r1 - a, c0 - c:c1 - c] = unpack(state.bits, state.extent)
    points = np.asarray(rc, float).reshape(-1, 2) - (a, c)
    box = None if state.box is None else (state.box.r0 - a, state.box.c0 - c, state.box.r1 - a, state.box.c1 - c)
    honoured = np.arange(len(points)) < (len(points) if own is None else own)
    new = session.model.refine_edges(rgb, mask, points, np.asarray(flags, bool), box, max_pixels=MAX_PIXELS,
                                     honoured=honoured)
    bits, extent = pack_crop((new, (a, c)))
    return replace(state, bits=bits, extent=extent, unrefined=(state.bits, state.extent))
