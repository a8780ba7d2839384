"""The Annotator's background work: embedding jobs for worker threads, and embedding the tiles in view."""

from __future__ import annotations

import numpy as np
from napari.qt.threading import create_worker

from ..embeddings import fill, open_store
from ..models import load_model
from ..tiled_decode import tiles_in
from ..tiling import TiledEmbedder, make_embedder


def gui_threads() -> int:
    """torch's thread count in the calling (GUI) thread, for a job to pin with :func:`_pin`."""
    import torch

    return torch.get_num_threads()


def _pin(threads: int) -> None:
    # a new thread copies the count last set anywhere, which is 1 while the GUI thread decodes a click
    # (``PromptModel.threads_for_click``): without this, a job started then would embed on one thread
    import torch

    torch.set_num_threads(threads)


def fill_job(store, embedder, tiles: list, *, threads: int):
    """Worker generator: embed ``tiles`` of a tiled image (the region in view) on ``threads`` torch threads."""
    _pin(threads)
    for t in tiles:
        if not store.is_done(t):
            fill(store, embedder, [t])
        yield t


def embed_job(model_args: dict, data, rgb: bool, cache, priority: list, level=None, *, threads: int):
    """Worker generator: load the model, open the cache, embed missing slices (requested ones first).

    ``threads``: torch threads for the job (:func:`gui_threads` when it was created).

    A tiled image (a slide) is not embedded ahead: its tiles are embedded when a prompt or the view
    needs them (see :class:`TilePrefetch`).
    """
    _pin(threads)
    model = model_args.pop("model", None) or load_model(**model_args)
    embedder = make_embedder(model, data, rgb=rgb, level=level)
    store = open_store(embedder, cache)
    yield ("ready", model, embedder, store)
    if isinstance(embedder, TiledEmbedder):
        yield ("progress", 1, 1, 0)  # the one plane is ready: each prompt embeds the tiles it needs
        return
    missing = set(store.missing())
    total = embedder.n_slices
    yield ("progress", total - len(missing), total, None)
    while missing:
        wanted = [k for k in priority if k in missing]
        k = wanted[0] if wanted else min(missing)
        fill(store, embedder, [k])
        missing.discard(k)
        yield ("progress", total - len(missing), total, k)


class TilePrefetch:
    """Embeds the tiles of a slide that come into view, in a worker, once the user stops panning.

    ``widget`` is the :class:`~promptseg.napari._annotator.AnnotatorWidget` (its viewer, session, image
    layer and layers are read when needed).
    """

    def __init__(self, widget):
        self.widget = widget
        self.worker = None
        self._timer = None

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def _camera(self):
        viewer = self.widget.viewer
        scene = getattr(viewer, "scene", None)  # napari >= 0.9 moved the camera there
        return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera

    def follow_view(self, on: bool) -> None:
        """Start (or stop) embedding ahead what the camera shows."""
        camera = self._camera()
        for ev in (camera.events.center, camera.events.zoom):
            ev.disconnect(self._changed)
            if on:
                ev.connect(self._changed)

    def _changed(self, event=None):
        from qtpy.QtCore import QTimer

        if self._timer is None:
            self._timer = QTimer()
            self._timer.setSingleShot(True)
            self._timer.timeout.connect(self.view)
        self._timer.start(400)  # after the user stops panning or zooming

    def view(self):
        """Embed the tiles of the region in view (see :meth:`region`)."""
        w = self.widget
        if w.session is None or not w.session.tiled:
            return None
        layer = w._image.value
        corners = np.asarray(layer.corner_pixels, dtype=float)[:, :2]
        if layer.multiscale:  # corner_pixels are in the pixels of the level on screen
            corners = corners * w.layers.factors[layer.data_level]
        (r0, c0), (r1, c1) = corners
        return self.region(r0, r1, c0, c1)

    def region(self, r0, r1, c0, c1, max_tiles: int = 12):
        """Embed, in a worker, the tiles of rows r0..r1, cols c0..c1 (full-resolution pixels) that are not
        embedded yet, when they are at most ``max_tiles``; returns them (None when nothing starts)."""
        s = self.widget.session
        if s is None or not s.tiled or self.worker is not None:
            return None
        tiles = [t for t in tiles_in(s.embedder, r0, r1, c0, c1) if not s.store.is_done(t)]
        if not tiles or len(tiles) > max_tiles:
            return None

        def done(*_):
            self.worker = None

        def failed(exc):
            done()
            self.widget.report_error(exc)

        self.worker = create_worker(fill_job, s.store, s.embedder, tiles, threads=gui_threads(),
                                    _connect={"finished": done, "errored": failed}, _start_thread=True)
        return tiles

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.quit()
            self.worker = None
