"""Session behaviour: prompts, feedback, undo/redo, commit semantics, 3D slices, bad prompts."""

from __future__ import annotations

import numpy as np
import pytest

import promptseg as ps


@pytest.fixture
def session(small_sam, rgb_image):
    model, _ = small_sam
    return ps.Session(model, rgb_image)


def test_prediction_is_readonly_view_of_image_shape(session):
    p = session.add_point((150, 200))
    assert p.mask.shape == (300, 500) and p.mask.dtype == bool
    assert not p.mask.flags.writeable
    assert p.mask.any()
    with pytest.raises(ValueError):
        p.mask[0, 0] = True
    # no copy per click: every Prediction views the one buffer of the session
    q = session.add_point((60, 400), positive=False)
    assert np.shares_memory(p.mask, q.mask) and np.array_equal(p.mask, q.mask)


def test_bbox_covers_every_changed_pixel(session):
    old = session.mask.copy()
    p = session.add_point((150, 200))
    changed = old ^ p.mask
    outside = changed.copy()
    outside[p.bbox] = False
    assert changed.any() and not outside.any()
    old = p.mask.copy()
    p = session.add_box((40, 340), (130, 480))
    changed = old ^ p.mask
    outside = changed.copy()
    outside[p.bbox] = False
    assert not outside.any()


def test_feedback_uses_previous_logits(small_sam, rgb_image, monkeypatch):
    model, _ = small_sam
    s = ps.Session(model, rgb_image)
    calls = []
    real = model.decode

    def spy(features, xy, labels, box, mask_input, multimask, strokes=None):
        calls.append((None if xy is None else len(xy), box is not None, mask_input is not None, multimask))
        return real(features, xy, labels, box, mask_input, multimask, strokes)

    monkeypatch.setattr(model, "decode", spy)
    s.add_point((150, 200))
    s.add_point((150, 240))
    s.add_point((20, 20), positive=False)
    # first click: multimask, no mask_input; later: all points so far + previous logits, single output
    assert calls == [(1, False, False, True), (2, False, True, False), (3, False, True, False)]
    assert s.prompts()[0]["points"] == [[150.0, 200.0, 1], [150.0, 240.0, 1], [20.0, 20.0, 0]]


def test_unlimited_undo_redo_restores_masks_exactly(session):
    masks = [session.mask.copy()]
    for i in range(12):
        session.add_point((100 + 10 * i, 150 + 12 * i), positive=i % 3 != 2)
        masks.append(session.mask.copy())
    for i in range(12, 0, -1):
        p = session.undo()
        assert np.array_equal(p.mask, masks[i - 1])
    assert session.undo() is None and not session.mask.any()
    for i in range(1, 13):
        assert np.array_equal(session.redo().mask, masks[i])
    assert session.redo() is None
    # a new prompt after undo drops the redo branch
    session.undo()
    session.add_point((10, 10), positive=False)
    assert not session.can_redo


def test_reset_is_undoable(session):
    session.add_point((150, 200))
    kept = session.mask.copy()
    p = session.reset()
    assert not p.mask.any() and session.prompts() == {}
    assert np.array_equal(session.undo().mask, kept)


def test_commit_assigns_new_ids_without_overwriting(small_sam, rgb_image):
    model, _ = small_sam
    s = ps.Session(model, rgb_image)
    first = s.set_mask(np.pad(np.ones((100, 100), bool), ((50, 150), (50, 350)))).mask.copy()
    assert s.commit() == 1
    assert not s.mask.any() and not s.can_undo
    second = np.zeros((300, 500), bool)
    second[100:200, 100:250] = True  # overlaps the first object
    s.set_mask(second)
    assert s.commit() == 2
    assert np.array_equal(s.labels == 1, first)  # earlier object untouched
    assert np.array_equal(s.labels == 2, second & ~first)
    s.set_mask(second)
    assert s.commit(overwrite=True) == 3
    assert np.array_equal(s.labels == 3, second)
    assert [o["id"] for o in s.objects] == [1, 2, 3]
    with pytest.raises(ps.PromptError, match="nothing to commit"):
        s.commit()


def test_existing_labels_are_continued(small_sam, rgb_image):
    model, _ = small_sam
    labels = np.zeros((300, 500), np.int32)
    labels[:10, :10] = 7
    s = ps.Session(model, rgb_image, labels=labels)
    s.set_mask(np.pad(np.ones((20, 20), bool), ((0, 280), (0, 480))))
    assert s.commit() == 8
    assert s.labels is labels and (labels == 7).sum() == 100 and (labels == 8).sum() == 300
    with pytest.raises(ps.ImageError, match="labels of shape"):
        ps.Session(model, rgb_image, labels=np.zeros((10, 10), np.int32))


def test_set_mask_then_correct(session):
    m = np.zeros((300, 500), bool)
    m[100:200, 150:260] = True
    p = session.set_mask(m)
    assert np.array_equal(p.mask, m) and p.score == 1.0
    p = session.add_point((150, 400))  # a correction click uses the mask as mask_input
    assert p.mask.shape == m.shape
    assert np.array_equal(session.undo().mask, m)


def test_scribble_is_kept_as_a_stroke_and_decoded_as_spread_points(small_sam, rgb_image, monkeypatch):
    model, _ = small_sam
    s = ps.Session(model, rgb_image)
    seen = []
    real = model.decode
    monkeypatch.setattr(model, "decode", lambda f, xy, lab, *a: seen.append((xy, lab)) or real(f, xy, lab, *a))
    stroke = [(100, 150), (120, 180), (150, 220), (180, 230), (200, 250), (400, 260)]  # last vertex off-image
    s.add_scribble(stroke, positive=False)
    assert s.prompts()[0]["scribbles"] == [[[list(map(float, v)) for v in stroke[:-1]], 0]]
    xy, labels = seen[-1]
    assert 2 <= len(xy) <= 8 and not labels.any()
    first = s.frame.to_input_xy([(100, 150)])[0]
    assert np.allclose(xy[0], first)  # SAM (x, y) of the stroke's first vertex


def test_set_prompts_replaces_the_slice_prompts(session):
    session.add_point((150, 200))
    session.add_point((20, 20), positive=False)
    p = session.set_prompts(points=[(150, 200)], positive=[True], box=((100, 100), (200, 300)))
    pr = session.prompts()[0]
    assert pr["points"] == [[150.0, 200.0, 1]] and pr["box"] == [100.0, 100.0, 200.0, 300.0]
    assert p.mask.any()
    p = session.set_prompts()  # nothing left: the object is cleared, undoably
    assert not p.mask.any() and session.prompts() == {}
    assert session.undo().mask.any()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda s: s.add_point((300, 10)), "outside the image"),
        (lambda s: s.add_point((-3, 10)), "outside the image"),
        (lambda s: s.add_point((10, 10, 10)), "2 coordinates"),
        (lambda s: s.add_point((np.nan, 10)), "NaN"),
        (lambda s: s.add_box((400, 600), (500, 700)), "outside the image"),
        (lambda s: s.add_scribble([(-50, -50), (-40, -60)]), "outside the image"),
        (lambda s: s.add_point("ab"), "not a list of numbers"),
        (lambda s: s.predict(), "no prompts"),
    ],
)
def test_bad_prompts_raise_clear_errors(session, call, match):
    with pytest.raises(ps.PromptError, match=match):
        call(session)
    assert not session.can_undo  # nothing was recorded


def test_box_partly_outside_is_clipped(session):
    p = session.add_box((-20, -20), (120, 160))
    assert session.prompts()[0]["box"] == [-0.5, -0.5, 120.0, 160.0]
    assert p.mask.shape == (300, 500)


def test_volume_prompts_on_slices(small_sam):
    model, _ = small_sam
    rng = np.random.default_rng(1)
    vol = (rng.random((5, 64, 80)) * 50).astype(np.uint8)
    vol[:, 20:44, 20:50] = 200
    s = ps.Session(model, vol)
    p = s.add_point((2, 32, 35))
    assert p.mask.shape == vol.shape
    assert p.bbox[0] == slice(2, 3)
    assert p.mask[2].any() and not p.mask[[0, 1, 3, 4]].any()
    assert s.store.is_done(2) and not s.store.is_done(0)  # only the prompted slice was embedded
    s.add_point((4, 30, 30))
    assert set(s.prompts()) == {2, 4}
    with pytest.raises(ps.PromptError, match="spans slices"):
        s.add_box((1, 10, 10), (3, 40, 40))
    with pytest.raises(ps.PromptError, match="outside"):
        s.add_point((5, 10, 10))
    label = s.commit()
    assert (s.labels == label).any() and set(np.flatnonzero((s.labels == label).any(axis=(1, 2)))) <= {2, 4}


def test_prefetch_reads_an_embedded_slice_and_never_computes_one(small_sam):
    model, _ = small_sam
    vol = (np.random.default_rng(2).random((4, 64, 80)) * 200).astype(np.uint8)
    s = ps.Session(model, vol, embeddings=ps.embed(vol, model))
    assert s.prefetch(1) and 1 in s._feature_cache
    s2 = ps.Session(model, vol)  # an in-memory store: nothing embedded yet
    assert not s2.prefetch(3) and not s2.store.is_done(3)


def test_large_buffers_are_writable_zeros_of_the_image_shape(small_sam):
    from promptseg._state import lazy_zeros

    a = lazy_zeros((40, 256, 512), np.int32)  # 20 MB: small pages, allocated when written
    assert a.shape == (40, 256, 512) and a.dtype == np.int32 and a.flags.writeable and not a.any()
    a[3, 10:20, 10:20] = 7
    assert a.sum() == 700
    model, _ = small_sam
    s = ps.Session(model, np.zeros((40, 256, 512), np.uint8))
    assert s.labels.shape == s.mask.shape == (40, 256, 512) and s.labels.flags.writeable and not s.labels.any()


def test_volume_along_another_axis(small_sam):
    model, _ = small_sam
    vol = np.zeros((40, 6, 50), np.uint8)
    vol[10:30, :, 10:40] = 220
    s = ps.Session(model, vol, axis=1)
    p = s.add_point((20, 3, 25))
    assert p.mask.shape == vol.shape and p.bbox[1] == slice(3, 4)
    assert p.mask[:, 3].any() and not np.delete(p.mask, 3, axis=1).any()


def test_session_reuses_a_matching_store_and_refuses_another(small_sam, default_model, rgb_image):
    model, _ = small_sam
    store = ps.embed(rgb_image, model)
    s = ps.Session(model, rgb_image, embeddings=store)
    assert s.store is store
    with pytest.raises(ps.CacheError, match="another model"):
        ps.Session(default_model, rgb_image, embeddings=store)
    other = rgb_image.copy()
    other[0, 0, 0] ^= 1
    with pytest.raises(ps.CacheError, match="another image"):
        ps.Session(model, other, embeddings=store)


def test_edit_a_committed_object_keeps_its_id(small_sam, rgb_image):
    model, _ = small_sam
    s = ps.Session(model, rgb_image)
    a = np.zeros((300, 500), bool)
    a[10:60, 10:60] = True
    s.set_mask(a)
    s.commit()
    b = np.zeros((300, 500), bool)
    b[100:150, 100:150] = True
    s.set_mask(b)
    s.commit()
    p = s.edit(1)
    assert np.array_equal(p.mask, a) and s.bbox == (slice(10, 60), slice(10, 60))
    smaller = np.zeros((300, 500), bool)
    smaller[20:40, 20:40] = True
    s.set_mask(smaller)
    assert s.commit() == 1
    assert np.array_equal(s.labels == 1, smaller) and np.array_equal(s.labels == 2, b)
    with pytest.raises(ps.PromptError, match="no object with id 9"):
        s.edit(9)
