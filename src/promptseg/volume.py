"""3D propagation: carry the current object of a :class:`promptseg.Session` through a volume.

Slices that carry prompts are *key slices*. From each key slice the object is carried slice by slice
along the session's axis: the previous slice's low-resolution logits become the next slice's
``mask_input``, together with a positive squiggle along the previous mask's long axis through its
innermost pixel (``promptseg.evaluate.squiggle``; models without a squiggle input get its points). Both
are the decoder's own (before the edge step, :mod:`promptseg.edges`), and so are the masks the stop
rules below compare.
(With a single point at the innermost pixel the decoder shrank large flat objects towards the point
from slice to slice; with a box around the previous mask it found *something* inside the box on every
slice, so walks ran past the object's end.)

A walk stops at the end of the volume or of ``z_range``, at a stop mark (:meth:`Session.set_stop`), at
the next key slice, or when the object ends: the mask vanishes, the decoder's predicted IoU falls below
``min_score``, the area falls below ``min_area_ratio`` of the previous slice's, or the IoU with the
previous slice's mask drops below ``stop_iou``. Between two key slices both walks run and their logits
are blended linearly by distance, so each key slice dominates near itself. Propagated slices hold no
prompts of their own; a prompt on one makes it a key slice (its propagated logits are fed back as the
correction's ``mask_input``), and ``propagate(start=k)`` then redoes only the stretches next to slice
``k``. The whole propagation is one undo step.
"""

from __future__ import annotations

import numpy as np

from ._state import EMPTY, SliceState, decoded_mask, pack_crop, plane_mask
from .errors import PromptError


def _carry(mask: np.ndarray) -> tuple:
    """The prompt that carries ``mask`` (H, W) bool to the next slice: ((stroke, True),) as scribbles."""
    from .evaluate import squiggle

    return ((tuple(map(tuple, squiggle(mask))), True),)


def _walk(session, start: int, step: int, limit: int, stops, stop_iou: float, min_area_ratio: float, min_score: float,
          tick) -> dict:
    """Carry slice ``start``'s state towards ``limit`` (inclusive); returns {slice: SliceState}."""
    plane = session._plane_shape()
    prev = session._states[start]
    prev_mask = decoded_mask(prev, plane)  # the decoder's, as its logits: the refiner's changes do not compound
    out = {}
    for j in range(start + step, limit + step, step):
        if j in stops:
            break
        state = session._decode(j, SliceState(logits=prev.logits), extra_scribbles=_carry(prev_mask))
        tick()
        if state.bits is None or state.score < min_score:
            break
        mask = decoded_mask(state, plane)
        overlap = (mask & prev_mask).sum() / max((mask | prev_mask).sum(), 1)
        if mask.sum() < min_area_ratio * prev_mask.sum() or overlap < stop_iou:
            break
        out[j] = state
        prev, prev_mask = state, mask
    return out


def _blend(session, j: int, a: int, c: int, fwd: SliceState, bwd: SliceState) -> SliceState:
    """Mix the logits of the walks from key slices ``a`` (below) and ``c`` (above) on slice ``j``."""
    w = (j - a) / (c - a)
    logits = ((1 - w) * fwd.logits + w * bwd.logits).astype(np.float32)
    bits, extent = pack_crop(session.model.mask(logits[0], session.frame.input, session.frame.original,
                                                 session.threshold))
    state = SliceState(logits=logits, score=(1 - w) * fwd.score + w * bwd.score, bits=bits, extent=extent)
    if session.zoom and bits is not None:  # the blend lives on the full view's grid: zoom in on it again
        carry = _carry(plane_mask(state, session._plane_shape()))
        zoomed = session._decode(j, SliceState(logits=logits), extra_scribbles=carry)
        if zoomed.bits is not None:
            return zoomed  # (with the edge step, when the session runs it)
    if session.edges and bits is not None:
        from . import edges

        state = edges.refine(session, j, state, np.zeros((0, 2)), np.zeros(0, bool))
    return state


def propagate(session, *, start: int | None = None, z_range=None, stop_iou: float = 0.25, min_area_ratio: float = 0.15,
              min_score: float = 0.6, progress=None):
    """Propagate the session's current object through its volume (see the module docstring).

    Parameters
    ----------
    session : a Session on a 3D image.
    start : a key slice: redo only the stretches next to it (after a correction); default: all.
    z_range : (first, last) slices, inclusive, that propagation may fill; default: the whole volume.
    stop_iou, min_area_ratio, min_score : when the object is taken to end (see above).
    progress : called as ``progress(done, total)`` after each slice decoded (total is an upper bound).

    Returns
    -------
    Prediction spanning every slice that changed.
    """
    if session.ndim != 3:
        raise PromptError("propagation needs a 3D volume; this session's image is 2D")
    n = session.store.n_slices
    lo, hi = (0, n - 1) if z_range is None else (int(z_range[0]), int(z_range[1]))
    if not (0 <= lo <= hi < n):
        raise PromptError(f"z range {tuple(z_range)} is outside the volume's slices 0..{n - 1}")
    keys = sorted(k for k, s in session._states.items() if s.has_prompts and s.bits is not None and lo <= k <= hi)
    if not keys:
        raise PromptError("nothing to propagate: segment the object on a slice (within the z range) first")
    if start is not None and start not in keys:
        raise PromptError(f"slice {start} has no prompts; propagate from a slice you prompted on")
    bounds = [lo - 1] + keys + [hi + 1]  # stretches between consecutive keys, and beyond the ends
    stretches = [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1) if bounds[i + 1] - bounds[i] > 1]
    if start is not None:
        stretches = [(a, c) for a, c in stretches if start in (a, c)]
    total = sum(2 * (c - a - 1) if lo <= a and c <= hi else c - a - 1 for a, c in stretches)
    done = [0]

    def tick():
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    stops = set(session.stops)
    new: dict[int, SliceState] = {}
    for a, c in stretches:
        args = (stops, stop_iou, min_area_ratio, min_score, tick)
        fwd = _walk(session, a, +1, c - 1, *args) if a >= lo else {}
        bwd = _walk(session, c, -1, a + 1, *args) if c <= hi else {}
        for j in range(a + 1, c):
            if j in fwd and j in bwd:
                new[j] = _blend(session, j, a, c, fwd[j], bwd[j])
            elif j in fwd or j in bwd:
                new[j] = fwd.get(j) or bwd.get(j)
            else:
                new[j] = EMPTY
    step = {j: (session._states.get(j, EMPTY), s) for j, s in new.items()
            if not (s is EMPTY and session._states.get(j, EMPTY) is EMPTY)}
    return session._apply(step, record=True)
