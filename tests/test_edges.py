"""The edge refiner (promptseg.models.edges, promptseg.edges) and its training (promptseg.train.edges)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import promptseg as ps
from promptseg.evaluate import dice
from promptseg.models import registry
from promptseg.models.edges import EdgeRefiner, edge_inputs, region_terms

from conftest import make_checkpoint, star_image


def _disk(shape=(120, 140), centre=(60, 70), radius=30.0):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 < radius**2


def test_edge_inputs_hold_the_standardised_image_the_mask_the_clicks_and_the_box():
    img = np.random.default_rng(0).integers(0, 255, (40, 50), dtype=np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[10:20, 10:30] = True
    x = edge_inputs(img, mask, np.array([[15.0, 20.0], [30.0, 40.0], [100.0, 100.0]]), np.array([True, False, True]))
    assert x.shape == (1, 7, 40, 50) and x.dtype == torch.float32
    assert torch.allclose(x[0, 0], x[0, 1]) and abs(float(x[0, 0].mean())) < 1e-5  # grey: three equal channels
    assert torch.equal(x[0, 3] > 0, torch.from_numpy(mask)) and set(x[0, 3].unique().tolist()) == {-1.0, 1.0}
    pos, neg = x[0, 4], x[0, 5]
    assert float(pos[15, 20]) == 1.0 and float(neg[30, 40]) == 1.0
    assert float(pos[30, 40]) < 1e-6 and float(neg[15, 20]) < 1e-6  # each click in its own map
    assert float(pos[15, 22]) == pytest.approx(np.exp(-4 / 8), abs=1e-6)  # a Gaussian of 2 px
    # the click far outside the crop is ignored, and no click gives empty maps
    assert float(pos.sum()) == pytest.approx(float(edge_inputs(img, mask, np.array([[15.0, 20.0]]), [True])[0, 4].sum()))
    assert float(edge_inputs(img, mask)[0, 4:].abs().sum()) == 0.0  # nor does a missing box
    boxed = edge_inputs(img, mask, box=(10, 10, 19, 29))[0, 6]
    assert torch.equal(boxed > 0, torch.from_numpy(mask)) and float(boxed.min()) == -1.0  # corners inclusive


def test_region_terms_say_which_side_a_pixel_resembles():
    """Image 0 left of column 10 and 1 from it; the mask starts two columns early, at column 8. With a
    9 px window, pixel (r, 8) sees inside the mask columns 8..12 (0, 0, 1, 1, 1: mean 0.6) and outside
    columns 4..7 (mean 0): |0 - 0|^2 - |0 - 0.6|^2 = -0.36 per channel, over a contrast 0.36 + 0.05/3."""
    im = torch.zeros(1, 3, 30, 30)
    im[..., 10:] = 1.0
    m = torch.zeros(1, 1, 30, 30)
    m[..., 8:] = 1.0
    t = region_terms(im, m, sizes=(9,))[0, 0]
    assert float(t[15, 8]) == pytest.approx(-1.08 / (1.08 + 0.05), abs=1e-5)  # wrongly inside: negative
    assert float(t[15, 11]) > 0  # rightly inside
    assert float(t[15, 25]) == 0.0 and float(t[15, 1]) == 0.0  # windows all inside or all outside: no term


def test_an_untrained_refiner_returns_the_mask_it_was_given():
    net = EdgeRefiner().eval()
    img = np.random.default_rng(1).integers(0, 255, (120, 140, 3), dtype=np.uint8)
    mask = _disk()
    with torch.no_grad():
        out = net(edge_inputs(img, mask, np.array([[60.0, 70.0]]), [True]))
    assert out.shape == (1, 1, 120, 140) and torch.equal(out[0, 0] > 0, torch.from_numpy(mask))


def test_checkpoints_with_and_without_a_refiner_load(tmp_path):
    """A spec with an edge refiner loads a checkpoint saved without one (it runs without it) and one with
    its weights (the Session then runs it); a SAM-style model never has one."""
    spec = ps.ModelSpec("test_edges", "tiny", "e.pth", arch_kwargs={"edges": True})
    registry.register_model(spec, overwrite=True)
    try:
        without = ps.load_model("test_edges", checkpoint=make_checkpoint(tmp_path / "a.pth", 0), device="cpu")
        assert not without.has_edges and not ps.Session(without, np.zeros((40, 40), np.uint8)).edges
        with_ = ps.load_model("test_edges", checkpoint=make_checkpoint(tmp_path / "b.pth", 0, edges=True), device="cpu")
        assert with_.has_edges and ps.Session(with_, np.zeros((40, 40), np.uint8)).edges
        assert not ps.Session(with_, np.zeros((40, 40), np.uint8), edges=False).edges
    finally:
        registry.unregister_model("test_edges")


def test_a_grown_refiner_computes_what_the_smaller_one_did_and_loads_at_its_size(default_model, tmp_path):
    """``train.edges.grow`` widens the shipped refiner and deepens it by a layer without changing its
    output; a checkpoint holding the larger refiner loads with a refiner of that size."""
    from promptseg.models.checkpoints import weights_dir
    from promptseg.train.edges import grow

    old = default_model.sam.edge_refiner
    new = grow(old, 24, 48, 4)
    assert (new.inp.out_channels, new.down.out_channels, len(new.mid)) == (24, 48, 4)
    img = np.random.default_rng(2).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    x = edge_inputs(img, _disk((70, 90), (35, 45), 20), np.array([[35.0, 45.0], [10.0, 10.0]]), [True, False])
    with torch.no_grad():
        torch.testing.assert_close(new(x), old(x), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="cannot grow"):
        grow(new, 16, 32, 3)
    state = torch.load(weights_dir() / "promptseg_cnn_s.pt", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("edge_refiner.")}
    state.update({f"edge_refiner.{k}": v for k, v in new.state_dict().items()})
    torch.save(state, tmp_path / "grown.pt")
    model = ps.load_model("default", checkpoint=tmp_path / "grown.pt", device="cpu")
    assert (model.sam.edge_refiner.inp.out_channels, len(model.sam.edge_refiner.mid)) == (24, 4)


def test_a_large_crop_is_refined_at_a_coarser_scale(small_sam, monkeypatch):
    """Past ``max_pixels`` the refiner sees the crop averaged down by an integer factor; the mask comes
    back at full size (here through an untrained refiner: the mask itself, to within the coarser grid)."""
    model, _ = small_sam
    model.sam.edge_refiner = EdgeRefiner().eval()
    seen = []
    forward = model.sam.edge_refiner.forward
    monkeypatch.setattr(model.sam.edge_refiner, "forward", lambda x: seen.append(x.shape) or forward(x))
    try:
        mask = _disk((300, 250), (150, 125), 90)
        img = np.where(mask, 200, 30).astype(np.uint8)
        full = model.refine_edges(img, mask)
        small = model.refine_edges(img, mask, max_pixels=100 * 100)
        assert seen == [(1, 7, 300, 250), (1, 7, 100, 84)]  # factor 3 (ceil(sqrt(75000 / 10000)))
        assert np.array_equal(full, mask) and small.shape == mask.shape and dice(small, mask) > 0.98
    finally:
        del model.sam.edge_refiner


def test_training_the_refiner_changes_only_the_refiner_and_resumes(tmp_path):
    """Two steps, then the same config with three resumed: the whole model is saved, the decoder and
    encoder equal the init model's, the refiner moved; the collected data are read back on resume."""
    from promptseg.models.checkpoints import weights_dir
    from promptseg.train import train

    init = weights_dir() / "promptseg_cnn_s.pt"
    text = (f'[edges]\ninit = "{init}"\nseed = 1\nrounds = 1\ngeneric = 2\nmedical_2d = 1\nmedical_3d = 0\n'
            'steps = STEPS\nbatch_size = 2\ncrop = 32\nthreads = 1\nwarmup_steps = 1\n')
    cfg = tmp_path / "edges.toml"
    cfg.write_text(text.replace("STEPS", "2"))
    out = tmp_path / "run"
    train(cfg, out)
    assert torch.load(out / "edges_state.pt", weights_only=True)["step"] == 2
    data = (out / "data_round0.pkl").stat().st_mtime_ns
    cfg.write_text(text.replace("STEPS", "3"))
    path = train(cfg, out)
    assert torch.load(out / "edges_state.pt", weights_only=True)["step"] == 3
    assert (out / "data_round0.pkl").stat().st_mtime_ns == data  # read back, not collected again
    state, base = torch.load(path, weights_only=True), torch.load(init, weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in base.items() if not k.startswith("edge_refiner."))
    assert not torch.equal(state["edge_refiner.out.weight"], torch.zeros_like(state["edge_refiner.out.weight"]))
    model = ps.load_model("default", checkpoint=path, device="cpu")
    assert model.has_edges and ps.Session(model, np.zeros((60, 60), np.uint8)).add_point((30, 30)).mask.shape == (60, 60)


def test_first_share_draws_crops_of_a_records_first_prompt():
    """A record whose first mask is empty and whose 20 later ones are full: with ``first_share`` 1 every
    crop shows the empty mask; with 0 nearly none does (1 in 21 on average)."""
    from promptseg.train.edges import draw_crop

    gt = np.zeros((80, 80), bool)
    gt[20:60, 20:60] = True
    pts = np.array([[40.0, 40.0, 1.0]])
    empty, full = np.packbits(np.zeros(80 * 80, bool)), np.packbits(np.ones(80 * 80, bool))
    rec = {"image": np.full((80, 80), 100, np.uint8), "gt": gt, "box": None, "steps": [(empty, pts)] + [(full, pts)] * 20}

    def empty_share(first_share):
        rng = np.random.default_rng(0)
        crops = [draw_crop(rng, rec, 32, first_share=first_share)[0] for _ in range(60)]
        return np.mean([(x[3] < 0).all() for x in crops])  # channel 3: the mask's sign

    assert empty_share(1.0) == 1.0
    assert empty_share(0.0) < 0.2


def test_propagation_records_hold_what_the_refiner_was_given_on_each_slice(default_model):
    """``collect_propagation``: one record per propagated slice, each with the decoder's mask there (the
    refiner's input, not its output) and the points of the squiggle carried from the slice before."""
    from promptseg.evaluate import squiggle
    from promptseg.prompts import scribble_to_points
    from promptseg.train.edges import BOX_MARGIN, collect_propagation
    from promptseg._state import decoded_mask

    zz, rr, cc = np.mgrid[:9, :96, :96]
    gt = ((zz - 4) / 4.5) ** 2 + ((rr - 48) / 22) ** 2 + ((cc - 50) / 16) ** 2 < 1
    vol = np.clip(np.where(gt, 170, 60) + np.random.default_rng(0).normal(0, 10, gt.shape), 0, 255).astype(np.uint8)
    recs = collect_propagation(default_model, [(vol, gt)])
    s = ps.Session(default_model, vol)  # the same steps by hand
    s.add_box((4, 27, 35), (4, 69, 65))
    s.propagate()
    walked = sorted(j for j in s._states if j != 4)
    assert len(recs) == len(walked) >= 4
    for rec, j in zip(recs, walked):
        decoded = decoded_mask(s._states[j], (96, 96))
        rows, cols = np.nonzero(decoded | gt[j])
        r0, c0 = max(0, rows.min() - BOX_MARGIN), max(0, cols.min() - BOX_MARGIN)
        r1, c1 = min(96, rows.max() + 1 + BOX_MARGIN), min(96, cols.max() + 1 + BOX_MARGIN)
        bits, pts = rec["steps"][0]
        mask = np.unpackbits(bits, count=(r1 - r0) * (c1 - c0)).reshape(r1 - r0, c1 - c0).astype(bool)
        assert np.array_equal(rec["image"], vol[j, r0:r1, c0:c1]) and np.array_equal(rec["gt"], gt[j, r0:r1, c0:c1])
        assert np.array_equal(mask, decoded[r0:r1, c0:c1])
        before = decoded_mask(s._states[j - 1 if j > 4 else j + 1], (96, 96))
        np.testing.assert_allclose(pts[:, :2] + (r0, c0), scribble_to_points(squiggle(before)))
        assert (pts[:, 2] == 1).all()


def test_the_shipped_refiner_sharpens_a_star_near_the_decoders_mask(default_model):
    """A five-pointed star: the decoder's 64 x 64 grid rounds its points, the refiner brings them back;
    it changes pixels only within its margin of the decoder's mask."""
    from promptseg.models.edges import MARGIN

    assert default_model.has_edges
    img, star = star_image()
    plain = ps.Session(default_model, img, edges=False).add_point((128, 128)).mask
    sharp = ps.Session(default_model, img).add_point((128, 128)).mask
    assert dice(sharp, star) > dice(plain, star) + 0.01 and dice(sharp, star) > 0.93
    rows, cols = np.nonzero(plain ^ sharp)
    r, c = np.nonzero(plain)
    assert rows.min() >= r.min() - MARGIN and rows.max() <= r.max() + MARGIN
    assert cols.min() >= c.min() - MARGIN and cols.max() <= c.max() + MARGIN


def test_a_deferred_prompt_shows_the_decoders_mask_then_the_refined_one(default_model):
    img, _ = star_image(seed=1)
    direct = ps.Session(default_model, img)
    a = direct.add_point((128, 128)).mask.copy()
    b = direct.add_point((128, 200), positive=False).mask.copy()
    s = ps.Session(default_model, img, zoom=False)  # the edge step alone is deferred too
    s.defer_zoom = True
    quick = s.add_point((128, 128)).mask.copy()
    full_view = ps.Session(default_model, img, zoom=False, edges=False).add_point((128, 128)).mask
    assert s.needs_refine and np.array_equal(quick, full_view)
    direct = ps.Session(default_model, img, zoom=False)
    assert np.array_equal(s.refine().mask, direct.add_point((128, 128)).mask) and s.refine() is None
    s.add_point((128, 200), positive=False)
    assert np.array_equal(s.refine().mask, direct.add_point((128, 200), positive=False).mask)
    assert not np.array_equal(a, full_view) and b.any()


def test_the_session_gives_the_refiner_its_crop_clicks_and_box(default_model, monkeypatch):
    """The refiner sees the decoder's mask with 24 px around it, the slice's clicks and its box, all in
    the crop's frame (found here from where the decoder's mask, kept in the state, lies in the plane
    and in the crop)."""
    from promptseg._state import decoded_mask, plane_mask

    img, _ = star_image()
    calls = []
    real = default_model.refine_edges

    def spy(rgb, mask, points, positive, box, max_pixels, honoured):
        calls.append((rgb, mask.copy(), points, positive, box, honoured))
        return real(rgb, mask, points, positive, box, max_pixels=max_pixels, honoured=honoured)

    monkeypatch.setattr(default_model, "refine_edges", spy)
    s = ps.Session(default_model, img, zoom=False)
    s.add_box((80, 85), (175, 170))
    s.add_point((128, 210), positive=False)
    rgb, mask, points, positive, box, honoured = calls[-1]
    assert rgb.shape == mask.shape + (3,) and rgb.dtype == np.uint8
    st = s._states[0]
    coarse = decoded_mask(st, img.shape)  # the state keeps the refiner's input (its training records it)
    assert st.unrefined is not None and coarse.sum() == mask.sum()
    origin = np.argwhere(coarse).min(axis=0) - np.argwhere(mask).min(axis=0)
    r, c = np.nonzero(coarse)
    assert tuple(origin) == (max(0, r.min() - 24), max(0, c.min() - 24))
    placed = np.zeros_like(coarse)
    placed[origin[0]:origin[0] + mask.shape[0], origin[1]:origin[1] + mask.shape[1]] = mask
    assert np.array_equal(placed, coarse)
    assert np.array_equal(np.asarray(box) + np.tile(origin, 2), [80, 85, 175, 170])
    assert np.allclose(points + origin, [[128, 210]]) and list(positive) == [False] and list(honoured) == [True]
    assert np.array_equal(plane_mask(st, img.shape), s.mask)  # ... beside the refined mask it shows


def _protocol_clicks(model, image, gt, n: int) -> list[bool]:
    """For each of ``n`` correction clicks of the evaluate protocol: whether its pixel has its label."""
    from promptseg.evaluate import innermost, next_click

    s = ps.Session(model, image)
    mask, honoured = s.add_point(innermost(gt)).mask.copy(), []
    for _ in range(n):
        (r, c), positive = next_click(gt, mask)
        mask = s.add_point((r, c), positive).mask.copy()
        honoured.append(bool(mask[int(r), int(c)]) == positive)
    return honoured


def test_every_correction_click_gets_its_label(default_model):
    """A textured synthetic scene where the plain refiner leaves the last four of eight correction clicks
    unanswered (so the protocol's next click lands on the same error); honouring gives each its label."""
    from promptseg.train.synthetic import sample

    image, labels = sample(np.random.default_rng([777, 12]), 128)
    ids, counts = np.unique(labels, return_counts=True)
    gt = labels == ids[(ids > 0) & (counts >= 60)][0]
    try:
        default_model.honour_clicks = False
        assert not all(_protocol_clicks(default_model, image, gt, 8))
    finally:
        default_model.honour_clicks = True
    assert all(_protocol_clicks(default_model, image, gt, 8))


def test_honouring_leaves_a_crop_whose_clicks_agree_as_the_plain_pass_drew_it(default_model):
    from promptseg.models.edges import honour

    img, star = star_image()
    x = edge_inputs(img[60:200, 60:200], star[60:200, 60:200], np.array([[68.0, 68.0], [5.0, 5.0]]), [True, False])
    with torch.inference_mode():
        plain = default_model.sam.edge_refiner(x)
        assert plain[0, 0, 68, 68] > 0 and plain[0, 0, 5, 5] < 0
        assert torch.equal(honour(default_model.sam.edge_refiner, x, np.array([[68, 68], [5, 5]]), np.array([True, False])), plain)


def test_only_the_users_own_points_are_honoured(default_model, monkeypatch):
    """A propagation walk carries the mask by a squiggle the Session draws: those points are its guess,
    so the refiner sees them but is not made to honour them; the user's click is."""
    zz, rr, cc = np.mgrid[:7, :80, :80]
    gt = ((zz - 3) / 4) ** 2 + ((rr - 40) / 18) ** 2 + ((cc - 40) / 14) ** 2 < 1
    vol = np.clip(np.where(gt, 170, 60) + np.random.default_rng(1).normal(0, 10, gt.shape), 0, 255).astype(np.uint8)
    calls = []
    real = default_model.refine_edges

    def spy(rgb, mask, points, positive, box, max_pixels, honoured):
        calls.append((len(points), np.asarray(honoured, bool).copy()))
        return real(rgb, mask, points, positive, box, max_pixels=max_pixels, honoured=honoured)

    monkeypatch.setattr(default_model, "refine_edges", spy)
    s = ps.Session(default_model, vol)
    s.add_point((3, 40, 40))
    assert calls[-1][0] == 1 and calls[-1][1].all()
    calls.clear()
    s.propagate()
    assert len(calls) >= 4 and all(n > 1 and not h.any() for n, h in calls)


def test_a_click_keeps_its_weight_when_a_large_crop_is_refined_coarser(default_model):
    """A 410 px square: its crop is refined at a quarter of its size, where an averaged-down click map
    would be a sixteenth as strong; the clicks' maps are reduced by their maximum instead."""
    img = np.full((512, 512), 30, np.uint8)
    img[50:460, 60:470] = 200
    s = ps.Session(default_model, img)
    s.add_box((50, 60), (459, 469))
    assert not s.add_point((250, 250), positive=False).mask[250, 250]
