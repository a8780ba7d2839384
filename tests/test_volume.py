"""3D propagation: walks, stops, z ranges, key slices, corrections, undo.

The walk/stop/blend logic is checked with an oracle decoder that returns the true object on each
slice (so the expected result is known exactly); a real small model checks the plumbing end to end.
"""

from __future__ import annotations

import numpy as np
import pytest

import promptseg as ps
import promptseg.evaluate  # noqa: F401
from promptseg._state import pack


def _ellipsoid(shape=(16, 48, 48), centre=(7, 24, 24), radii=(4.5, 12, 14)):
    zz, rr, cc = np.mgrid[: shape[0], : shape[1], : shape[2]]
    return ((zz - centre[0]) / radii[0]) ** 2 + ((rr - centre[1]) / radii[1]) ** 2 + ((cc - centre[2]) / radii[2]) ** 2 <= 1


@pytest.fixture
def oracle_session(small_sam, monkeypatch):
    model, _ = small_sam
    gt = _ellipsoid()
    vol = np.where(gt, 200, 30).astype(np.uint8)
    s = ps.Session(model, vol)
    calls, carried = [], []

    def decode(k, state, extra_points=None, extra_box=None, extra_scribbles=()):
        calls.append(k)
        carried.append((k, extra_scribbles))
        m = gt[k]
        bits, extent = pack(m) if m.any() else (None, None)
        logits = s.frame.mask_to_lowres(m, model.lowres_size)  # logits consistent with the mask
        return state.__class__(points=state.points, box=state.box, logits=logits, score=0.9, bits=bits, extent=extent)

    monkeypatch.setattr(s, "_decode", decode)
    s.carried = carried  # (slice, the squiggles propagation added) of every decode
    return s, gt, calls


def test_propagation_fills_the_object_and_stops_where_it_ends(oracle_session):
    s, gt, calls = oracle_session
    s.add_point((7, 24, 24))
    p = s.propagate()
    present = sorted(np.flatnonzero(gt.any(axis=(1, 2))))
    assert np.array_equal(s.mask, gt)
    assert p.bbox[0] == slice(present[0], present[-1] + 1)
    assert min(calls) == present[0] - 1 and max(calls) == present[-1] + 1  # one empty slice each way, then stop
    assert set(s.prompts()) == {7}  # propagated slices hold no prompts
    walked = [(k, sc) for k, sc in s.carried if k != 7]
    assert walked and all(len(sc) == 1 and sc[0][1] for _, sc in walked)  # one positive squiggle each
    for k, ((stroke, _),) in walked:  # along the previous slice's mask (one nearer the key slice), inside it
        prev = gt[k - 1] if k > 7 else gt[k + 1]
        rc = np.rint(np.asarray(stroke)).astype(int)
        assert len(rc) > 1 and prev[rc[:, 0], rc[:, 1]].all()
    assert not s.undo().mask[[k for k in present if k != 7]].any()  # one undo step


def test_stop_marks_and_z_range(oracle_session):
    s, gt, _ = oracle_session
    s.add_point((7, 24, 24))
    s.set_stop(9)
    s.propagate(z_range=(5, 12))
    filled = set(np.flatnonzero(s.mask.any(axis=(1, 2))))
    assert filled == {5, 6, 7, 8}
    with pytest.raises(ps.PromptError, match="outside the volume"):
        s.propagate(z_range=(3, 40))


def test_two_key_slices_are_joined_from_both_ends(oracle_session):
    s, gt, calls = oracle_session
    s.add_point((4, 24, 24))
    s.add_point((10, 24, 24))
    s.propagate()
    outside = [k for k in range(16) if not 4 <= k <= 10]
    assert np.array_equal(s.mask[outside], gt[outside])  # walked beyond the keys: exact oracle masks
    for k in range(5, 10):  # between the keys: logits of both walks blended, then upsampled
        assert ps.evaluate.dice(s.mask[k], gt[k]) > 0.95
    assert calls.count(7) == 2  # slice 7 decoded once from below and once from above


def test_correction_repropagates_only_next_to_that_slice(oracle_session):
    s, gt, calls = oracle_session
    s.add_point((7, 24, 24))
    s.propagate()
    s.add_point((10, 30, 30), positive=False)  # slice 10 becomes a key slice
    calls.clear()
    s.propagate(start=10)
    assert set(calls) == set(range(8, 10)) | {11, 12}  # stretches 7..10 and 10..end only
    with pytest.raises(ps.PromptError, match="slice 3 has no prompts"):
        s.propagate(start=3)


def test_bad_propagation_requests(small_sam, rgb_image):
    model, _ = small_sam
    with pytest.raises(ps.PromptError, match="3D volume"):
        ps.Session(model, rgb_image).propagate()
    s = ps.Session(model, np.zeros((6, 32, 32), np.uint8))
    with pytest.raises(ps.PromptError, match="nothing to propagate"):
        s.propagate()
    with pytest.raises(ps.PromptError, match="not a slice"):
        s.set_stop(9)


def test_propagation_with_a_real_model_runs_end_to_end(small_sam):
    model, _ = small_sam
    vol = np.where(_ellipsoid(), 220, 20).astype(np.uint8)
    s = ps.Session(model, vol)
    s.add_box((7, 10, 8), (7, 38, 40))
    seen = []
    p = s.propagate(progress=lambda d, t: seen.append((d, t)))
    assert p.mask.shape == vol.shape and seen and seen[-1][0] <= seen[-1][1]
