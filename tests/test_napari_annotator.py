"""The Annotator in a real napari viewer (under Xvfb): prompts through the layers, keys, commits,
autosave and reopening, export, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

from napari.utils.key_bindings import KeyBinding  # noqa: E402
from napari.utils.notifications import notification_manager  # noqa: E402

import promptseg as ps  # noqa: E402
from promptseg.io import read_image  # noqa: E402
from promptseg.project import Project  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTSEG_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def messages():
    seen = []

    def record(n):
        seen.append(str(n.message))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


def _open(make_napari_viewer, qtbot, sample=None, image=None, start=True, show=False):
    viewer = make_napari_viewer(show=show)
    if sample:
        viewer.open_sample("promptseg", sample)
    if image is not None:
        viewer.add_image(image, name="img")
    _, widget = viewer.window.add_plugin_dock_widget("promptseg", "promptseg Annotator")
    widget.reset_choices()
    if start:
        widget.start()
        qtbot.waitUntil(lambda: widget.session is not None and bool(widget.embedded), timeout=30000)
    return viewer, widget


def _press(layer, key):
    layer.keymap[KeyBinding.from_str(key)](layer)


def _expected(widget, qtbot, **prompts):
    """The mask a headless Session gives for the same prompts (the plugin must show exactly that, once
    its deferred zoom step has run a frame after the prompt)."""
    qtbot.waitUntil(lambda: not widget.session.needs_refine, timeout=5000)
    s = ps.Session(widget.session.model, widget.session.image)
    return s.set_prompts(**prompts).mask


def test_click_on_points_layer_paints_current_object(make_napari_viewer, qtbot):
    viewer, w = _open(make_napari_viewer, qtbot, sample="coins")
    assert "prompt points" in viewer.layers and "current object" in viewer.layers
    w.layers.points.add([[124, 205]])  # as a click in add mode does
    current = viewer.layers["current object"].data
    assert current.any()
    assert np.array_equal(current.astype(bool), w.session.mask)
    assert w.session.prompts()[0]["points"] == [[124.0, 205.0, 1]]
    # a negative click (T toggles) corrects the object with the previous logits fed back
    _press(w.layers.points, "t")
    w.layers.points.add([[40, 40]])
    assert w.session.prompts()[0]["points"][-1] == [40.0, 40.0, 0]
    assert np.array_equal(viewer.layers["current object"].data.astype(bool), w.session.mask)


def test_right_click_adds_a_negative_point(make_napari_viewer, qtbot):
    from types import SimpleNamespace

    viewer, w = _open(make_napari_viewer, qtbot, sample="coins")
    w.layers.points.add([[124, 205]])
    layer = w.layers.points
    w._right_click(layer, SimpleNamespace(button=2, position=layer.data_to_world([60, 300])))
    assert w.session.prompts()[0]["points"] == [[124.0, 205.0, 1], [60.0, 300.0, 0]]
    assert bool(layer.feature_defaults["positive"][0])  # the next left click is positive again


def test_box_and_squiggle_through_shapes_layer(make_napari_viewer, qtbot):
    viewer, w = _open(make_napari_viewer, qtbot, sample="coins")
    w.layers.shapes.add_rectangles([[[100, 180], [150, 232]]])
    assert w.session.prompts()[0]["box"] == [100.0, 180.0, 150.0, 232.0]
    expected = _expected(w, qtbot, box=((100, 180), (150, 232)))
    assert np.array_equal(viewer.layers["current object"].data.astype(bool), expected)
    w.layers.shapes.add_paths([[[110, 190], [120, 200], [130, 215]]])
    pr = w.session.prompts()[0]
    assert pr["box"] is not None and len(pr["scribbles"]) == 1
    assert np.array_equal(viewer.layers["current object"].data.astype(bool), w.session.mask)


def test_a_large_mask_and_its_correction_are_both_shown(make_napari_viewer, qtbot):
    # a change above LARGE_CHANGE pixels is written as a box and the shown slice re-read; a small one
    # goes through napari's partial repaint: the viewer must show the Session's mask either way
    from promptseg.napari._layers import LARGE_CHANGE

    img = np.full((512, 512), 30, np.uint8)
    img[50:460, 60:470] = 200
    viewer, w = _open(make_napari_viewer, qtbot, image=img, show=True)  # shown: its canvas is drawn
    layer = viewer.layers["current object"]
    w.layers.shapes.add_rectangles([[[50, 60], [459, 469]]])
    qtbot.waitUntil(lambda: not w.session.needs_refine, timeout=5000)
    assert w.session.mask.sum() > LARGE_CHANGE
    assert np.array_equal(layer.data.astype(bool), w.session.mask)
    viewer.reset_view()

    def centre():  # the drawn canvas at the image's centre, RGB
        shot = viewer.screenshot(canvas_only=True, flash=False)
        return shot[shot.shape[0] // 2, shot.shape[1] // 2, :3].astype(int)

    r, _, b = centre()
    assert w.session.mask[256, 256] and b - r > 60  # the grey square under the cyan current object
    _press(w.layers.points, "t")
    w.layers.points.add([[250, 250]])  # a negative click in the middle: a small change
    qtbot.waitUntil(lambda: not w.session.needs_refine, timeout=5000)
    assert not w.session.mask[250, 250]
    assert np.array_equal(np.asarray(layer._slice.image.raw).astype(bool), w.session.mask)
    _press(w.layers.points, "Shift-C")
    assert not layer.data.any()
    r, _, b = centre()
    assert abs(b - r) < 20  # grey again


def test_deleting_a_point_repredicts_from_the_rest(make_napari_viewer, qtbot):
    viewer, w = _open(make_napari_viewer, qtbot, sample="coins")
    w.layers.points.add([[124, 205]])
    w.layers.points.add([[190, 100]])
    w.layers.points.selected_data = {1}
    w.layers.points.remove_selected()
    assert w.session.prompts()[0]["points"] == [[124.0, 205.0, 1]]
    expected = _expected(w, qtbot, points=[(124, 205)], positive=[True])
    assert np.array_equal(viewer.layers["current object"].data.astype(bool), expected)


def test_undo_redo_keys_restore_prompts_and_mask(make_napari_viewer, qtbot):
    viewer, w = _open(make_napari_viewer, qtbot, sample="coins")
    w.layers.points.add([[124, 205]])
    first = w.session.mask.copy()
    w.layers.points.add([[60, 300]])
    _press(w.layers.points, "Control-Z")
    assert len(w.layers.points.data) == 1
    assert np.array_equal(viewer.layers["current object"].data.astype(bool), first)
    _press(w.layers.points, "Control-Shift-Z")
    assert len(w.layers.points.data) == 2
    _press(w.layers.points, "Shift-C")  # clear
    assert len(w.layers.points.data) == 0 and not viewer.layers["current object"].data.any()


def test_commit_twice_gives_new_ids_and_autosaves(make_napari_viewer, qtbot, tmp_path):
    img = np.zeros((128, 160), np.uint8)
    img[20:60, 20:70] = 200
    img[70:120, 90:150] = 120
    viewer, w = _open(make_napari_viewer, qtbot, image=img)
    w.layers.shapes.add_rectangles([[[20, 20], [60, 70]]])
    assert w.commit() == 1
    w.layers.shapes.add_rectangles([[[70, 90], [120, 150]]])
    _press(w.layers.points, "c")
    committed = viewer.layers["committed objects"].data
    assert set(np.unique(committed)) - {0} == {1, 2}
    assert not viewer.layers["current object"].data.any() and len(w.layers.shapes.data) == 0
    saved = Project.open(w.project.path)
    assert np.array_equal(saved.load_labels(), committed)
    assert [o["id"] for o in saved.objects] == [1, 2]
    assert saved.objects[0]["prompts"]["0"]["box"] == [20.0, 20.0, 60.0, 70.0]  # JSON keys are strings

    # the process goes away without saving anything more; a new viewer on the same image continues the work
    viewer.close()
    viewer2, w2 = _open(make_napari_viewer, qtbot, image=img)
    assert np.array_equal(viewer2.layers["committed objects"].data, committed)
    w2.layers.points.add([[40, 40]])
    assert w2.commit() == 3


def test_export_each_format(make_napari_viewer, qtbot, tmp_path):
    img = np.zeros((64, 80), np.uint8)
    img[10:40, 10:50] = 220
    viewer, w = _open(make_napari_viewer, qtbot, image=img)
    w.layers.shapes.add_rectangles([[[10, 10], [40, 50]]])
    w.commit()
    for name in ("labels.tif", "labels.nii.gz", "labels.ome.zarr"):
        w.export(tmp_path / name)
        back, _ = read_image(tmp_path / name)
        assert np.array_equal(np.asarray(back).reshape(w.session.labels.shape), w.session.labels), name


def test_correcting_an_existing_labels_layer(make_napari_viewer, qtbot):
    viewer, w = _open(make_napari_viewer, qtbot, sample="coins", start=False)
    existing = np.zeros((303, 384), np.int32)
    existing[100:150, 180:230] = 5
    viewer.add_labels(existing, name="old labels")
    w.reset_choices()
    w._fix.value = viewer.layers["old labels"]
    w.start()
    qtbot.waitUntil(lambda: w.session is not None and bool(w.embedded), timeout=30000)
    viewer.layers["old labels"].selected_label = 5
    w.edit_selected()
    assert np.array_equal(w.session.mask, existing == 5)
    w.layers.points.add([[190, 100]])  # correct it with a click, then commit: the id stays 5
    assert w.commit() == 5
    assert viewer.layers["old labels"].data is w.session.labels


def test_bad_inputs_give_notifications_and_keep_the_viewer_usable(make_napari_viewer, qtbot, messages):
    viewer, w = _open(make_napari_viewer, qtbot, image=np.zeros((2, 3, 32, 32), np.uint8), start=False)
    w.start()
    assert any("spatial dimensions" in m for m in messages) and w.layers is None

    viewer.layers.clear()
    viewer.add_image(np.zeros((64, 64, 2), np.uint8), name="two channels")
    w.reset_choices()
    w.start()
    assert any("looks multichannel" in m for m in messages) and w.layers is None

    viewer.layers.clear()
    viewer.add_image(np.zeros((64, 64), np.uint8), name="img")
    viewer.add_labels(np.zeros((10, 10), np.int32), name="wrong")
    w.reset_choices()
    w._image.value = viewer.layers["img"]
    w._fix.value = viewer.layers["wrong"]
    w.start()
    assert any("has shape (10, 10)" in m for m in messages) and w.layers is None

    w._fix.value = None
    w.start()
    qtbot.waitUntil(lambda: w.session is not None and bool(w.embedded), timeout=30000)
    w.layers.points.add([[500, 500]])  # outside the image
    assert any("outside the image" in m for m in messages)
    assert len(w.layers.points.data) == 0 and w.session.prompts() == {}
    w.layers.points.add([[30, 30]])  # still usable
    assert w.session.prompts()[0]["points"] == [[30.0, 30.0, 1]]


def test_click_before_embedding_finished_is_applied_when_ready(make_napari_viewer, qtbot, messages):
    vol = np.zeros((6, 48, 48), np.uint8)
    vol[:, 10:30, 10:30] = 200
    viewer, w = _open(make_napari_viewer, qtbot, image=vol, start=False)
    w.start()
    w.layers.points.add([[4, 20, 20]])  # the worker has not finished (or not even started) slice 4
    qtbot.waitUntil(lambda: w.session is not None and 4 in w.session.prompts(), timeout=30000)
    assert any("still being embedded" in m for m in messages) or w.embedded
    assert np.array_equal(viewer.layers["current object"].data.astype(bool), w.session.mask)
    assert w.session.mask[4].any() and not w.session.mask[:4].any()


CHILD = r"""
import sys, time
import numpy as np
import napari
from qtpy.QtWidgets import QApplication
viewer = napari.Viewer(show=False)
viewer.open(sys.argv[1])
_, w = viewer.window.add_plugin_dock_widget("promptseg", "promptseg Annotator")
w.reset_choices()
w.start()
app = QApplication.instance()
while w.session is None or not w.embedded:
    app.processEvents(); time.sleep(0.02)
w.layers.shapes.add_rectangles([[[10, 10], [40, 50]]])
print("COMMITTED", w.commit(), flush=True)
w.layers.points.add([[50, 60]])  # an object in progress, never committed
while True:
    app.processEvents(); time.sleep(0.05)
"""


def test_killed_annotator_loses_no_committed_object(make_napari_viewer, qtbot, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    import tifffile

    img = np.zeros((64, 80), np.uint8)
    img[10:40, 10:50] = 220
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, img)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        line = child.stdout.readline()
        assert line.startswith("COMMITTED 1"), line
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
    viewer = make_napari_viewer()
    viewer.open(str(path))
    _, w = viewer.window.add_plugin_dock_widget("promptseg", "promptseg Annotator")
    w.reset_choices()
    w.start()
    qtbot.waitUntil(lambda: w.session is not None and bool(w.embedded), timeout=30000)
    committed = viewer.layers["committed objects"].data
    assert set(np.unique(committed)) == {0, 1} and (committed == 1).sum() > 0
    assert [o["id"] for o in w.project.objects] == [1]
    assert (tmp_path / "img.tif.promptseg" / "project.json").exists()


def test_closing_the_viewer_mid_embedding_is_clean_and_resumable(make_napari_viewer, qtbot):
    vol = np.random.default_rng(0).integers(0, 255, (24, 64, 64), dtype=np.uint8)
    viewer, w = _open(make_napari_viewer, qtbot, image=vol, start=False)
    w.start()
    qtbot.waitUntil(lambda: len(w.embedded) >= 2, timeout=30000)
    store = w.session.store
    viewer.close()  # the worker is told to stop; late messages must not touch deleted widgets
    qtbot.wait(500)
    done = 24 - len(store.missing())
    assert 2 <= done < 24
    viewer2, w2 = _open(make_napari_viewer, qtbot, image=vol, start=False)
    w2.start()
    qtbot.waitUntil(lambda: w2.session is not None and len(w2.embedded) == 24, timeout=60000)
    assert w2.session.store.path == store.path  # the same cache, resumed


def test_p_propagates_through_the_volume(make_napari_viewer, qtbot, messages):
    zz, rr, cc = np.mgrid[:8, :48, :48]
    vol = np.where(((zz - 4) / 3.5) ** 2 + ((rr - 24) / 12) ** 2 + ((cc - 24) / 12) ** 2 <= 1, 220, 20).astype(np.uint8)
    viewer, w = _open(make_napari_viewer, qtbot, image=vol)
    qtbot.waitUntil(lambda: len(w.embedded) == 8, timeout=30000)
    viewer.dims.current_step = (4, 0, 0)
    assert 4 in w.session._feature_cache  # the shown slice's embedding is read before the first prompt
    w.layers.shapes.add_rectangles([[[4, 12, 12], [4, 12, 36], [4, 36, 36], [4, 36, 12]]])
    qtbot.waitUntil(lambda: not w.session.needs_refine, timeout=5000)  # the box's deferred zoom step, if any
    before = viewer.layers["current object"].data.copy()
    _press(w.layers.points, "p")
    after = viewer.layers["current object"].data
    assert np.array_equal(after.astype(bool), w.session.mask)  # whatever propagation gave, the layer shows it
    assert np.array_equal(after[4], before[4])  # the key slice is unchanged
    _press(w.layers.points, "Control-Z")  # one undo step removes the propagated slices
    assert np.array_equal(viewer.layers["current object"].data, before)
    viewer2, w2 = _open(make_napari_viewer, qtbot, sample="coins")
    _press(w2.layers.points, "p")
    assert any("3D volume" in m for m in messages)


def test_p_on_an_object_of_one_slice_says_that_nothing_was_propagated(make_napari_viewer, qtbot, messages):
    vol = np.full((6, 48, 48), 20, np.uint8)
    rr, cc = np.mgrid[:48, :48]
    vol[3][(rr - 24) ** 2 + (cc - 24) ** 2 <= 12**2] = 220  # the object is on slice 3 only
    viewer, w = _open(make_napari_viewer, qtbot, image=vol)
    qtbot.waitUntil(lambda: len(w.embedded) == 6, timeout=30000)
    viewer.dims.current_step = (3, 0, 0)
    w.layers.points.add([3, 24, 24])
    qtbot.waitUntil(lambda: not w.session.needs_refine, timeout=5000)
    before = viewer.layers["current object"].data.copy()
    assert before[3].any() and not before[[0, 1, 2, 4, 5]].any()
    _press(w.layers.points, "p")
    assert np.array_equal(viewer.layers["current object"].data, before)
    assert any("propagation stopped at the prompted slice" in m for m in messages)
    _press(w.layers.points, "Control-Z")  # nothing was recorded: undo takes back the click itself
    assert not viewer.layers["current object"].data.any()


def test_annotate_command_opens_sample_with_the_annotator(qtbot, monkeypatch):
    """What `promptseg annotate --sample coins` (the README's main job) does, minus the event loop."""
    import promptseg.cli as cli
    from promptseg.napari._launch import launch

    opened = {}

    def fake_launch(image, **kw):
        opened["viewer"], opened["widget"] = launch(image, run=False, **kw)

    monkeypatch.setattr("promptseg.napari._launch.launch", fake_launch)
    assert cli.main(["annotate", "--sample", "coins", "--device", "cpu"]) == 0
    viewer, w = opened["viewer"], opened["widget"]
    try:
        assert "coins" in viewer.layers and w._model.value == "default"
        qtbot.waitUntil(lambda: w.session is not None and bool(w.embedded), timeout=30000)
        w.layers.points.add([[124, 205]])
        assert viewer.layers["current object"].data.any()
    finally:
        viewer.close()


def test_zoom_follows_the_model_and_the_checkbox_switches_it(make_napari_viewer, qtbot):
    rr, cc = np.mgrid[:600, :640]
    small = ((rr - 300) / 14.0) ** 2 + ((cc - 320) / 10.0) ** 2 <= 1
    img = np.where(small, 190, 60).astype(np.uint8)
    viewer, w = _open(make_napari_viewer, qtbot, image=img)
    assert w._zoom.value and w.session.zoom == w.session.model.spec.zoom
    w.layers.points.add([[300, 320]])
    # the full view's mask is painted at once; the zoom step runs after that frame and repaints
    assert w.session.needs_refine and viewer.layers["current object"].data.any()
    assert np.array_equal(viewer.layers["current object"].data.astype(bool), w.session.mask)
    qtbot.waitUntil(lambda: not w.session.needs_refine, timeout=5000)
    assert w.session._states[0].zoom.window is not None  # predicted again in a window around the object
    assert np.array_equal(viewer.layers["current object"].data.astype(bool), w.session.mask)
    w._zoom.value = False
    assert not w.session.zoom
    _press(w.layers.points, "s")  # re-predict: the full view alone now (then the edge step, a frame later)
    qtbot.waitUntil(lambda: not w.session.needs_refine, timeout=5000)
    assert w.session._states[0].zoom is None
    assert np.array_equal(viewer.layers["current object"].data.astype(bool), w.session.mask)


def test_edges_follow_the_model_and_the_checkbox_switches_them(make_napari_viewer, qtbot):
    """The shipped model's edge refiner runs a frame after the prompt, with the zoom step; unticking
    the box shows the decoder's own boundary, which on a star with sharp points is worse."""
    from conftest import star_image

    from promptseg.evaluate import dice

    img, star = star_image()
    viewer, w = _open(make_napari_viewer, qtbot, image=img)
    assert w._edges.value and w.session.edges and w.session.model.has_edges
    w.layers.points.add([[128, 128]])
    qtbot.waitUntil(lambda: not w.session.needs_refine, timeout=5000)
    refined = viewer.layers["current object"].data.astype(bool).copy()
    assert np.array_equal(refined, w.session.mask)
    w._edges.value = False
    assert not w.session.edges
    _press(w.layers.points, "s")  # re-predict without the edge step
    qtbot.waitUntil(lambda: not w.session.needs_refine, timeout=5000)
    plain = viewer.layers["current object"].data.astype(bool)
    assert np.array_equal(plain, w.session.mask)
    assert dice(refined, star) > dice(plain, star) + 0.01 and dice(refined, star) > 0.93


def test_a_click_on_a_large_flat_object_shows_the_object(make_napari_viewer, qtbot):
    """A click in the middle of a bright disk filling most of the image: the first frame shows the full
    view's blob, the deferred step the disk found by the wide view (promptseg.wide)."""
    from promptseg.evaluate import dice

    rr, cc = np.mgrid[:256, :256]
    disk = (rr - 128) ** 2 + (cc - 128) ** 2 < 100**2
    img = np.clip(np.where(disk, 200, 40) + np.random.default_rng(0).normal(0, 8, disk.shape), 0, 255)
    viewer, w = _open(make_napari_viewer, qtbot, image=img.astype(np.uint8))
    w.layers.points.add([[128, 128]])
    assert w.session.needs_refine and dice(viewer.layers["current object"].data.astype(bool), disk) < 0.3
    qtbot.waitUntil(lambda: not w.session.needs_refine, timeout=5000)
    shown = viewer.layers["current object"].data.astype(bool)
    assert np.array_equal(shown, w.session.mask) and dice(shown, disk) > 0.9
