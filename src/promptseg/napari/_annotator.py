"""The promptseg Annotator: a dock widget that is a thin view over a :class:`promptseg.Session`.

Flow: pick an image layer (and optionally a Labels layer to correct), a model and a device, press
Start. Model loading and embedding run in a worker thread with a napari progress bar; the embeddings are
cached in the image's project folder, so reopening the image reuses them. Prompts drawn on the
``prompt points`` / ``prompt shapes`` layers are translated into Session calls; every prediction
repaints only the region it changed. Committed objects are autosaved to the project folder.

Keys (on the viewer and the annotator's layers): T positive/negative, right-click a negative point,
S re-predict, C commit, N next object, Shift+C clear, Ctrl+Z / Ctrl+Shift+Z undo / redo, P propagate
through a volume.
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton, SpinBox
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer

# import torch's stack (torchvision, torch._dynamo) now, in the main thread, not first in a worker thread
from ..models import build as _build  # noqa: F401
from ..errors import PromptsegError
from ..models import list_models
from ..preprocess import spatial_shape
from ..project import Project
from ..session import Session
from ._layers import PromptLayers, apply_prompts
from ._workers import TilePrefetch, embed_job, gui_threads


class AnnotatorWidget(Container):
    """Dock widget: interactive segmentation of the chosen image layer (see the module docstring)."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.session: Session | None = None
        self.layers: PromptLayers | None = None
        self.project: Project | None = None
        self.worker = None
        self.embedded: set[int] = set()
        self._pending: set[int] = set()
        self._priority: list[int] = []
        self._models: dict = {}
        self._progress = None
        self._start_labels = None
        self._busy = False  # propagating: prompts wait

        self._image = ComboBox(label="image", choices=self._layer_choices(Image))
        self._fix = ComboBox(label="correct labels", choices=self._layer_choices(Labels, none=True))
        self._model = ComboBox(label="model", choices=list_models(), value="default")
        self._checkpoint = FileEdit(label="checkpoint", mode="r", filter="*.pt *.pth", value="")
        self._device = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self._level = SpinBox(label="pyramid level", min=0, max=16, value=0)
        self._start = PushButton(text="Start")
        self._positive = CheckBox(text="positive prompts (T)", value=True)
        self._zoom = CheckBox(text="zoom into small objects", value=True, tooltip="predict a small object again "
                              "in a window around it (models trained for it; each new window is one encoder pass)")
        self._edges = CheckBox(text="refine edges at full resolution", value=True,
                               tooltip="redraw each mask's boundary with the model's edge refiner (models that have one)")
        self._commit = PushButton(text="Commit (C)")
        self._undo = PushButton(text="Undo (Ctrl+Z)")
        self._redo = PushButton(text="Redo (Ctrl+Shift+Z)")
        self._clear = PushButton(text="Clear (Shift+C)")
        self._propagate = PushButton(text="Propagate in 3D (P)")
        self._edit = PushButton(text="Edit selected label")
        self._export_path = FileEdit(label="export to", mode="w", filter="*.tif *.nii.gz *.ome.zarr", value="")
        self._export = PushButton(text="Export labels")
        self._status = Label(value="choose an image and press Start")
        self.tiles = TilePrefetch(self)
        self._refine_timer = QTimer(self.native, singleShot=True, interval=0)  # dies with the widget
        self._refine_timer.timeout.connect(self._refine)
        self.extend([self._image, self._fix, self._model, self._checkpoint, self._device, self._level, self._start, self._positive,
                     self._zoom, self._edges, self._commit, self._undo, self._redo, self._clear, self._propagate, self._edit, self._export_path, self._export,
                     self._status])

        self._start.clicked.connect(self.start)
        self._positive.changed.connect(lambda v: self.layers and self.layers.set_positive(v))
        self._zoom.changed.connect(lambda v: self.session and setattr(self.session, "zoom", bool(v) and not self.session.tiled))
        self._edges.changed.connect(lambda v: self.session and setattr(
            self.session, "edges", bool(v) and self.session.model.has_edges and not self.session.tiled))
        self._commit.clicked.connect(self.commit)
        self._undo.clicked.connect(self.undo)
        self._redo.clicked.connect(self.redo)
        self._clear.clicked.connect(self.clear)
        self._propagate.clicked.connect(self.propagate)
        self._edit.clicked.connect(self.edit_selected)
        self._export.clicked.connect(lambda: self.export(self._export_path.value))
        self.viewer.layers.events.inserted.connect(self.reset_choices)
        self.viewer.layers.events.removed.connect(self.reset_choices)
        self.viewer.dims.events.current_step.connect(self._on_step)
        self._bind_keys(self.viewer)
        self.native.setMinimumWidth(380)
        self.native.destroyed.connect(self._stop_worker)  # the viewer closed mid-embedding

    # -- setup ------------------------------------------------------------------------------------
    def _layer_choices(self, kind, none=False):
        def choices(*_):
            names = [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, kind)]
            return ([("(none)", None)] if none else []) + names
        return choices

    def _bind_keys(self, target, toggle=True):
        keys = {"c": self.commit, "n": self.next_object, "Shift-c": self.clear, "s": self.repredict,
                "Control-z": self.undo, "Control-Shift-z": self.redo, "p": self.propagate}
        if toggle:
            keys["t"] = self.toggle_positive
        for key, func in keys.items():
            target.bind_key(key, lambda *_, f=func: f(), overwrite=True)

    def start(self) -> None:
        """Load the model and embed the chosen image in a worker; create the prompt layers."""
        layer = self._image.value
        if layer is None:
            return show_error("promptseg: open an image first")
        data = list(layer.data) if layer.multiscale else layer.data
        level = int(self._level.value) if layer.multiscale else None
        try:
            if level is not None and level >= len(data):
                raise PromptsegError(f"pyramid level {level} does not exist: {layer.name!r} has levels 0..{len(data) - 1}")
            shape, rgb = spatial_shape(data[0] if layer.multiscale else data, rgb=layer.rgb)
            if len(shape) == 3 and shape[-1] <= 4 < shape[0]:  # napari shows (y, x, c) as a stack of slices
                raise PromptsegError(f"image {layer.name!r} of shape {shape} looks multichannel (its last axis has "
                                     f"{shape[-1]} entries); split the channels and annotate one")
            fix = self._fix.value
            if fix is not None and tuple(fix.data.shape) != shape:
                raise PromptsegError(f"labels layer {fix.name!r} has shape {tuple(fix.data.shape)}, the image {shape}")
            path = layer.metadata.get("promptseg_path") or (str(layer.source.path) if layer.source.path else None)
            self.project = Project.for_image(path, shape=shape, name=layer.metadata.get("promptseg_sample", layer.name))
        except PromptsegError as e:
            return show_error(f"promptseg: {e}")
        labels = np.asarray(fix.data).astype(np.int32) if fix is not None else self.project.load_labels()
        self._teardown()
        self.layers = PromptLayers(self.viewer, layer, shape, labels, committed=fix)
        self.layers.set_positive(self._positive.value)
        self._start_labels = labels
        for lay in (self.layers.points, self.layers.current, self.layers.committed):
            self._bind_keys(lay)
        self._bind_keys(self.layers.shapes, toggle=False)  # T draws paths there (napari's key)
        self.layers.points.events.data.connect(self._on_prompts_changed)
        self.layers.shapes.events.data.connect(self._on_prompts_changed)
        self.layers.points.mouse_drag_callbacks.append(self._right_click)
        self.layers.committed.events.paint.connect(self._on_paint)
        ckpt = str(self._checkpoint.value or "")
        key = (self._model.value, "" if ckpt in ("", ".") else ckpt, self._device.value)
        args = dict(name=key[0], checkpoint=key[1] or None, device=key[2])
        if key in self._models:
            args = {"model": self._models[key]}
        self._status.value = "loading model and embedding…"
        self._progress = progress(total=0, desc="promptseg: embedding")
        # handlers given at creation: an errored handler given later would not stop the default re-raise
        handlers = {"yielded": lambda msg, key=key: self._on_worker(msg, key), "errored": self._on_worker_error,
                    "finished": self._close_progress}
        cache = self.project.embeddings_path(key[0] if not level else f"{key[0]}-level{level}")
        self.worker = create_worker(embed_job, args, data, rgb, cache, self._priority, level, threads=gui_threads(),
                                    _connect=handlers, _start_thread=True)

    def _stop_worker(self, *_):
        if self.worker is not None:
            self.worker.quit()  # the generator stops at its next slice; finished slices stay cached
            self.worker = None
        self.tiles.stop()

    def prefetch_view(self):
        """Embed, in a worker, the not yet embedded tiles in view of a slide (see :class:`TilePrefetch`)."""
        return self.tiles.view()

    def prefetch_region(self, r0, r1, c0, c1, max_tiles: int = 12):
        """Embed, in a worker, the tiles of rows r0..r1, cols c0..c1 (full-resolution pixels)."""
        return self.tiles.region(r0, r1, c0, c1, max_tiles)

    def _teardown(self):
        self._stop_worker()
        self.tiles.follow_view(False)
        if self.layers is not None:  # a restart: drop the previous layers (committed objects are saved)
            old = [self.layers.points, self.layers.shapes, self.layers.current]
            if self.layers.committed is not self._fix.value:
                old.append(self.layers.committed)
            for layer in old:
                if layer in self.viewer.layers:
                    self.viewer.layers.remove(layer)
        self.session, self.embedded = None, set()
        self._pending.clear()
        self._priority.clear()

    def _on_worker(self, msg, key):
        if self.worker is None:  # stopped: ignore what was already on its way
            return
        if msg[0] == "ready":
            _, model, embedder, store = msg
            self._models[key] = model
            self.session = Session(model, embedder.image, embeddings=store, labels=self._start_labels, embedder=embedder)
            self._zoom.value = self.session.zoom  # the model's own default: on for models trained for it
            self._edges.value = self.session.edges  # on for models with an edge refiner
            self.session.defer_zoom = True  # paint the full view's mask at once, the zoomed one a frame later
            self.layers.set_labels(self.session.labels)
            self.tiles.follow_view(self.session.tiled)
            return
        _, done, total, k = msg
        if k is None:
            self.embedded = set(range(total)) - set(self.session.store.missing())
        else:
            self.embedded.add(k)
        self._progress.total = total
        self._progress.n = done
        self._progress.refresh()
        self._status.value = f"embedded {done}/{total} slice(s)" + (" — ready" if done == total else "")
        if self.session.tiled:
            self._status.value = f"ready: {self.session.embedder.plan.n_tiles} tiles, embedded when needed"
        for j in sorted(self._pending & self.embedded):
            self._pending.discard(j)
            self._sync_slice(j)

    def _on_step(self, _event=None) -> None:
        """A slice is shown: read its embedding now, not at the first click there (~3 ms of that click)."""
        k = int(self.viewer.dims.current_step[0])
        if self.session is not None and self.layers is not None and self.layers.ndim == 3 and k in self.embedded:
            self.session.prefetch(k)

    def _on_worker_error(self, exc):
        self._close_progress()
        self.worker = None
        self.report_error(exc)

    def report_error(self, exc) -> None:
        """An error from a worker: one line in the status and in napari's notifications."""
        text = str(exc) if isinstance(exc, PromptsegError) else f"{type(exc).__name__}: {exc}"
        self._status.value = "failed: " + text
        show_error(f"promptseg: {text}")

    def _close_progress(self):
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    # -- prompts ----------------------------------------------------------------------------------
    def _right_click(self, layer, event):
        if event.button == 2 and layer.mode == "add":
            coords = np.asarray(layer.world_to_data(event.position))[-layer.ndim :]
            layer.feature_defaults["positive"] = False
            layer.add(coords)
            layer.feature_defaults["positive"] = bool(self._positive.value)
            layer.face_color[-1] = [1.0, 0.2, 1.0, 1.0]
            layer.refresh()

    def _on_prompts_changed(self, event):
        if event.action not in ("added", "removed", "changed") or self.layers is None:
            return
        if self._busy:
            show_info("promptseg: wait until the propagation has finished")
            self.layers.show_prompts(self.session.prompts())
            return
        want = {}
        slices = set(self.session.prompts()) if self.session else set()
        slices |= {self.layers.slice_of(p) for p in np.asarray(self.layers.points.data).reshape(-1, self.layers.ndim)}
        slices |= {self.layers.slice_of(v) for v in self.layers.shapes.data}
        for k in sorted(slices):
            want[k] = self.layers.prompts_on(k)
        for k in want:
            self._sync_slice(k, want[k])

    def _sync_slice(self, k: int, want: dict | None = None) -> None:
        """Bring the Session's prompts on slice ``k`` in line with what the layers show."""
        want = want or self.layers.prompts_on(k)
        if self.session is None and self.worker is None:
            show_info("promptseg: press Start first (the last start failed)" if self.layers else "promptseg: press Start first")
            return
        if self.session is None or k not in self.embedded:
            if k not in self._pending:
                self._pending.add(k)
                self._priority.insert(0, k)
                show_info(f"promptseg: slice {k} is still being embedded; your prompt is applied when it is ready")
            return
        try:
            pred = apply_prompts(self.session, k, want, self.layers.ndim)
            if pred is None:
                return
        except PromptsegError as e:
            show_error(f"promptseg: {e}")
            self.layers.show_prompts(self.session.prompts())
            return
        self._show(pred)

    def _show(self, pred) -> None:
        if pred is not None:
            self.layers.paint(self.session.mask, pred.bbox)
            self._status.value = f"predicted IoU {pred.score:.2f}"
            self._refine_timer.start()  # fires after this frame is drawn: the zoom and edge steps, if they wait

    def _refine(self) -> None:
        if self.session is not None and self.layers is not None:
            pred = self.session.refine()
            if pred is not None:
                self.layers.paint(self.session.mask, pred.bbox)
                self._status.value = f"predicted IoU {pred.score:.2f}"

    def _ready(self) -> bool:
        if self.session is None:
            show_info("promptseg: press Start and wait for the embedding first")
            return False
        return True

    # -- actions ----------------------------------------------------------------------------------
    def toggle_positive(self) -> None:
        self._positive.value = not self._positive.value

    def repredict(self) -> None:
        if self._ready():
            try:
                k = self.viewer.dims.current_step[0] if self.layers.ndim == 3 else None
                self._show(self.session.predict(k))
            except PromptsegError as e:
                show_error(f"promptseg: {e}")

    def _after_history(self, pred) -> None:
        self.layers.show_prompts(self.session.prompts())
        self._show(pred)

    def undo(self) -> None:
        if self._ready():
            self._after_history(self.session.undo())

    def redo(self) -> None:
        if self._ready():
            self._after_history(self.session.redo())

    def clear(self) -> None:
        if self._ready():
            self._after_history(self.session.reset())

    def commit(self) -> int | None:
        """Commit the current object, repaint, and autosave it to the project folder."""
        if not self._ready():
            return None
        bbox, edited = self.session.bbox, self.session.editing is not None
        try:
            label_id = self.session.commit()
        except PromptsegError as e:
            show_error(f"promptseg: {e}")
            return None
        self.layers.paint(self.session.mask, bbox)
        self.layers.show_prompts({})
        self.layers.refresh_committed()
        self.project.save_commit(self.session.labels, None if edited else bbox, self.session.objects[-1])
        self._status.value = f"committed object {label_id}"
        return label_id

    def propagate(self) -> None:
        """Carry the current object through the volume from its prompted slices (3D only)."""
        if not self._ready() or self._busy:
            return
        from qtpy.QtWidgets import QApplication

        k = int(self.viewer.dims.current_step[0]) if self.layers.ndim == 3 else None
        start = k if k in self.session.prompts() and len(self.session.prompts()) > 1 else None
        bar = progress(total=0, desc="promptseg: propagating")

        def tick(done, total):
            bar.total, bar.n = total, done
            bar.refresh()
            QApplication.processEvents()  # keep the viewer drawing; prompts are held off by _busy

        self._busy = True
        try:
            pred = self.session.propagate(start=start, progress=tick)
            self._show(pred)
            if pred.bbox[0].stop <= pred.bbox[0].start:  # no slice changed: say so rather than nothing
                show_info("promptseg: propagation stopped at the prompted slice(s): the next slices' masks were "
                          "too unlike them or too uncertain; prompt on another slice and press P again")
        except PromptsegError as e:
            show_error(f"promptseg: {e}")
        finally:
            self._busy = False
            bar.close()

    def next_object(self) -> None:
        """Commit the current object if there is one, and get ready for the next click."""
        if self.session is not None and self.session.bbox is not None:
            self.commit()
        if self.layers is not None:
            self.viewer.layers.selection.active = self.layers.points
            self.layers.points.mode = "add"

    def edit_selected(self) -> None:
        """Load the committed object under the Labels layer's selected id for correction."""
        if self._ready():
            try:
                self._show(self.session.edit(int(self.layers.committed.selected_label)))
            except PromptsegError as e:
                show_error(f"promptseg: {e}")

    def _on_paint(self, event=None) -> None:
        """Hand edits to the committed layer are autosaved too."""
        if self.project is not None and self.session is not None:
            self.project.save_labels(self.session.labels)

    def export(self, path) -> None:
        """Write the committed labels (TIFF, NIfTI with the source affine, or OME-Zarr)."""
        from ..io import write_labels

        if not self._ready() or not str(path) or str(path) == ".":
            return show_error("promptseg: choose a file to export to") if self.session else None
        meta = self._image.value.metadata.get("promptseg_meta") if self._image.value is not None else None
        try:
            out = write_labels(path, self.session.labels, meta)
        except PromptsegError as e:
            return show_error(f"promptseg: {e}")
        self._status.value = f"exported {out}"
