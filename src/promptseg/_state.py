"""The per-slice state of a Session's current object, and small helpers for masks and boxes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .prompts import Box, Point, as_coords, check_inside, clip_box, clip_stroke, scribble_to_points


@dataclass(frozen=True)
class SliceState:
    """Immutable state of the current object on one slice (an undo step swaps these)."""

    points: tuple = ()
    box: Box | None = None
    scribbles: tuple = ()  # ((stroke as tuple of (row, col)), positive) pairs
    logits: object = None  # (1, L, L) float32 fed back as mask_input; a tiled image: {tile: TileLogits}
    score: float = 0.0
    bits: np.ndarray | None = None  # np.packbits of the mask inside ``extent``; None = empty
    extent: tuple | None = None  # (r0, r1, c0, c1) half-open bounds of the mask, None = empty
    zoom: object = None  # promptseg.zoom.ZoomView when the mask was predicted in a zoom window
    unrefined: tuple | None = None  # (bits, extent) of the mask before the edge step redrew it, else None

    @property
    def empty(self) -> bool:
        return self.bits is None and not self.has_prompts

    @property
    def has_prompts(self) -> bool:
        return bool(self.points or self.scribbles) or self.box is not None


EMPTY = SliceState()


def lazy_zeros(shape, dtype) -> np.ndarray:
    """Zeros of ``shape`` whose memory the OS maps on first write, in small pages.

    numpy asks Linux for transparent huge pages for arrays of 4 MB and more, and the first write into
    a fresh 2 MB page then clears (and may first have to compact) the whole page: measured here 0.2-5 ms
    per first write into a slice of a 200 x 512 x 512 buffer, against 0.04 ms with small pages. A
    Session's mask and labels and the annotator's layer buffer are written a box at a time, often into
    slices never touched before, so they take small pages. Elsewhere (or under 4 MB): ``np.zeros``.
    """
    import mmap

    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    advice = getattr(mmap, "MADV_NOHUGEPAGE", None)
    if n < 4 << 20 or advice is None:
        return np.zeros(shape, dtype)
    buf = mmap.mmap(-1, n)  # anonymous: zero pages, allocated when written
    buf.madvise(advice)
    return np.frombuffer(buf, dtype).reshape(shape)


def prompts_json(states: dict) -> dict:
    """{slice: SliceState} -> the prompts per slice as JSON types: {slice: {"points", "box", "scribbles"}}."""
    out = {}
    for k, s in sorted(states.items()):
        if s.has_prompts:
            out[int(k)] = {
                "points": [[*p.rc, int(p.positive)] for p in s.points],
                "box": None if s.box is None else [s.box.r0, s.box.c0, s.box.r1, s.box.c1],
                "scribbles": [[[list(rc) for rc in line], int(f)] for line, f in s.scribbles],
            }
    return out


def strokes_for(model, frame, scribbles, origin=(0.0, 0.0)):
    """The stroke map (1, 2, L, L) of a slice's squiggles for a model with a native squiggle input, else None.

    ``frame`` is the slice's (or tile's) :class:`~promptseg.preprocess.Frame`; ``origin`` the (row, col)
    of that frame's first pixel in the squiggles' coordinates (a tile's corner).
    """
    if not scribbles or not model.has_strokes:
        return None
    from .prompts import stroke_map

    lowres = model.lowres_size
    scale = lowres / frame.size

    def to_lowres(rc):
        return frame.to_input_xy(rc - np.asarray(origin))[:, ::-1] * scale

    return stroke_map(scribbles, to_lowres, lowres)


def points_of(state: SliceState) -> tuple[np.ndarray, np.ndarray]:
    """The clicks of a state plus well-spread points along its squiggles: ((N, 2) (row, col), (N,) bool)."""
    rc = [p.rc for p in state.points]
    flags = [p.positive for p in state.points]
    for line, positive in state.scribbles:
        spread = scribble_to_points(np.asarray(line))
        rc += [tuple(v) for v in spread]
        flags += [positive] * len(spread)
    return np.asarray(rc, dtype=float).reshape(-1, 2), np.asarray(flags, dtype=bool)


def with_extras(state: SliceState, extra_scribbles=(), extra_points=None) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`points_of` ``state`` plus the points of ``extra_scribbles`` and ``extra_points`` ((N, 2), (N,))
    that propagation adds: ((M, 2) (row, col), (M,) bool, the number of the state's own points first)."""
    rc, flags = points_of(state)
    own = len(rc)
    extras = [points_of(SliceState(scribbles=tuple(extra_scribbles)))] if extra_scribbles else []
    for erc, eflags in extras + ([extra_points] if extra_points is not None else []):
        rc = np.concatenate([rc, np.asarray(erc, float).reshape(-1, 2)])
        flags = np.concatenate([flags, np.asarray(eflags, bool)])
    return rc, flags, own


def state_of(plane: tuple[int, int], points=(), positive=(), box=None, scribbles=()) -> SliceState:
    """A fresh state from in-plane prompts (see ``Session.set_prompts``): points (N, 2) with ``positive``
    (N,) bools, ``box`` ((r0, c0), (r1, c1)) clipped to the ``plane``, ``scribbles`` [((M, 2), positive)]."""
    pts = as_coords(points, 2, "point") if len(points) else np.zeros((0, 2))
    check_inside(pts, plane, "point")
    flags = np.broadcast_to(np.asarray(positive, dtype=bool), (len(pts),))
    b = None
    if box is not None:
        (r0, c0), (r1, c1) = clip_box(as_coords(box, 2, "box corner"), plane)
        b = Box(float(r0), float(c0), float(r1), float(c1))
    strokes = tuple((clip_stroke(as_coords(line, 2, "scribble"), plane), bool(f)) for line, f in scribbles)
    return SliceState(points=tuple(Point((float(r), float(c)), bool(f)) for (r, c), f in zip(pts, flags)), box=b,
                      scribbles=strokes)


def decoded_mask(state: SliceState, plane: tuple[int, int]) -> np.ndarray:
    """The decoder's own mask of a state as a full bool plane (H, W): the edge refiner's input when the
    edge step redrew it (``unrefined``), else the state's mask."""
    if state.unrefined is not None:
        state = SliceState(bits=state.unrefined[0], extent=state.unrefined[1])
    return plane_mask(state, plane)


def insert_axis(box2: tuple, axis: int, item) -> tuple:
    parts = list(box2)
    parts.insert(axis, item)
    return tuple(parts)


def pack(mask: np.ndarray, offset: tuple[int, int] = (0, 0)):
    """bool (h, w) mask, non-empty -> (packed bits of its bounding crop, (r0, r1, c0, c1) extent).

    The extent is half-open and shifted by ``offset``, the mask's (row, col) position in the plane, so
    a state costs memory in proportion to the object, not to the slice (or whole slide).
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return np.packbits(mask[r0:r1, c0:c1]), (r0 + offset[0], r1 + offset[0], c0 + offset[1], c1 + offset[1])


def pack_crop(hit) -> tuple:
    """``PromptModel.mask``'s (bool crop, (row, col) origin) or None -> (bits, extent); (None, None) if empty."""
    if hit is None or not hit[0].any():
        return None, None
    return pack(hit[0], hit[1])


def unpack(bits: np.ndarray, extent: tuple) -> np.ndarray:
    """Inverse of :func:`pack`: bool crop of shape (r1 - r0, c1 - c0)."""
    r0, r1, c0, c1 = extent
    shape = (r1 - r0, c1 - c0)
    return np.unpackbits(bits, count=shape[0] * shape[1]).view(bool).reshape(shape)


def crop_of(bits, extent, win: tuple) -> np.ndarray:
    """A packed mask (``bits`` over ``extent``, see :func:`pack`) inside window ``win``: bool (h, w)."""
    r0, r1, c0, c1 = win
    out = np.zeros((r1 - r0, c1 - c0), bool)
    if bits is not None:
        m = unpack(bits, extent)
        a, b, c, d = max(extent[0], r0), min(extent[1], r1), max(extent[2], c0), min(extent[3], c1)
        if a < b and c < d:
            out[a - r0:b - r0, c - c0:d - c0] = m[a - extent[0]:b - extent[0], c - extent[2]:d - extent[2]]
    return out


def plane_mask(state: SliceState, plane: tuple[int, int]) -> np.ndarray:
    """The state's mask as a full bool plane (H, W)."""
    out = np.zeros(plane, dtype=bool)
    if state.bits is not None:
        r0, r1, c0, c1 = state.extent
        out[r0:r1, c0:c1] = unpack(state.bits, state.extent)
    return out


def paint(planes: np.ndarray, step: dict) -> tuple[tuple, slice]:
    """Clear each slice's ``before`` mask and draw its ``after`` mask into ``planes``.

    planes : bool (n_slices, H, W), a view of the session's mask buffer; step : {k: (before, after)}
    SliceStates. Returns the in-plane (row slice, col slice) and the slice range that bound every
    changed extent (empty slices when nothing changed).
    """
    rows, cols, ks = [], [], []
    for k, (before, after) in step.items():
        for ext in (before.extent, after.extent):
            if ext is not None:
                rows += ext[:2]
                cols += ext[2:]
                ks.append(k)
        if before.extent is not None:
            r0, r1, c0, c1 = before.extent
            planes[k, r0:r1, c0:c1] = False
        if after.bits is not None:
            r0, r1, c0, c1 = after.extent
            planes[k, r0:r1, c0:c1] = unpack(after.bits, after.extent)
    if not rows:
        return (slice(0, 0), slice(0, 0)), slice(0, 0)
    return (slice(min(rows), max(rows)), slice(min(cols), max(cols))), slice(min(ks), max(ks) + 1)
