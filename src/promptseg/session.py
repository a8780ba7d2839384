"""Session: one object being segmented in one image, with its prompts, logits and undo history.

Every call returns a :class:`Prediction`: a read-only view of the current-object mask (image shape; no
copy of a volume is made per click), the decoder's predicted IoU, and the region that changed, so a
viewer repaints only that box. Prompts live per slice (2D: the one slice); after the first prediction on
a slice, its best low-resolution logits are fed back as ``mask_input`` with all of the slice's prompts,
as Segment Anything's interactive loop does. ``commit()`` moves the object into ``labels`` with a new id.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

import numpy as np

from . import _objects, edges as _edges, feedback as _feedback, wide as _wide, zoom as _zoom
from .embeddings import Embedder, EmbeddingStore, fill, open_store, store_settings
from .errors import CacheError, ImageError, PromptError
from ._state import (EMPTY, SliceState, insert_axis, lazy_zeros, pack_crop, paint, prompts_json, state_of,
                     strokes_for, with_extras)
from .tiled_decode import decode_tiles
from .tiling import TiledEmbedder, make_embedder
from .prompts import Box, Point, as_coords, check_inside, clip_box, clip_stroke, to_plane


@dataclass(frozen=True)
class Prediction:
    """Result of a prompt.

    mask : bool array of the image's spatial shape, a read-only view of the session's buffer.
    score : the decoder's predicted IoU of the chosen mask (1.0 for a mask set by hand).
    bbox : tuple of slices (image axes) bounding everything that changed; repaint only this region.
    """

    mask: np.ndarray
    score: float
    bbox: tuple


class Session:
    """Interactive segmentation of one image, one object at a time.

    Parameters
    ----------
    model : PromptModel from :func:`promptseg.load_model`.
    image : (H, W), (H, W, 3|4) or (Z, H, W) array-like, or a list of 2D pyramid levels (level 0 first);
        prompts and masks use its (level-0) pixel coordinates.
    embeddings : EmbeddingStore from :func:`promptseg.embed` for this image and model (its tiling and
        level are reused); when absent, slices (or tiles) are embedded in memory on first use.
    labels : existing int labels of the image's spatial shape to continue or correct (used in place
        when already int32 and writable); default: zeros.
    overwrite : whether ``commit`` may overwrite earlier objects (default: it fills only background).
    axis : slicing axis of a volume (default: the store's, else 0).
    modality, window, rgb : intensity handling, see :mod:`promptseg.preprocess` (default: the store's).
    threshold : logit threshold of the mask (0.0 as in SAM).
    tile_shape, overlap, level : tiling of large 2D images and pyramids, see :mod:`promptseg.tiling`
        (default: tiled above a size threshold; with ``embeddings``, the store's tiling).
    embedder : an :class:`~promptseg.embeddings.Embedder` already made for this image and model (it
        replaces the preprocessing and tiling arguments and saves hashing the image a second time).
    zoom : predict small objects again in a window around them (:mod:`promptseg.zoom`); default: what
        the model's registry entry says (on for the shipped model, off for the large SAM encoders, where
        each window costs a full encoder pass). Not used on tiled images.
    edges : redraw each mask's boundary with the model's edge refiner (:mod:`promptseg.edges`); default:
        on when the model has one (the shipped model does, SAM checkpoints do not). Not on tiled images.

    With zoom on, a first click whose mask is a blob in a flat region is decoded again on the image
    shrunk to half size (:mod:`promptseg.wide`); ``s.wide = False`` turns that off (it finds large flat
    objects, and can take a faint small lesion's organ instead).

    A tiled image embeds only the tiles its prompts need. The mask and labels buffers are allocated
    lazily by the OS in small pages (``_state.lazy_zeros``): only annotated regions take memory.
    """

    def __init__(self, model, image, embeddings: EmbeddingStore | None = None, *, labels=None, overwrite=False,
                 axis=None, modality=None, window=None, rgb=None, threshold: float = 0.0, tile_shape="auto",
                 overlap=None, level=None, embedder: Embedder | None = None, zoom: bool | None = None,
                 edges: bool | None = None):
        self.model = model
        self.image = image
        if embedder is not None:
            if embedder.model is not model or embedder.image is not image:
                raise ValueError("the embedder was made for another model or image")
        elif embeddings is not None:  # the store's preprocessing and tiling, unless given
            window, axis, tile_shape, overlap, level = store_settings(embeddings, window, modality, axis, tile_shape,
                                                                      overlap, level)
        self.embedder = embedder or make_embedder(model, image, axis=axis, modality=modality, window=window, rgb=rgb,
                                                  tile_shape=tile_shape, overlap=overlap, level=level)
        self.tiled = isinstance(self.embedder, TiledEmbedder)
        self.shape = self.embedder.spatial
        self.axis = self.embedder.axis
        if embeddings is not None:
            embeddings.check(self.embedder.signature())
            self.store = embeddings
        else:
            self.store = open_store(self.embedder, None)
        self.frame = self.embedder.frame
        self.threshold = float(threshold)
        self.overwrite = bool(overwrite)
        self._mask = lazy_zeros(self.shape, bool)
        if labels is None:
            labels = lazy_zeros(self.shape, np.int32)
        labels = np.asarray(labels)
        if labels.shape != self.shape:
            raise ImageError(f"labels of shape {labels.shape} do not match the image's spatial shape {self.shape}")
        if labels.dtype != np.int32 or not labels.flags.writeable:
            labels = labels.astype(np.int32)
        self.labels = labels
        self.objects: list[dict] = []  # per committed object: its id and the prompts that made it
        self.editing: int | None = None  # id of the committed object being corrected, see edit()
        self.stops: set[int] = set()  # slices propagation must not enter, see set_stop()
        self._states: dict[int, SliceState] = {}
        self._undo: list[dict] = []
        self._redo: list[dict] = []
        self._feature_cache: OrderedDict = OrderedDict()
        self.zoom = bool(model.spec.zoom if zoom is None else zoom) and not self.tiled
        self.edges = bool(model.has_edges if edges is None else edges) and model.has_edges and not self.tiled
        self.defer_zoom = False  # a viewer's choice: prompts skip the zoom and edge steps until refine()
        self.wide = True  # with zoom on: a first click's flat blob decoded again on the shrunk image (promptseg.wide)
        self._zoom_cache: OrderedDict = OrderedDict()  # (slice, window) -> embedding, see promptseg.zoom

    # -- public prompting API ---------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def mask(self) -> np.ndarray:
        """The current object's mask, bool of the image's spatial shape (read-only view)."""
        view = self._mask.view()
        view.flags.writeable = False
        return view

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    @property
    def bbox(self) -> tuple | None:
        """Slices (image axes) bounding the current object, or None when it is empty."""
        filled = {k: s.extent for k, s in self._states.items() if s.extent is not None}
        if not filled:
            return None
        box2 = (slice(min(e[0] for e in filled.values()), max(e[1] for e in filled.values())),
                slice(min(e[2] for e in filled.values()), max(e[3] for e in filled.values())))
        return box2 if self.ndim == 2 else insert_axis(box2, self.axis, slice(min(filled), max(filled) + 1))

    def add_point(self, coords, positive: bool = True) -> Prediction:
        """Add a click at ``(row, col)`` / ``(z, row, col)``; ``positive=False`` marks background."""
        pts = as_coords(coords, self.ndim, "point")
        if len(pts) != 1:
            raise PromptError(f"add_point takes one point, got {len(pts)}; use add_points")
        return self.add_points(pts, [positive])

    def add_points(self, coords, positive) -> Prediction:
        """Add several clicks on one slice in one step; ``positive``: bool per point (or one bool)."""
        pts = as_coords(coords, self.ndim, "point")
        check_inside(pts, self.shape, "point")
        flags = np.broadcast_to(np.asarray(positive, dtype=bool), (len(pts),))
        k, rc = to_plane(pts, self.shape, self.axis, "points")
        state = self._states.get(k, EMPTY)
        new = tuple(Point((float(r), float(c)), bool(f)) for (r, c), f in zip(rc, flags))
        return self._update(k, replace(state, points=state.points + new))

    def add_box(self, corner_a, corner_b) -> Prediction:
        """Add (or replace) the box of the slice, given two opposite corners; clipped to the image."""
        corners = as_coords([corner_a, corner_b], self.ndim, "box corner")
        k, rc = to_plane(corners, self.shape, self.axis, "box")
        (r0, c0), (r1, c1) = clip_box(rc, self._plane_shape())
        state = self._states.get(k, EMPTY)
        return self._update(k, replace(state, box=Box(float(r0), float(c0), float(r1), float(c1))))

    def add_scribble(self, points, positive: bool = True) -> Prediction:
        """Add a squiggle, a polyline (N, ndim) on one slice; parts outside the image are dropped.

        Models without a squiggle input receive well-spread points along the stroke
        (:func:`promptseg.prompts.scribble_to_points`).
        """
        poly = as_coords(points, self.ndim, "scribble")
        k, rc = to_plane(poly, self.shape, self.axis, "scribble")
        stroke = clip_stroke(rc, self._plane_shape())
        state = self._states.get(k, EMPTY)
        return self._update(k, replace(state, scribbles=state.scribbles + ((stroke, bool(positive)),)))

    def set_prompts(self, z: int | None = None, *, points=(), positive=(), box=None, scribbles=()) -> Prediction:
        """Replace all prompts of a slice and predict from them afresh (one undo step).

        For viewers where a user deletes or moves prompts. Coordinates are in-plane ``(row, col)``:
        ``points`` (N, 2) with ``positive`` (N,) bools, ``box`` ((r0, c0), (r1, c1)) or None,
        ``scribbles`` a list of ((M, 2) polyline, positive). ``z`` is the slice (3D only).
        With no prompts left the slice is cleared.
        """
        k = 0 if self.ndim == 2 else int(z)
        if self.ndim == 3 and not 0 <= k < self.store.n_slices:
            raise PromptError(f"slice {k} is outside 0..{self.store.n_slices - 1}")
        state = state_of(self._plane_shape(), points, positive, box, scribbles)
        if not state.has_prompts:
            return self._apply({k: (self._states.get(k, EMPTY), EMPTY)}, record=True)
        return self._update(k, state)

    def set_mask(self, mask, z: int | None = None) -> Prediction:
        """Start from (or replace the object by) an existing mask.

        ``mask`` has the image's spatial shape, or, in 3D with ``z`` given, the shape of one slice.
        Its low-resolution version becomes the ``mask_input`` of the next prompt on each slice.
        """
        return self._apply(_objects.mask_step(self, mask, z), record=True)

    def predict(self, z: int | None = None) -> Prediction:
        """Run the decoder again from the slice's prompts alone (no fed-back mask)."""
        k = self._slice_index(z)
        state = self._states.get(k, EMPTY)
        if not state.has_prompts:
            raise PromptError("no prompts on this slice to predict from")
        return self._update(k, replace(state, logits=None, zoom=None))

    def propagate(self, **kwargs) -> Prediction:
        """Carry the object through the volume from its prompted slices (see :mod:`promptseg.volume`)."""
        from .volume import propagate

        self.refine()
        return propagate(self, **kwargs)

    @property
    def needs_refine(self) -> bool:
        """Whether a deferred zoom or edge step waits for :meth:`refine`."""
        return any(isinstance(st.zoom, _zoom.Pending) for st in self._states.values())

    def refine(self) -> Prediction | None:
        """Run the zoom and edge steps that prompts deferred (``defer_zoom``); None when there is none.

        The refined masks complete the last prompt: they replace its result in that undo step.
        """
        step = _zoom.refine_pending(self)
        return self._apply(step, record=False) if step else None

    def prefetch(self, z: int) -> bool:
        """Read slice ``z``'s embedding into memory when it is already computed (never computes it): a
        viewer calls this when a slice is shown, so the first prompt there does not wait on the cache.
        Returns whether the embedding is in memory now."""
        k = self._slice_index(z)
        if self.tiled or not self.store.is_done(k):
            return False
        self._features(k)
        return True

    def set_stop(self, z: int, stop: bool = True) -> None:
        """Mark (or unmark) slice ``z`` as one that propagation must not enter."""
        if self.ndim != 3 or not 0 <= int(z) < self.store.n_slices:
            raise PromptError(f"slice {z} is not a slice of this volume")
        (self.stops.add if stop else self.stops.discard)(int(z))

    def undo(self) -> Prediction | None:
        """Undo the last prompt, mask or reset; ``None`` when there is nothing to undo."""
        if not self._undo:
            return None
        step = self._undo.pop()
        self._redo.append(step)
        return self._apply({k: (after, before) for k, (before, after) in step.items()}, record=False)

    def redo(self) -> Prediction | None:
        """Redo the last undone step; ``None`` when there is nothing to redo."""
        if not self._redo:
            return None
        step = self._redo.pop()
        self._undo.append(step)
        return self._apply(step, record=False)

    def reset(self) -> Prediction:
        """Clear the current object (all prompts, all slices); undoable."""
        return self._apply({k: (s, EMPTY) for k, s in self._states.items()}, record=True)

    def edit(self, label_id: int) -> Prediction:
        """Load committed object ``label_id`` as the current object, to correct it with prompts.

        The labels are not touched until :meth:`commit`, which then replaces the object's pixels and
        keeps its id.
        """
        pred = self.set_mask(_objects.mask_of(self, int(label_id)))
        self.editing = int(label_id)
        return pred

    def commit(self, overwrite: bool | None = None) -> int:
        """Write the current object into ``labels`` and start the next object.

        The object gets a new id (``max(labels) + 1``), or keeps its id when it came from :meth:`edit`
        (its old pixels are cleared first). Only background pixels are written unless ``overwrite``
        (default: the session's setting). Clears the prompts and the undo history of the object.
        Returns the id.
        """
        return _objects.commit(self, self.overwrite if overwrite is None else overwrite)

    def prompts(self) -> dict:
        """The current object's prompts per slice, JSON-able: {slice: {"points": [...], "box": ...}}."""
        return prompts_json(self._states)

    # -- internals --------------------------------------------------------------------------
    def _plane_shape(self) -> tuple[int, int]:
        return self.shape if self.ndim == 2 else tuple(s for i, s in enumerate(self.shape) if i != self.axis)

    def _planes(self, arr: np.ndarray) -> np.ndarray:
        """View of a spatial array as (n_slices, H, W) along the slicing axis."""
        return arr[None] if self.ndim == 2 else np.moveaxis(arr, self.axis, 0)

    def _slice_index(self, z) -> int:
        if self.ndim == 2:
            return 0
        if z is None:
            if len(self._states) != 1:
                raise PromptError("say which slice: the object has prompts on several slices (or none)")
            return next(iter(self._states))
        return int(z)

    def _features(self, k: int):
        import torch

        if k not in self._feature_cache:
            if not self.store.is_done(k):
                fill(self.store, self.embedder, [k])
            elif self.tiled and not self.store.hash_matches(k, self.embedder.slice_hash(k)):
                raise CacheError(f"tile {k} of {self.store.path or 'the embedding store'} was made from other pixels; "
                                 "use another cache path or overwrite=True")
            feats = torch.as_tensor(np.asarray(self.store.get(k), dtype=np.float32), device=self.model.device)[None]
            self._feature_cache[k] = feats
            while len(self._feature_cache) > (16 if self.tiled else 4):
                self._feature_cache.popitem(last=False)
        return self._feature_cache[k]

    def _update(self, k: int, state: SliceState) -> Prediction:
        """Decode ``state``'s prompts on slice ``k`` (from the mask it shows) and record the step; a click
        that undid itself becomes a local edit (:func:`promptseg.feedback.guard`)."""
        before = self._states.get(k, EMPTY)
        return self._apply({k: (before, _feedback.guard(self, before, self._decode(k, state)))}, record=True)

    def _decode(self, k: int, state: SliceState, extra_points=None, extra_box=None, extra_scribbles=()) -> SliceState:
        """Run the decoder for ``state`` on slice ``k``; returns the state with logits, score and mask.

        ``extra_points`` ((N, 2) (row, col), (N,) flags), ``extra_box`` (r0, c0, r1, c1) and
        ``extra_scribbles`` (as ``SliceState.scribbles``) are added to the state's own prompts without
        being stored in it (used by propagation).
        """
        if self.tiled:
            return decode_tiles(self, state)
        state = _feedback.shown(self, state)  # a refined mask is what the next prompt starts from (the
        # fresh states of propagation's walk have none: it carries the decoder's own logits)
        scribbles = tuple(state.scribbles) + tuple(extra_scribbles)
        # the user's points come first (``own`` of them); the extras carry a mask along a walk (not honoured)
        rc, flags, own = with_extras(state, extra_scribbles, extra_points)
        xy = self.frame.to_input_xy(rc) if len(rc) else None
        labels = flags.astype(int) if len(rc) else None
        b = state.box if state.box is not None else (Box(*extra_box) if extra_box is not None else None)
        box = None if b is None else self.frame.box_to_input(b.r0, b.c0, b.r1, b.c1)
        points_only = not scribbles and box is None and state.logits is None  # (no mask, box or squiggle)
        multimask = points_only and len(rc) == 1
        first_clicks = bool(points_only and 0 < own == len(rc) and flags.all())  # the user's, positive: wide
        strokes = strokes_for(self.model, self.frame, scribbles)
        feats = self._features(k)
        with self.model.threads_for_click():  # (once for both calls)
            low, iou = self.model.decode(feats, xy, labels, box, state.logits, multimask, strokes)
            best = int(np.argmax(iou)) if multimask else 0
            crop = self.model.mask(low[best], self.frame.input, self.frame.original, self.threshold)
        bits, extent = pack_crop(crop)
        full = replace(state, logits=low[best : best + 1].copy(), score=float(iou[best]), bits=bits, extent=extent,
                       zoom=None, unrefined=None)
        if not self.zoom and not self.edges:
            return full
        previous = state.zoom.previous if isinstance(state.zoom, _zoom.Pending) else state.zoom
        if self.defer_zoom and extra_points is None and extra_box is None and not extra_scribbles:
            return replace(full, zoom=_zoom.Pending(previous, first_clicks))
        return self._finish(k, full, previous, rc, flags, b, scribbles, own, first_clicks)

    def _finish(self, k: int, full: SliceState, previous, rc, flags, box, scribbles, own=None,
                first_clicks=False) -> SliceState:
        """The steps after the full view's prediction: the zoom window (and the wide view, when the prompts
        are ``first_clicks``), then the edge refiner (which honours the first ``own`` points; None: all)."""
        state = _zoom.refine(self, k, full, previous, rc, flags, box, scribbles) if self.zoom else full
        state = _wide.look(self, k, state, rc) if self.zoom and self.wide and first_clicks else state
        return _edges.refine(self, k, state, rc, flags, own) if self.edges and self.model.has_edges else state

    def _apply(self, step: dict, record: bool) -> Prediction:
        """Make each slice's state ``after`` (step: {k: (before, after)}); paint the masks; report."""
        score = 1.0
        for k, (_, after) in step.items():
            if after.empty:
                self._states.pop(k, None)
            else:
                self._states[k] = after
            score = after.score
        box2, kslice = paint(self._planes(self._mask), step)
        if record and step:
            self._undo.append(step)
            self._redo.clear()
        return Prediction(self.mask, score, box2 if self.ndim == 2 else insert_axis(box2, self.axis, kslice))
