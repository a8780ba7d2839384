"""The current object and the labels: starting from an existing mask, and committing into the labels.

Functions of a :class:`promptseg.Session` (its methods ``set_mask``, ``edit`` and ``commit`` call them), kept
apart so the session module stays about prompting.
"""

from __future__ import annotations

import numpy as np

from ._state import EMPTY, SliceState, lazy_zeros, pack
from .errors import ImageError, PromptError
from .tiled_decode import mask_to_tiles


def mask_step(session, mask, z: int | None = None) -> dict:
    """The undo step {slice: (before, after)} that makes ``mask`` the session's current object.

    ``mask``: bool-like of the image's spatial shape, or of one slice's shape with ``z`` given (3D).
    Each slice's state gets the mask and its low-resolution logits, as a prompt's ``mask_input``.
    """
    mask = np.asarray(mask).astype(bool)
    if session.ndim == 3 and z is not None:
        if mask.shape != session._plane_shape():
            raise ImageError(f"mask of shape {mask.shape} does not fit slice shape {session._plane_shape()}")
        if not 0 <= z < session.store.n_slices:
            raise PromptError(f"slice {z} is outside 0..{session.store.n_slices - 1}")
        planes = {int(z): mask}
    elif mask.shape != session.shape:
        raise ImageError(f"mask of shape {mask.shape} does not match the image's spatial shape {session.shape}")
    elif session.ndim == 2:
        planes = {0: mask}
    else:
        vol = np.moveaxis(mask, session.axis, 0)
        present = set(np.flatnonzero(vol.reshape(len(vol), -1).any(axis=1)).tolist())
        planes = {int(k): vol[k] for k in present | set(session._states)}
    step = {}
    for k, m in planes.items():
        if m.any():
            bits, extent = pack(m)
            if session.tiled:
                r0, r1, c0, c1 = extent
                logits = mask_to_tiles(session, m[r0:r1, c0:c1], (r0, c0))
            else:
                logits = session.frame.mask_to_lowres(m, session.model.lowres_size)
            new = SliceState(logits=logits, score=1.0, bits=bits, extent=extent)
        else:
            new = EMPTY
        step[k] = (session._states.get(k, EMPTY), new)
    return step


def region(session, label_id: int) -> tuple:
    """Where committed object ``label_id`` can be: its recorded box on a tiled image (a slide, whose
    labels are too big to scan), else the whole image; a tuple of slices."""
    box = next((o.get("bbox") for o in reversed(session.objects) if o["id"] == label_id), None) if session.tiled else None
    return tuple(slice(a, b) for a, b in box) if box else (slice(None),) * session.ndim


def mask_of(session, label_id: int) -> np.ndarray:
    """Committed object ``label_id`` as a bool mask of the image's shape (for ``Session.edit``)."""
    where = region(session, label_id)
    mask = lazy_zeros(session.shape, bool)
    mask[where] = session.labels[where] == label_id
    if label_id <= 0 or not mask.any():
        raise PromptError(f"there is no object with id {label_id} in the labels")
    return mask


def commit(session, overwrite: bool) -> int:
    """Write the session's current object into its labels (see ``Session.commit``); returns the id."""
    session.refine()
    filled = {k: s for k, s in session._states.items() if s.bits is not None}
    if not filled:
        raise PromptError("nothing to commit: the current object is empty")
    if session.editing is not None:
        label_id = session.editing
        part = session.labels[region(session, label_id)]
        part[part == label_id] = 0
    else:
        label_id = int(session.labels.max(initial=0)) + 1
    labels = session._planes(session.labels)
    masks = session._planes(session._mask)
    for k, state in filled.items():
        r0, r1, c0, c1 = state.extent  # only the object's box: a commit on a slide touches no more
        m = masks[k, r0:r1, c0:c1]
        target = labels[k, r0:r1, c0:c1]
        target[m if overwrite else (m & (target == 0))] = label_id
        m[:] = False
    bbox = [[b.start, b.stop] for b in session.bbox]
    session.objects.append({"id": label_id, "prompts": session.prompts(), "edited": session.editing is not None, "bbox": bbox})
    session._states.clear()
    session._undo.clear()
    session._redo.clear()
    session.editing = None
    return label_id
