"""A 20000 x 20000 whole slide in a real napari viewer (under Xvfb): multiscale layers, lazy tiles,
a click that embeds only the tiles it needs, commit and autosave, a pyramidal TIFF through the reader."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

pytest.importorskip("napari")

from promptseg.project import Project  # noqa: E402
from promptseg.samples import SLIDE_SEED, SLIDE_SHAPE  # noqa: E402
from promptseg.slide import SyntheticSlide  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTSEG_CACHE", str(tmp_path / "cache"))


def _start(viewer, qtbot, level=0):
    _, w = viewer.window.add_plugin_dock_widget("promptseg", "promptseg Annotator")
    w.reset_choices()
    w._level.value = level
    w.start()
    qtbot.waitUntil(lambda: w.session is not None and 0 in w.embedded, timeout=60000)
    return w


def test_click_on_the_slide_embeds_its_tiles_and_paints_the_object(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    (image,) = viewer.open_sample("promptseg", "slide")
    assert image.multiscale and image.data[0].shape == (20000, 20000, 3) and len(image.data) == 6
    w = _start(viewer, qtbot)
    store = w.session.store
    assert w.session.tiled and store.n_slices == 52 * 52 and len(store.missing()) == store.n_slices
    current = viewer.layers["current object"]
    assert current.multiscale and current.data[0].shape == (20000, 20000)

    slide = SyntheticSlide(SLIDE_SHAPE, seed=SLIDE_SEED)
    i = 700
    r, c = slide.objects[i][:2]
    w.layers.points.add([[r, c]])  # a click in add mode
    assert store.n_slices - len(store.missing()) <= 4  # only the tiles under the click
    box = (slice(int(r) - 250, int(r) + 250), slice(int(c) - 250, int(c) + 250))
    truth = slide.labels(box[0].start, box[0].stop, box[1].start, box[1].stop) == i + 1
    shown = np.asarray(current.data[0][box]) > 0
    assert 2 * (shown & truth).sum() / (shown.sum() + truth.sum()) > 0.9
    assert np.asarray(current.data[2][int(r) // 4, int(c) // 4]) == 1  # coarser levels show it too

    label = w.commit()
    committed = viewer.layers["committed objects"]
    assert committed.multiscale and np.asarray(committed.data[0][int(r), int(c)]) == label
    saved = Project.open(w.project.path).load_labels()  # the autosave holds it (read back sparsely)
    big = (slice(int(r) - 1000, int(r) + 1000), slice(int(c) - 1000, int(c) + 1000))
    assert saved[int(r), int(c)] == label and (saved[big] == label).sum() == (w.session.labels[big] == label).sum() > 0


def test_tiles_in_view_are_embedded_ahead(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample("promptseg", "slide")
    w = _start(viewer, qtbot)
    tiles = w.prefetch_region(8000, 8600, 8000, 8600)
    assert tiles and len(tiles) <= 9
    qtbot.waitUntil(lambda: not w.tiles.busy, timeout=60000)
    assert all(w.session.store.is_done(t) for t in tiles)
    assert w.session.store.n_slices - len(w.session.store.missing()) == len(tiles)
    assert w.prefetch_region(0, 20000, 0, 20000) is None  # the whole slide in view: nothing is embedded ahead


def test_pyramidal_tiff_opens_as_multiscale_and_embeds_at_a_level(make_napari_viewer, qtbot, tmp_path):
    slide = SyntheticSlide((3000, 2600), density=0, extra=[(1400, 1200, 200, 150, 0.4)])
    full = slide.region(0, 3000, 0, 2600)[0]
    path = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(full, subifds=2, tile=(256, 256), photometric="rgb", compression="zlib")
        tw.write(full[::2, ::2], subfiletype=1, tile=(256, 256), photometric="rgb", compression="zlib")
        tw.write(full[::4, ::4], subfiletype=1, tile=(256, 256), photometric="rgb", compression="zlib")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="promptseg")
    assert layer.multiscale and [d.shape[:2] for d in layer.data] == [(3000, 2600), (1500, 1300), (750, 650)]
    w = _start(viewer, qtbot, level=2)
    assert w.session.embedder.level == 2 and w.session.embedder.scale == (4.0, 4.0)
    w.layers.points.add([[1400, 1200]])
    truth = slide.labels(0, 3000, 0, 2600) > 0
    shown = np.asarray(viewer.layers["current object"].data[0]) > 0
    assert 2 * (shown & truth).sum() / (shown.sum() + truth.sum()) > 0.9


def test_missing_level_is_a_clear_message(make_napari_viewer, qtbot):
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))
    viewer = make_napari_viewer()
    viewer.open_sample("promptseg", "slide")
    _, w = viewer.window.add_plugin_dock_widget("promptseg", "promptseg Annotator")
    w.reset_choices()
    w._level.value = 9
    w.start()
    assert w.session is None and any("level 9 does not exist" in m for m in seen)
