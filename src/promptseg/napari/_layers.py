"""The annotator's napari layers and the translation between their contents and Session prompts.

Four layers share the image's scale and translation, so their data coordinates are the image's pixel
coordinates (napari order):

* ``prompt points`` (Points): clicks; the ``positive`` feature marks foreground (green) or background
  (magenta).
* ``prompt shapes`` (Shapes): rectangles are boxes, paths are squiggles (``positive`` feature too).
* ``current object`` (Labels, uint8): the live mask, repainted only where a prediction changed it.
* ``committed objects`` (Labels, int32): shares its array with ``Session.labels``.

Over a multiscale image (a whole slide) both Labels layers are multiscale too: their levels are strided
views of one full-resolution buffer (no copies), so napari reads only the visible part of one level,
and a prediction writes its box into the buffer and refreshes. The OS allocates the buffers lazily, so
a 20000 x 20000 slide costs memory only where objects are.
"""

from __future__ import annotations

import warnings

import numpy as np
from napari.utils.colormaps import DirectLabelColormap

from .._state import lazy_zeros
from ..errors import PromptError
from ..prompts import clip_box, inside

POSITIVE, NEGATIVE = "#33ff33", "#ff33ff"
LARGE_CHANGE = 65536  # changed pixels above which a repaint re-reads the shown slice instead (paint)


class PromptLayers:
    """Create and hold the annotator's layers for one image.

    Parameters
    ----------
    viewer : napari.Viewer.
    image_layer : the napari Image layer being annotated.
    shape : spatial shape of the image (napari order).
    labels : int32 array of that shape, shown as ``committed objects`` (shared, not copied).
    committed : an existing Labels layer to reuse as ``committed objects`` (its data must be ``labels``).
    """

    def __init__(self, viewer, image_layer, shape, labels, committed=None):
        self.viewer = viewer
        self.ndim = len(shape)
        self.shape = tuple(shape)
        # level k of a multiscale image is (about) full resolution / factor k along each axis
        self.factors = [max(1, round(shape[-1] / lv.shape[self.ndim - 1])) for lv in image_layer.data] \
            if image_layer.multiscale else None
        # the same world transform as the image: layer data coordinates are then image pixel coordinates
        kw = dict(scale=tuple(image_layer.scale[-self.ndim :]), translate=tuple(image_layer.translate[-self.ndim :]))
        self.buffer = lazy_zeros(shape, np.uint8)  # the current object, full resolution
        self.current = viewer.add_labels(
            self._levels(self.buffer), name="current object", opacity=0.55,
            colormap=DirectLabelColormap(color_dict={None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: (0.1, 0.8, 1.0, 1.0)}), **kw,
        )
        if committed is None:
            committed = viewer.add_labels(self._levels(labels), name="committed objects", opacity=0.45, **kw)
        else:
            committed.data = self._levels(labels)
        self.committed = committed
        size = max(4.0, max(shape[-2:]) / 50)
        self.shapes = viewer.add_shapes(ndim=self.ndim, name="prompt shapes", edge_color="yellow", face_color="transparent",
                                        edge_width=max(1.0, size / 3), features={"positive": np.zeros(0, bool)}, **kw)
        self.points = viewer.add_points(ndim=self.ndim, name="prompt points", size=size, border_width=0.1,
                                        features={"positive": np.zeros(0, bool)}, face_color=POSITIVE, **kw)
        self.points.mode = "add"
        viewer.layers.selection.active = self.points
        self.set_positive(True)
        # prompts stay inside the image (the annotator removes any other), so they never change the
        # viewer's dims; napari recomputes those on each data event, ~3 ms twice per click
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # napari frowns on plugins reading private names
            handler = getattr(viewer, "_on_layers_change", None)
        for layer in (self.points, self.shapes) if handler is not None else ():  # (None would drop every handler)
            try:
                layer.events.data.disconnect(handler)
            except (TypeError, ValueError, RuntimeError):  # another napari: keep its handler
                pass

    @property
    def multiscale(self) -> bool:
        return self.factors is not None

    def _levels(self, full: np.ndarray):
        """The layer data for a full-resolution array: itself, or its strided views per image level."""
        return full if self.factors is None else [full[tuple(slice(None, None, f) for _ in full.shape)] for f in self.factors]

    def set_labels(self, labels: np.ndarray) -> None:
        """Show ``labels`` (full resolution, int32) as the committed objects."""
        self.committed.data = self._levels(labels)

    @property
    def all(self):
        return [self.points, self.shapes, self.current, self.committed]

    def set_positive(self, positive: bool) -> None:
        """What the next click or squiggle will be: foreground (True) or background."""
        self.positive = bool(positive)
        # napari recolours the *selected* items when the current colour changes: select nothing first
        self.points.selected_data = set()
        self.shapes.selected_data = set()
        for layer in (self.points, self.shapes):
            layer.feature_defaults["positive"] = bool(positive)
        self.points.current_face_color = POSITIVE if positive else NEGATIVE
        self.shapes.current_edge_color = "yellow" if positive else NEGATIVE

    # -- layers -> prompts ----------------------------------------------------------------------
    def slice_of(self, coords: np.ndarray) -> int:
        """Slice index (first axis) of a point or shape's vertices (3D); 0 in 2D."""
        return 0 if self.ndim == 2 else int(np.rint(np.asarray(coords)[..., 0].mean()))

    def prompts_on(self, k: int) -> dict:
        """The prompts drawn on slice ``k``, in-plane (row, col): points, positive, box, scribbles."""
        pts = np.asarray(self.points.data, dtype=float).reshape(-1, self.ndim)
        flags = np.asarray(self.points.features["positive"], dtype=bool) if len(pts) else np.zeros(0, bool)
        if self.ndim == 3:
            on = np.rint(pts[:, 0]) == k
            pts, flags = pts[on, 1:], flags[on]
        box, scribbles = None, []
        shape_flags = np.asarray(self.shapes.features["positive"], dtype=bool) if self.shapes.nshapes else []
        for verts, kind, flag in zip(self.shapes.data, self.shapes.shape_type, shape_flags):
            verts = np.asarray(verts, dtype=float)
            if self.slice_of(verts) != k:
                continue
            rc = verts[:, -2:]
            plane = self.shape[-2:]
            if kind == "rectangle":
                try:
                    lo, hi = clip_box(np.stack([rc.min(axis=0), rc.max(axis=0)]), plane)
                except PromptError:
                    continue  # entirely off the image: not a prompt
                box = (tuple(lo), tuple(hi))
            elif kind in ("path", "line", "polygon", "ellipse"):
                rc = rc[inside(rc, plane)]
                if len(rc):
                    scribbles.append((rc, bool(flag)))
        return dict(points=pts, positive=flags, box=box, scribbles=scribbles)

    # -- session -> layers ----------------------------------------------------------------------
    def show_prompts(self, prompts: dict) -> None:
        """Redraw points and shapes from ``Session.prompts()`` (after undo, redo, clear, commit)."""
        pts, flags, shapes, kinds, sflags = [], [], [], [], []
        for k, pr in prompts.items():
            lead = [] if self.ndim == 2 else [float(k)]
            for r, c, f in pr["points"]:
                pts.append(lead + [r, c])
                flags.append(bool(f))
            if pr["box"] is not None:
                r0, c0, r1, c1 = pr["box"]
                shapes.append([lead + [r0, c0], lead + [r0, c1], lead + [r1, c1], lead + [r1, c0]])
                kinds.append("rectangle")
                sflags.append(True)
            for line, f in pr.get("scribbles", []):
                shapes.append([lead + list(v) for v in line])
                kinds.append("path")
                sflags.append(bool(f))
        with self.points.events.data.blocker(), self.shapes.events.data.blocker():
            self.points.selected_data = set()
            self.shapes.selected_data = set()
            self.points.data = np.asarray(pts, dtype=float).reshape(-1, self.ndim)
            self.points.features = {"positive": np.asarray(flags, dtype=bool)}
            self.points.face_color = [POSITIVE if f else NEGATIVE for f in flags] or POSITIVE
            self.shapes.data = []
            if shapes:
                self.shapes.add(shapes, shape_type=kinds)
                self.shapes.features = {"positive": np.asarray(sflags, dtype=bool)}
                self.shapes.edge_color = ["yellow" if f else NEGATIVE for f in sflags]
        self.set_positive(self.positive)  # replacing the features reset their defaults
        self.points.refresh()
        self.shapes.refresh()

    def paint(self, mask: np.ndarray, bbox: tuple) -> None:
        """Copy ``mask[bbox]`` into the current-object layer, repainting only the changed pixels (or, for a
        change of more than :data:`LARGE_CHANGE` pixels, the shown slice, which is then cheaper)."""
        if any(s.stop is not None and s.start is not None and s.stop <= s.start for s in bbox):
            return
        new = mask[bbox]
        new = new.view(np.uint8) if new.dtype == bool else new.astype(np.uint8)  # a bool mask: no copy
        old = self.buffer[bbox]
        if self.multiscale:  # the levels are views of the buffer: write, then let napari re-read the view
            old[...] = new
            self.current.refresh()
            return
        diff = new != old
        n = int(np.count_nonzero(diff))
        if not n:
            return
        if n > LARGE_CHANGE:
            # napari's partial path costs ~50 ns per changed pixel (fancy indexing, its own history):
            # 24 ms for a 500k-pixel change against ~3 ms to write the box and re-read the shown slice
            old[...] = new
            self.current.refresh()
            return
        changed = np.nonzero(diff)
        index = tuple(c + (s.start or 0) for c, s in zip(changed, bbox))
        # data_setitem is napari's partial repaint (only the changed pixels' bounding box is re-coloured);
        # it also keeps a layer history, bounded by napari (100 steps), which the annotator does not use
        self.current.data_setitem(index, new[changed])

    def refresh_committed(self) -> None:
        self.committed.refresh()


def apply_prompts(session, k: int, want: dict, ndim: int):
    """Bring ``session``'s prompts on slice ``k`` in line with ``want`` (:meth:`PromptLayers.prompts_on`).

    One added point, box or squiggle is one ``add_*`` call (the previous logits are fed back, as for a
    click); any other change (a prompt moved or deleted) sets the slice's prompts anew. Returns the
    Prediction, or None when the prompts are the same.
    """
    have = session.prompts().get(k, {"points": [], "box": None, "scribbles": []})
    pts = [[float(r), float(c), int(f)] for (r, c), f in zip(want["points"], want["positive"])]
    box = None if want["box"] is None else [*want["box"][0], *want["box"][1]]
    lines = [[[[float(r), float(c)] for r, c in line], int(f)] for line, f in want["scribbles"]]
    same_pts, same_box, same_lines = pts == have["points"], box == have["box"], lines == have["scribbles"]
    lead = () if ndim == 2 else (k,)
    if same_pts and same_box and same_lines:
        return None
    if pts[:-1] == have["points"] and len(pts) == len(have["points"]) + 1 and same_box and same_lines:
        return session.add_point(lead + tuple(pts[-1][:2]), positive=bool(pts[-1][2]))
    if same_pts and not same_box and box is not None and same_lines:
        return session.add_box(lead + tuple(box[:2]), lead + tuple(box[2:]))
    if same_pts and same_box and lines[:-1] == have["scribbles"] and len(lines) == len(have["scribbles"]) + 1:
        return session.add_scribble([lead + tuple(v) for v in lines[-1][0]], positive=bool(lines[-1][1]))
    return session.set_prompts(None if not lead else k, points=[p[:2] for p in pts], positive=[bool(p[2]) for p in pts],
                               box=want["box"], scribbles=[(line, bool(f)) for line, f in lines])
