"""What a person's next prompt starts from, once the edge refiner has redrawn the mask.

Two rules of the Session, for a slice whose mask the edge step (:mod:`promptseg.edges`) redrew; neither
applies to propagation's walk, which carries the decoder's own logits and mask from slice to slice.

* **The mask shown is fed back** (:func:`shown`). The decoder's ``mask_input`` for the next prompt (and
  the zoom window's, :mod:`promptseg.zoom`) is made from the mask on screen, as
  :meth:`~promptseg.preprocess.Frame.mask_to_lowres` makes one from a mask, not taken from the
  decoder's own low-resolution logits of the last prompt. The correction then starts from what the
  annotator sees and corrects, with the refiner's boundary and every honoured click in it. The
  decoder's own logits, fed back prompt after prompt, drift away from the mask shown on large
  low-contrast objects: patches of cell-sized fragments that the refiner hides, until one click lets
  them through and the mask collapses.
* **A click that undoes itself is made a local edit** (:func:`guard`). A positive click after which the
  mask shrank by more than :data:`LIMIT` of its area, or a negative one after which it grew by more
  than that, did the opposite of what it asked. The mask from before the click is then edited at the
  click only: a positive click adds the new mask's connected part that holds it; a negative one
  removes the connected part of what the new mask took away that holds it; the clicked pixel gets its
  label. The zoom window is dropped, so the next prompt places a new one. Areas are compared net, so
  a click may still reshape the mask (take in more of the object while it drops a false part).

The stored ``SliceState.logits`` stay the decoder's; :func:`shown` is applied as a prompt is decoded.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage as ndi

from ._state import crop_of, pack, plane_mask
from .preprocess import Frame
from .prompts import Point

LIMIT = 0.2  # a click may shrink (positive) or grow (negative) the mask by at most this fraction


def shown(session, state):
    """``state`` with its logits, and its zoom window's, made from the mask it shows (module docstring).

    Unchanged when the edge step did not redraw that mask (``state.unrefined`` is None) or it is empty.
    """
    from .zoom import ZoomView

    if state.unrefined is None or state.bits is None:
        return state
    mask = plane_mask(state, session._plane_shape())
    low = session.model.lowres_size
    out = replace(state, logits=session.frame.mask_to_lowres(mask, low))
    z = state.zoom
    if isinstance(z, ZoomView) and z.own:  # (a window that has not won keeps the full view's mask already)
        r0, r1, c0, c1 = z.window
        frame = Frame.for_shape((r1 - r0, c1 - c0), session.model.input_size, session.model.spec.resize)
        out = replace(out, zoom=z._replace(logits=frame.mask_to_lowres(mask[r0:r1, c0:c1], low)))
    return out


def added_click(before, after) -> Point | None:
    """The one click that turned slice state ``before`` into ``after`` (same box and squiggles), else None."""
    n = len(before.points)
    if len(after.points) != n + 1 or after.points[:n] != before.points:
        return None
    if after.box != before.box or after.scribbles != before.scribbles:
        return None
    return after.points[-1]


def local_edit(before: np.ndarray, after: np.ndarray, rc, positive: bool, limit: float = LIMIT):
    """The mask a click should have given, when the prediction after it undid it; else None.

    before, after : bool (H, W), the masks before and after the click; rc : the click (row, col) in
    that plane; positive : its label. Returns bool (H, W): ``before`` edited at the click (module
    docstring) when ``after``'s area is smaller (positive) or larger (negative) than ``before``'s by
    more than ``limit`` x ``before``'s; None when ``after`` stands.
    """
    grown = int(after.sum()) - int(before.sum())  # (net: a mask may move as a click reshapes it)
    if (-grown if positive else grown) <= limit * max(int(before.sum()), 1):
        return None
    r, c = int(round(rc[0])), int(round(rc[1]))
    labels, _ = ndi.label(after if positive else before & ~after)
    out = before.copy()
    if labels[r, c]:
        part = labels == labels[r, c]
        out = (out | part) if positive else (out & ~part)
    out[r, c] = positive
    return out


def guard(session, before, after):
    """``after``, or the local edit of ``before`` when the one click between them undid itself.

    before, after : the SliceStates of one slice around a prompt; applies only when ``after``'s mask
    was redrawn by the edge step, ``before`` showed a mask and the prompt was one click.
    """
    click = added_click(before, after)
    if click is None or after.unrefined is None or before.bits is None:
        return after
    # both masks and the click lie in the union of the extents (grown to the click): work on that crop
    h, w = session._plane_shape()
    r, c = min(max(int(round(click.rc[0])), 0), h - 1), min(max(int(round(click.rc[1])), 0), w - 1)
    boxes = [e for e in (before.extent, after.extent) if e is not None] + [(r, r + 1, c, c + 1)]
    win = (min(e[0] for e in boxes), max(e[1] for e in boxes), min(e[2] for e in boxes), max(e[3] for e in boxes))
    r0, c0 = win[0], win[2]
    edit = local_edit(crop_of(before.bits, before.extent, win), crop_of(after.bits, after.extent, win),
                      (r - r0, c - c0), click.positive)
    if edit is None:
        return after
    bits, extent = pack(edit, (r0, c0)) if edit.any() else (None, None)
    return replace(after, bits=bits, extent=extent, zoom=None)
