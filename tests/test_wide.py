"""The wide view (promptseg.wide): a first click on a large flat object gets the object, not a blob."""

from __future__ import annotations

import numpy as np
import pytest

import promptseg as ps
from promptseg import wide
from promptseg.evaluate import dice


def _disk(side, radius, fg=200, bg=40, noise=8.0, seed=0):
    rr, cc = np.mgrid[:side, :side]
    disk = (rr - side // 2) ** 2 + (cc - side // 2) ** 2 < radius**2
    img = np.where(disk, fg, bg) + np.random.default_rng(seed).normal(0, noise, disk.shape)
    return np.clip(img, 0, 255).astype(np.uint8), disk


def test_outline_contrast_of_hand_made_masks():
    rng = np.random.default_rng(1)
    rr, cc = np.mgrid[:80, :80]
    disk = (rr - 40) ** 2 + (cc - 40) ** 2 < 20**2
    grey = np.where(disk, 100.0, 60.0) + rng.normal(0, 10, disk.shape)  # a step of 40 in noise of std 10
    assert wide.outline_contrast(grey, disk) == pytest.approx(4.0, rel=0.15)
    blob = (rr - 40) ** 2 + (cc - 40) ** 2 < 8**2  # a blob inside the flat disk: no contrast at its outline
    assert wide.outline_contrast(grey, blob) < 0.25
    shifted = np.roll(disk, 3, axis=1)  # the outline 3 px off the edge on two sides
    assert wide.outline_contrast(grey, shifted) < 2.0 < wide.outline_contrast(grey, shifted, gap=3)
    assert np.isnan(wide.outline_contrast(grey, np.zeros_like(disk)))  # nothing to measure: cannot tell
    assert np.isnan(wide.outline_contrast(grey, (rr == 40) & (cc == 40), gap=2))  # thinner than the gap


@pytest.mark.parametrize("side, radius", [(256, 100), (512, 200)])
def test_one_click_on_a_large_flat_bright_object(default_model, side, radius):
    """A bright disk filling most of the image: the full view gives a blob around the click, the wide
    view the disk; a positive click inside it afterwards keeps it, and undo goes back to nothing."""
    img, disk = _disk(side, radius)
    s = ps.Session(default_model, img)
    first = s.add_point((side // 2, side // 2)).mask.copy()
    assert dice(first, disk) > 0.9
    assert dice(s.add_point((side // 2, side // 2 + radius // 2)).mask, disk) > 0.85
    s.undo()
    s.undo()
    assert not s.mask.any()
    # without the wide view (turned off, or zoom off as for the large SAM encoders) the click gives a blob
    s = ps.Session(default_model, img)
    s.wide = False
    assert dice(s.add_point((side // 2, side // 2)).mask, disk) < 0.3
    assert dice(ps.Session(default_model, img, zoom=False).add_point((side // 2, side // 2)).mask, disk) < 0.3


def test_the_wide_view_in_a_viewers_deferred_step(default_model):
    img, disk = _disk(256, 100)
    s = ps.Session(default_model, img)
    s.defer_zoom = True
    s.add_point((128, 128))
    assert s.needs_refine
    assert dice(s.refine().mask, disk) > 0.9
    s.undo()
    assert not s.mask.any()


def test_the_wide_view_is_only_asked_after_a_flat_lone_first_click(default_model, monkeypatch):
    calls = []
    monkeypatch.setattr(wide, "decode", lambda *a: calls.append(a) or ((None, None), 0.0))
    img, disk = _disk(256, 45)  # a disk the full view gets: its outline has contrast
    s = ps.Session(default_model, img)
    assert dice(s.add_point((128, 128)).mask, disk) > 0.9
    big, _ = _disk(256, 100)
    s = ps.Session(default_model, big)
    s.add_box((20, 20), (236, 236))  # a box, not a lone click
    s.add_point((128, 128))
    ps.Session(default_model, big).add_points([(128, 128), (20, 20)], [True, False])  # a negative click
    assert calls == []
    s = ps.Session(default_model, big)
    s.add_point((128, 128))  # the blob: the wide view is asked, gives nothing, and the blob stays
    assert len(calls) == 1 and s.mask[128, 128] and s.mask.sum() < 0.3 * (np.pi * 100**2)


def test_a_wide_mask_without_contrast_is_not_taken(default_model, monkeypatch):
    """A wide mask whose outline runs through flat intensity is no better than the blob: kept out."""
    from promptseg._state import pack

    img, disk = _disk(256, 100)
    square = np.zeros_like(disk)
    square[98:158, 98:158] = True  # inside the disk: no contrast at its outline
    monkeypatch.setattr(wide, "decode", lambda *a: (pack(square), 0.9))
    s = ps.Session(default_model, img)
    mask = s.add_point((128, 128)).mask
    assert dice(mask, disk) < 0.3 and not (mask == square).all()


def test_a_wide_mask_must_hold_every_click(default_model, monkeypatch):
    from promptseg._state import pack

    img, disk = _disk(256, 100)
    holed = disk.copy()
    holed[120:137, 120:137] = False  # the disk, but not where the click is
    monkeypatch.setattr(wide, "decode", lambda *a: (pack(holed), 0.9))
    assert dice(ps.Session(default_model, img).add_point((128, 128)).mask, disk) < 0.3


def test_several_positive_clicks_at_once(default_model):
    """Two positive clicks as the first prompt get the wide view too (without it: Dice 0.01 here)."""
    img, disk = _disk(512, 120)
    s = ps.Session(default_model, img)
    assert dice(s.add_points([(256, 256), (316, 256)], [True, True]).mask, disk) > 0.9


def test_a_wide_mask_must_be_as_uniform_inside_as_the_blob(default_model, monkeypatch):
    """A wide mask with a clear outline that takes in something else too (here a grey band beside the
    disk) is not the flat region the blob lies in: kept out."""
    from promptseg._state import pack

    img, disk = _disk(256, 100)
    band = np.zeros_like(disk)
    band[0:26, 60:200] = True  # outside the disk, grey 120 on the background's 40
    img[band] = 120
    monkeypatch.setattr(wide, "decode", lambda *a: (pack(disk | band), 0.9))
    assert dice(ps.Session(default_model, img).add_point((128, 128)).mask, disk) < 0.3
    monkeypatch.setattr(wide, "decode", lambda *a: (pack(disk), 0.9))  # the disk alone is taken
    assert dice(ps.Session(default_model, img).add_point((128, 128)).mask, disk) > 0.9
