"""What a correction starts from (promptseg.feedback): the mask shown fed back, and the click guard."""

from __future__ import annotations

import numpy as np

import promptseg as ps
from promptseg._state import SliceState
from promptseg.feedback import LIMIT, added_click, local_edit
from promptseg.prompts import Box, Point

from conftest import star_image


def _square(r0, r1, c0, c1, shape=(40, 40)):
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def test_a_positive_click_that_empties_most_of_the_mask_becomes_a_local_addition():
    before = _square(5, 25, 5, 25)  # 400 px
    after = _square(28, 34, 28, 34) | _square(0, 3, 0, 3)  # the object gone; a blob at the click, one elsewhere
    edit = local_edit(before, after, (30, 31), True)
    assert np.array_equal(edit, before | _square(28, 34, 28, 34))  # only the part holding the click is added
    # the click outside every part of the new mask: the old mask and the clicked pixel
    edit = local_edit(before, _square(0, 3, 0, 3), (30.2, 30.8), True)
    assert edit[30, 31] and edit.sum() == 401


def test_a_negative_click_that_floods_becomes_a_local_removal():
    before = _square(5, 25, 5, 25)
    after = _square(0, 40, 0, 40) & ~_square(5, 10, 5, 25)  # floods the image, but drops the top band
    edit = local_edit(before, after, (7, 12), False)
    assert np.array_equal(edit, before & ~_square(5, 10, 5, 25))


def test_a_click_that_does_what_it_asks_stands():
    before = _square(5, 25, 5, 25)
    assert local_edit(before, before | _square(25, 35, 5, 25), (30, 10), True) is None  # grew: fine
    assert local_edit(before, before & ~_square(5, 12, 5, 25), (8, 10), False) is None  # shrank: fine
    small_loss = before & ~_square(5, 5 + int(20 * LIMIT) - 1, 5, 25)  # just under the limit
    assert local_edit(before, small_loss, (20, 20), True) is None
    assert local_edit(before, before & ~_square(5, 5 + int(20 * LIMIT) + 1, 5, 25), (20, 20), True) is not None


def test_a_click_that_reshapes_the_mask_stands():
    """A negative click on a false part can also let the mask take in more of the object: it moves,
    and its area does not grow by more than the limit, so the new mask stands."""
    before = _square(5, 25, 5, 25)
    after = _square(5, 25, 12, 32)  # 140 px lost on the left, 140 gained on the right
    assert local_edit(before, after, (15, 7), False) is None
    assert local_edit(before, after, (15, 28), True) is None


def test_only_a_single_added_click_counts():
    p, q = Point((1.0, 2.0), True), Point((3.0, 4.0), False)
    a = SliceState(points=(p,))
    assert added_click(a, SliceState(points=(p, q))) == q
    assert added_click(a, SliceState(points=(p, q, q))) is None
    assert added_click(a, SliceState(points=(q, p))) is None
    assert added_click(a, SliceState(points=(p, q), box=Box(0, 0, 5, 5))) is None
    assert added_click(SliceState(), SliceState(points=(p,))) == p  # (a first click: no mask before, see guard)


def _spy_decode(model, monkeypatch):
    seen = []
    real = model.decode

    def spy(features, points_xy, labels, box, mask_input, multimask, strokes=None):
        seen.append(None if mask_input is None else np.array(mask_input))
        return real(features, points_xy, labels, box, mask_input, multimask, strokes)

    monkeypatch.setattr(model, "decode", spy)
    return seen


def test_a_correction_starts_from_the_mask_shown(default_model, monkeypatch):
    """With the edge step, the next click's mask_input is made from the refined mask on screen; without
    it, the decoder's own logits are fed back as before."""
    img, _ = star_image(seed=1)
    seen = _spy_decode(default_model, monkeypatch)
    s = ps.Session(default_model, img, zoom=False)
    shown = s.add_point((128, 128)).mask.copy()
    decoders = s._states[0].logits.copy()
    s.add_point((128, 200), positive=False)
    expected = s.frame.mask_to_lowres(shown, default_model.lowres_size)
    assert np.array_equal(seen[-1], expected) and not np.allclose(seen[-1], decoders)
    assert s._states[0].logits.shape == decoders.shape  # the state still stores the decoder's logits
    seen.clear()
    plain = ps.Session(default_model, img, zoom=False, edges=False)
    plain.add_point((128, 128))
    decoders = plain._states[0].logits.copy()
    plain.add_point((128, 200), positive=False)
    assert np.array_equal(seen[-1], decoders)


def test_a_positive_click_cannot_wipe_out_the_object(default_model, monkeypatch):
    """If the pipeline answers a positive click with a collapse (forced here: the refiner returns a small
    blob at the click), the Session keeps the mask and adds the blob, directly and when deferred; undo
    still returns to the mask before."""
    img, star = star_image()
    real = default_model.refine_edges
    collapse = [False]

    def refine(rgb, mask, points, positive, box, max_pixels, honoured):
        out = real(rgb, mask, points, positive, box, max_pixels=max_pixels, honoured=honoured)
        if collapse[0]:
            r, c = np.round(points[-1]).astype(int)
            out = np.zeros_like(out)
            out[r - 3:r + 4, c - 3:c + 4] = True
        return out

    monkeypatch.setattr(default_model, "refine_edges", refine)
    for deferred in (False, True):
        s = ps.Session(default_model, img, zoom=False)
        s.defer_zoom = deferred
        s.add_point((128, 128))
        s.refine()
        first = s.mask.copy()
        assert first.sum() > 1000
        collapse[0] = True
        try:
            s.add_point((128, 100))
            s.refine()
        finally:
            collapse[0] = False
        blob = np.zeros_like(first)
        blob[125:132, 97:104] = True
        assert np.array_equal(s.mask, first | blob), deferred
        assert np.array_equal(s.undo().mask, first)
