"""Zoom windows: geometry, and what a Session does with them (finer masks of small objects)."""

from __future__ import annotations

import numpy as np
import pytest

import promptseg as ps
from promptseg import zoom
from promptseg.evaluate import dice


def test_window_is_a_square_around_the_object_with_a_minimum_side():
    # a 10-px object in a 1000-px image: the minimum side (input 256 / 4 = 64 px), centred on it
    assert zoom.window((100, 110, 500, 510), (1000, 1000), 256) == (73, 137, 473, 537)
    # a 100-px object: EXPAND x its side
    r0, r1, c0, c1 = zoom.window((100, 200, 300, 350), (1000, 1000), 256)
    assert r1 - r0 == c1 - c0 == 160 and r0 <= 100 and r1 >= 200 and c0 <= 300 and c1 >= 350
    # near a corner it is shifted inside the image, keeping its size
    assert zoom.window((0, 10, 995, 1000), (1000, 1000), 256) == (0, 64, 936, 1000)
    # an object that fills much of the image gains nothing: no window
    assert zoom.window((0, 500, 0, 500), (1000, 1000), 256) is None
    # a thin image cuts the window to its height
    assert zoom.window((10, 20, 10, 20), (40, 400), 256) == (0, 40, 0, 64)


def test_a_window_is_kept_until_the_object_reaches_its_margin():
    win = zoom.window((100, 140, 100, 140), (1000, 1000), 256)
    assert zoom.keeps(win, (105, 140, 100, 135), (1000, 1000), 256)
    assert not zoom.keeps(win, (100, 140, 100, win[3] - 1), (1000, 1000), 256)  # at its right edge
    assert not zoom.keeps(win, (118, 120, 118, 120), (1000, 1000), 64)  # far smaller than the window


def _ellipse(shape=(1024, 900), centre=(400, 610), radii=(30, 18), seed=0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    gt = ((yy - centre[0]) / radii[0]) ** 2 + ((xx - centre[1]) / radii[1]) ** 2 <= 1
    rng = np.random.default_rng(seed)
    return np.clip(80 + 90 * gt + rng.normal(0, 12, gt.shape), 0, 255).astype(np.uint8), gt


def test_zoom_gives_a_finer_mask_of_a_small_object(default_model):
    """A 36 x 60 px object in a 1024 x 900 image is 9 x 15 px in the shipped model's 256-px view."""
    img, gt = _ellipse()  # (the edge refiner off: the zoom's own gain; with it, both views gain)
    coarse = ps.Session(default_model, img, zoom=False, edges=False).add_point((400, 610)).mask
    s = ps.Session(default_model, img, zoom=True, edges=False)
    fine = s.add_point((400, 610)).mask
    assert dice(fine, gt) > 0.95 and dice(fine, gt) > dice(coarse, gt) + 0.03
    r0, r1, c0, c1 = s._states[0].zoom.window
    assert r0 <= 370 and r1 >= 430 and c0 <= 592 and c1 >= 628 and r1 - r0 < 200


def test_corrections_reuse_the_window_until_the_object_leaves_it(default_model, monkeypatch):
    img, gt = _ellipse()
    img2, gt2 = _ellipse(centre=(400, 300), seed=1)
    img = np.maximum(img, img2)
    s = ps.Session(default_model, img, zoom=True)
    encodes = []
    real = default_model.encode
    monkeypatch.setattr(default_model, "encode", lambda ims: encodes.append(ims[0].shape) or real(ims))
    s.add_point((400, 610))
    win = s._states[0].zoom.window
    s.add_point((385, 612))
    s.add_point((900, 100), positive=False)  # far outside the window: only the full view sees it
    assert s._states[0].zoom.window == win
    assert len(encodes) == 2  # the image, then one window
    s.add_point((400, 300))  # a positive click on a second ellipse: a window around both clicks, or none
    view = s._states[0].zoom
    if view is not None:
        r0, r1, c0, c1 = view.window
        assert r0 <= 400 < r1 and c0 <= 300 and 610 < c1


def test_undo_brings_back_the_zoomed_mask(default_model):
    img, gt = _ellipse()
    s = ps.Session(default_model, img, zoom=True)
    first = s.add_point((400, 610)).mask.copy()
    s.add_point((400, 613), positive=False)
    assert np.array_equal(s.undo().mask, first)
    assert s._states[0].zoom is not None


def test_zoom_on_a_volume_slice_and_with_a_squiggle(default_model):
    img, gt = _ellipse(shape=(300, 320), centre=(150, 160), radii=(12, 9))
    vol = np.stack([img // 3, img, img // 3])
    s = ps.Session(default_model, vol, zoom=True)
    p = s.add_scribble([(1, 143, 160), (1, 150, 161), (1, 157, 160)])
    assert s._states[1].zoom is not None
    assert not p.mask[0].any() and not p.mask[2].any()
    assert dice(p.mask[1], gt) > 0.85


def test_zoom_follows_the_model_and_is_off_on_tiles(default_model, small_sam):
    assert ps.Session(default_model, np.zeros((64, 64), np.uint8)).zoom == default_model.spec.zoom
    assert not ps.Session(small_sam[0], np.zeros((64, 64), np.uint8)).zoom  # an official-style SAM: off
    assert not ps.Session(default_model, np.zeros((1200, 1200), np.uint8), zoom=True).zoom  # tiled


@pytest.mark.parametrize("start", ["point", "box"])
def test_a_zoomed_mask_that_reaches_the_window_edge_grows_the_window(default_model, start):
    """A long object whose full-view mask is too short: the zoomed mask runs into the window's edge, and
    the window grows until the object fits (or zooming stops), so the mask is never cut at an edge."""
    img, gt = _ellipse(shape=(600, 600), centre=(300, 300), radii=(8, 60))
    s = ps.Session(default_model, img, zoom=True)
    p = s.add_point((300, 300)) if start == "point" else s.add_box((292, 240), (308, 360))
    view = s._states[0].zoom
    if view is not None:
        r0, r1, c0, c1 = view.window
        m = p.mask[r0:r1, c0:c1]
        assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())
    assert dice(p.mask, gt) > 0.8


def test_propagation_zooms_on_every_slice(default_model):
    zz, yy, xx = np.mgrid[:21, :240, :240]
    gt = ((zz - 10) / 7.0) ** 2 + ((yy - 120) / 22.0) ** 2 + ((xx - 110) / 16.0) ** 2 <= 1
    rng = np.random.default_rng(2)
    vol = np.clip(70 + 100 * gt + rng.normal(0, 10, gt.shape), 0, 255).astype(np.uint8)
    s = ps.Session(default_model, vol, zoom=True)
    s.add_box((10, 98, 94), (10, 142, 126))
    s.add_box((4, 105, 100), (4, 135, 120))  # a second key slice: slices 5..9 are blended from both walks
    p = s.propagate()
    filled = [k for k, st in s._states.items() if st.bits is not None]
    assert all(s._states[k].zoom is not None for k in filled)
    assert dice(p.mask, gt) > 0.85


def test_deferred_zoom_gives_the_same_masks_in_two_steps(default_model):
    """A viewer shows the full view's mask at once and refines it a frame later; the result, the undo
    history and a commit are those of the zoom done at once."""
    img, gt = _ellipse()
    direct = ps.Session(default_model, img, zoom=True)
    a = direct.add_point((400, 610)).mask.copy()
    b = direct.add_point((402, 600), positive=False).mask.copy()
    s = ps.Session(default_model, img, zoom=True)
    s.defer_zoom = True
    quick = s.add_point((400, 610))
    assert isinstance(s._states[0].zoom, zoom.Pending) and quick.mask.any()
    refined = s.refine()
    assert np.array_equal(refined.mask, a) and s.refine() is None
    s.add_point((402, 600), positive=False)
    assert np.array_equal(s.refine().mask, b)
    assert np.array_equal(s.undo().mask, a)  # one undo step per prompt, refinement included
    assert not s.undo().mask.any()
    assert np.array_equal(s.redo().mask, a)
    s.add_point((402, 600), positive=False)  # pending at commit time: committed refined
    label = s.commit()
    assert np.array_equal(s.labels == label, b)


def test_a_new_window_keeps_the_earlier_window_boundary_where_the_full_view_agrees():
    from types import SimpleNamespace

    from promptseg._state import pack

    rr, cc = np.mgrid[:200, :200]
    fine = (rr - 60) ** 2 + (cc - 60) ** 2 < 20**2
    coarse = ((rr - 60) ** 2 + (cc - 60) ** 2 < 23**2) | ((rr - 150) ** 2 + (cc - 150) ** 2 < 15**2)
    full = SimpleNamespace(**dict(zip(("bits", "extent"), pack(coarse))))
    previous = zoom.ZoomView((20, 100, 20, 100), None, *pack(fine))
    seed = zoom._seed(full, previous, (0, 200, 0, 200), cell=4)
    # the earlier fine disk where the full view agrees, the full view's new part elsewhere
    assert np.array_equal(seed, fine | ((rr - 150) ** 2 + (cc - 150) ** 2 < 15**2))


def test_the_full_view_stays_until_the_window_predicts_at_least_its_iou(default_model, monkeypatch):
    img, gt = _ellipse()
    full = ps.Session(default_model, img, zoom=False).add_point((400, 610)).mask.copy()
    s = ps.Session(default_model, img, zoom=True)
    real = default_model.decode

    def doubtful(features, *args):  # the window's decoder pass (not the full view's) doubts its mask
        low, iou = real(features, *args)
        return (low, iou * 0.01) if features is not s._feature_cache.get(0) else (low, iou)

    monkeypatch.setattr(default_model, "decode", doubtful)
    first = s.add_point((400, 610))
    assert np.array_equal(first.mask, full) and not s._states[0].zoom.own
    assert s._states[0].zoom.window[1] - s._states[0].zoom.window[0] < 200  # the window is kept for the next click
    monkeypatch.setattr(default_model, "decode", real)
    second = s.add_point((400, 612))
    assert s._states[0].zoom.own and dice(second.mask, gt) > 0.95 and dice(second.mask, gt) > dice(full, gt)
    monkeypatch.setattr(default_model, "decode", doubtful)
    third = s.add_point((395, 605))  # once the window has won, its mask is used whatever it predicts
    assert s._states[0].zoom.own and not np.array_equal(third.mask, full)


def test_an_unsure_sprawling_full_view_looks_again_around_the_click(default_model, monkeypatch):
    """A full view that predicts nearly the whole image at a low IoU gives no window of its own; the
    Session then decodes a window of a quarter of the image around the click, from the click alone."""
    img, gt = _ellipse(shape=(600, 600), centre=(300, 300), radii=(8, 60))
    s = ps.Session(default_model, img, zoom=True)
    real = default_model.decode

    def sprawling(features, *args):  # the full view's pass: everything, with little confidence
        low, iou = real(features, *args)
        if features is s._feature_cache.get(0):
            return np.full_like(low, 5.0), np.full_like(iou, 0.05)
        return low, iou

    monkeypatch.setattr(default_model, "decode", sprawling)
    p = s.add_point((300, 300))
    view = s._states[0].zoom
    assert view is not None and view.own and view.window == (225, 375, 225, 375)
    assert p.mask.sum() < 150 * 150 and p.mask[300, 300]  # the window's mask, not the sprawl
    assert dice(p.mask, gt) > 0.3
