"""Training code: the synthetic generator, prompt simulation, and a 3-step run that load_model can read."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import promptseg as ps
from promptseg.models import registry
from promptseg.models.build import build_sam
from promptseg.train import prompts as P
from promptseg.train import synthetic
from promptseg.train.trainer import load_config, train


# -- synthetic data ------------------------------------------------------------------------------------
def test_generator_is_deterministic_and_well_formed():
    a_img, a_lab = synthetic.sample(np.random.default_rng(7), (96, 128))
    b_img, b_lab = synthetic.sample(np.random.default_rng(7), (96, 128))
    assert a_img.dtype == np.uint8 and a_img.shape == (96, 128, 3)
    assert a_lab.dtype == np.int32 and a_lab.shape == (96, 128)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    c_img, _ = synthetic.sample(np.random.default_rng(8), (96, 128))
    assert not np.array_equal(a_img, c_img)


def test_objects_differ_from_their_surroundings():
    """Over many draws the objects' mean intensity differs from the background's (mask matches image)."""
    rng = np.random.default_rng(0)
    gaps, n_obj = [], 0
    for _ in range(30):
        img, lab = synthetic.sample(rng, 96)
        n_obj += len(np.unique(lab)) - 1
        if lab.any() and (lab == 0).any():
            grey = img.astype(float).mean(axis=2)
            gaps.append(abs(grey[lab > 0].mean() - grey[lab == 0].mean()))
    assert n_obj > 30
    assert np.median(gaps) > 8  # grey levels, out of 255


# -- prompt simulation ---------------------------------------------------------------------------------
@pytest.fixture
def blob():
    rr, cc = np.mgrid[:64, :80]
    return (rr - 30) ** 2 / 15**2 + (cc - 40) ** 2 / 25**2 < 1


def test_clicks_boxes_and_squiggles_lie_on_the_object(blob):
    rng = np.random.default_rng(1)
    for _ in range(50):
        r, c = P.first_click(rng, blob).astype(int)
        assert blob[r, c]
        pts = np.rint(P.squiggle(rng, blob)).astype(int)
        assert blob[pts[:, 0], pts[:, 1]].all()
        r0, c0, r1, c1 = P.box(rng, blob, jitter=0.1)
        assert abs(r0 - 15) <= 4 and abs(r1 - 44) <= 4 and abs(c0 - 15) <= 6 and abs(c1 - 64) <= 6
    # the first click is biased to the centre
    clicks = np.array([P.first_click(rng, blob, p_uniform=0.0) for _ in range(200)])
    assert np.abs(clicks.mean(axis=0) - (30, 40)).max() < 3


def test_correction_clicks_fall_in_the_larger_error(blob):
    rng = np.random.default_rng(2)
    shrunk = np.zeros_like(blob)
    shrunk[:, :40] = blob[:, :40]  # half the object missed
    for r in (rng, None):
        (row, col), positive = P.correction_click(r, blob, shrunk)
        assert positive and blob[int(row), int(col)] and not shrunk[int(row), int(col)]
    grown = blob.copy()
    grown[50:64, :] = True  # a false-positive band larger than anything missed
    (row, col), positive = P.correction_click(rng, blob, grown)
    assert not positive and grown[int(row), int(col)] and not blob[int(row), int(col)]
    assert P.correction_click(rng, blob, blob) is None


# -- training ------------------------------------------------------------------------------------------
TINY = """
[model]
arch = "cnn_small"
image_size = 64
arch_kwargs = {widths = [8, 8, 16, 16], blocks = [0, 1, 1, 1], prompt_embed_dim = 32, decoder_mlp_dim = 64}
[data]
min_area = 10
[train]
steps = 3
batch_size = 2
objects_per_image = 1
warmup_steps = 1
checkpoint_every = 2
log_every = 1
threads = 2
"""


def test_three_steps_write_a_loadable_checkpoint_and_resume(tmp_path):
    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text(TINY)
    out = tmp_path / "run"
    cfg = load_config(cfg_path)
    # a 2-step run, then the same config with 3 steps resumed from its checkpoint
    cfg_path.write_text(TINY.replace("steps = 3", "steps = 2"))
    train(cfg_path, out)
    assert torch.load(out / "train_state.pt", weights_only=True)["step"] == 2
    first = torch.load(out / "model_last.pt", weights_only=True)
    cfg_path.write_text(TINY)
    path = train(cfg_path, out, resume=True)
    assert torch.load(out / "train_state.pt", weights_only=True)["step"] == 3
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # resumed at step 3, not from scratch
    state = torch.load(path, weights_only=True)
    assert any(not torch.equal(state[k], first[k]) for k in state)

    m = cfg["model"]
    spec = ps.ModelSpec("test_trained", m["arch"], "model_last.pt", input_size=m["image_size"], arch_kwargs=m["arch_kwargs"])
    registry.register_model(spec, overwrite=True)
    try:
        model = ps.load_model("test_trained", checkpoint=path, device="cpu")
        img, lab = synthetic.sample(np.random.default_rng(3), (50, 70))
        s = ps.Session(model, img)
        pred = s.add_point((25, 35))
        assert pred.mask.shape == (50, 70)
    finally:
        registry.unregister_model("test_trained")


def test_cnn_arch_builds_sam_shaped_embeddings():
    sam = build_sam("cnn_small", image_size=128)
    with torch.no_grad():
        emb = sam.image_encoder(torch.zeros(1, 3, 128, 128))
    assert emb.shape == (1, 128, 8, 8)
    assert sam.prompt_encoder.embed_dim == 128 and sam.image_encoder.img_size == 128


def test_fine_tuning_only_the_stroke_encoder_leaves_the_rest_untouched(tmp_path):
    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text(TINY)
    base = train(cfg_path, tmp_path / "base")  # a click/box model without a squiggle input
    strokes = (TINY.replace("decoder_mlp_dim = 64}", "decoder_mlp_dim = 64, strokes = true}")
               .replace('image_size = 64\n', f'image_size = 64\ninit = "{base.as_posix()}"\n')
               .replace("threads = 2", 'threads = 2\ntrainable = ["prompt_encoder.stroke_downscaling."]\nlr = 0.01')
               + "[prompts]\np_click = 0.0\np_box = 0.0\np_squiggle = 1.0\np_squiggle_correct = 0.5\n")
    cfg_path.write_text(strokes)
    tuned = torch.load(train(cfg_path, tmp_path / "strokes"), weights_only=True)
    before = torch.load(base, weights_only=True)
    assert set(tuned) - set(before) and all(k.startswith("prompt_encoder.stroke_downscaling.") for k in set(tuned) - set(before))
    assert all(torch.equal(tuned[k], before[k]) for k in before)  # everything else exactly as it was
    last = [k for k in tuned if k.startswith("prompt_encoder.stroke_downscaling.layers.8")]
    assert any(tuned[k].abs().sum() > 0 for k in last)  # the zero-initialised output layer learned


def test_fine_tuning_the_decoder_of_a_model_with_an_edge_refiner_keeps_the_refiner_and_encoder(tmp_path):
    """The shipped model carries an edge refiner, which this loop does not build: a fine-tuning of its
    decoder starts from it, writes the refiner's entries unchanged into every checkpoint (resumed too)
    and leaves a frozen encoder exactly as it was."""
    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text(TINY)
    m = load_config(cfg_path)["model"]
    base = build_sam(m["arch"], image_size=m["image_size"], **{**m["arch_kwargs"], "edges": True}).state_dict()
    torch.save(base, tmp_path / "shipped.pt")
    tuned_cfg = (TINY.replace('image_size = 64\n', f'image_size = 64\ninit = "{(tmp_path / "shipped.pt").as_posix()}"\n')
                 .replace("threads = 2", 'threads = 2\ntrainable = ["mask_decoder", "prompt_encoder"]\nlr = 0.01'))
    cfg_path.write_text(tuned_cfg.replace("steps = 3", "steps = 2"))
    train(cfg_path, tmp_path / "tuned")
    cfg_path.write_text(tuned_cfg)
    tuned = torch.load(train(cfg_path, tmp_path / "tuned", resume=True), weights_only=True)  # resumed at step 2
    assert set(tuned) == set(base)
    assert all(torch.equal(tuned[k], base[k]) for k in base if k.startswith(("edge_refiner.", "image_encoder.")))
    assert any(not torch.equal(tuned[k], base[k]) for k in base if k.startswith("mask_decoder."))


def test_squiggle_paths_stay_inside(blob):
    rng = np.random.default_rng(4)
    for _ in range(20):
        path = P.squiggle_path(rng, blob)
        r, c = np.rint(path).astype(int).T
        assert len(path) >= 1 and blob[r, c].all()


def test_batched_decoder_equals_the_decoder_run_per_prompt_set():
    from promptseg.train.episodes import decode_batch

    torch.manual_seed(0)
    sam = build_sam("cnn_small", image_size=64, widths=[8, 8, 16, 16], blocks=[0, 1, 1, 1], prompt_embed_dim=32,
                    decoder_mlp_dim=64).eval()
    pe, md = sam.prompt_encoder, sam.mask_decoder
    emb = torch.randn(2, 32, 4, 4)
    sets = [(torch.tensor([[[10.0, 20.0], [40.0, 33.0]]]), torch.tensor([[1, 0]])),
            (torch.tensor([[[5.0, 50.0], [30.0, 30.0]]]), torch.tensor([[1, 1]])),
            (torch.tensor([[[60.0, 2.0], [12.0, 12.0]]]), torch.tensor([[0, 1]]))]
    image_of = [0, 1, 0]  # the third prompt set is on the first image again
    with torch.no_grad():
        embedded = [pe(points=p, boxes=None, masks=None) for p in sets]
        low, iou = decode_batch(sam, emb[image_of], [sp for sp, _ in embedded], torch.cat([de for _, de in embedded]))
        for j, (sparse, dense) in enumerate(embedded):
            for multi, sl in ((False, slice(0, 1)), (True, slice(1, None))):
                want, want_iou = md(image_embeddings=emb[image_of[j]][None], image_pe=pe.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multi)
                torch.testing.assert_close(low[j : j + 1, sl], want, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(iou[j : j + 1, sl], want_iou, atol=1e-5, rtol=1e-5)


def test_batched_episodes_with_data_workers_train_reproducibly(tmp_path):
    """The GPU settings (data drawn in worker processes, episodes decoded in one batch) on the CPU: the run
    trains, its checkpoint loads, and its data do not depend on the number of workers."""
    logs = []
    for workers in (1, 2):
        cfg_path = tmp_path / f"w{workers}.toml"
        cfg_path.write_text(TINY.replace("threads = 2", f"threads = 2\nbatched_episodes = true\ndata_workers = {workers}")
                            + "[prompts]\np_correct = 0.9\nmax_corrections = 3\n")
        path = train(cfg_path, tmp_path / f"run{workers}")
        logs.append([json.loads(line)["loss"] for line in (tmp_path / f"run{workers}" / "log.jsonl").read_text().splitlines()])
        assert torch.load(path, weights_only=True)
    assert len(logs[0]) == 3 and all(np.isfinite(logs[0])) and logs[0] == logs[1]


def test_full_resolution_loss_scores_the_boundary_the_session_shows(tmp_path):
    """Logits on an 8 x 8 grid whose upsampled zero crossing lies at column 16 of 32, against an object
    ending at column 14: at full size the IoU is 14/16; the 4-pixel cells' targets cannot tell (3/4)."""
    from promptseg.train.episodes import losses as _losses
    from promptseg.train.trainer import _lowres_target

    logits = torch.full((1, 8, 8), -5.0)
    logits[:, :, :4] = 5.0
    mask = np.zeros((32, 32), bool)
    mask[:, :14] = True
    full = _losses(logits, _lowres_target(mask, 32, 32), torch.zeros(1), 0.0)
    low = _losses(logits, _lowres_target(mask, 32, 8), torch.zeros(1), 0.0)
    assert float(full[4][0]) == pytest.approx(14 / 16) and float(low[4][0]) == pytest.approx(3 / 4)
    cfg_path = tmp_path / "full.toml"  # and a run with it trains (batched episodes)
    cfg_path.write_text(TINY.replace("threads = 2", "threads = 2\nbatched_episodes = true\nfullres_loss = true"))
    path = train(cfg_path, tmp_path / "run")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(np.isfinite(losses)) and torch.load(path, weights_only=True)


def test_click_term_charges_the_clicks_the_mask_ignores(tmp_path):
    """Logits +5 on the left half of a 32 x 32 input, -5 on the right: a positive click on the left and
    a negative one on the right cost log(1 + e^-5) each; a positive click on the right costs log(1 + e^5)."""
    from promptseg.train.episodes import losses as _losses
    from promptseg.train.trainer import _lowres_target

    logits = torch.full((1, 8, 8), -5.0)
    logits[:, :, :4] = 5.0
    target = _lowres_target(np.ones((32, 32), bool), 32, 32)
    kept = _losses(logits, target, torch.zeros(1), 0.0, (np.array([[10.0, 3.0], [10.0, 30.0]]), [1, 0]))[3]
    ignored = _losses(logits, target, torch.zeros(1), 0.0, (np.array([[10.0, 30.0]]), [1]))[3]
    assert float(kept[0]) == pytest.approx(np.log1p(np.exp(-5.0)), rel=1e-4)
    assert float(ignored[0]) == pytest.approx(np.log1p(np.exp(5.0)), rel=1e-4)
    assert float(_losses(logits, target, torch.zeros(1), 0.0)[3][0]) == 0.0
    # without fullres_loss the target is the 8 x 8 grid: the clicks are still input pixels (size 32)
    low = _losses(logits, _lowres_target(np.ones((32, 32), bool), 32, 8), torch.zeros(1), 0.0,
                  (np.array([[10.0, 12.0]]), [1]), size=32)[3]  # column 12 of 32 is in the left (+5) half
    assert float(low[0]) == pytest.approx(np.log1p(np.exp(-5.0)), rel=1e-4)
    cfg_path = tmp_path / "click.toml"  # and a run with it trains and logs the term
    cfg_path.write_text(TINY.replace("threads = 2", "threads = 2\nbatched_episodes = true\nfullres_loss = true\nclick_weight = 1.0"))
    train(cfg_path, tmp_path / "run")
    recs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) and r["click"] > 0 for r in recs)


def test_propagation_pairs_start_from_the_previous_slice_as_propagate_does(tmp_path):
    from promptseg.train.draws import Neighbour, draw, first_input
    from promptseg.train.trainer import DEFAULTS

    cfg = {k: dict(v) for k, v in DEFAULTS.items()}
    cfg["data"].update(p_propagate=1.0)
    rng = np.random.default_rng(6)
    on_object = 0
    for _ in range(10):
        img, lab, ids, src = draw(rng, 96, cfg)
        assert isinstance(src, Neighbour) and img.shape == (96, 96, 3) and lab.shape == (96, 96)
        assert len(set(ids.tolist())) == 1 and (src.labels == ids[0]).sum() >= cfg["data"]["min_area"]
        prior, first = first_input(rng, lab, ids[0], src, cfg["prompts"], 96, 24)
        assert prior.shape == (1, 1, 24, 24) and first.shape == (1, 2)
        r, c = (int(v) for v in first[0])
        on_object += src.labels[r, c] == ids[0]  # mostly on the previous slice's object (a prior may leak)
    assert on_object >= 6
    cfg_path = tmp_path / "prop.toml"  # and a run with them trains
    cfg_path.write_text(TINY.replace("min_area = 10", "min_area = 10\np_propagate = 0.5").replace(
        "threads = 2", "threads = 2\nbatched_episodes = true"))
    path = train(cfg_path, tmp_path / "run")
    assert torch.load(path, weights_only=True)


def test_propagation_pairs_can_carry_the_previous_mask_as_a_squiggle():
    from promptseg.train.draws import Neighbour, draw, first_input
    from promptseg.train.episodes import Episode
    from promptseg.train.trainer import DEFAULTS

    cfg = {k: dict(v) for k, v in DEFAULTS.items()}
    cfg["data"].update(p_propagate=1.0)
    cfg["prompts"].update(propagate_carry="squiggle")
    rng = np.random.default_rng(6)
    for _ in range(5):
        img, lab, ids, src = draw(rng, 96, cfg)
        assert isinstance(src, Neighbour)
        prior, first = first_input(rng, lab, ids[0], src, cfg["prompts"], 96, 24)
        assert first.ndim == 2 and first.shape[1] == 2 and len(first) > 1  # a stroke, (n, 2) (row, col)
        ep = Episode(rng, lab == ids[0], cfg["prompts"], prior, first)
        assert len(ep.strokes) == 1 and ep.strokes[0][1] and np.array_equal(ep.strokes[0][0], first)
        assert len(ep.rc) >= 2 and all(ep.flags) and not ep.multimask  # its points too, all positive

# -- CT / MRI-like scenes, zoom windows and coarse priors -------------------------------------------------
def test_ct_and_mri_scenes_carry_their_units_and_exact_labels():
    from promptseg.train import anatomy

    rng = np.random.default_rng(11)
    tissue, labels = anatomy.scene(rng, (128, 128), "abdomen")
    assert tissue.shape == labels.shape == (128, 128) and labels.dtype == np.int32 and labels.max() >= 2
    ct = anatomy.render_ct(rng, tissue)
    mr = anatomy.render_mri(rng, tissue)
    assert ct.dtype == np.int16 and mr.dtype == np.uint16
    assert ct[tissue == anatomy.AIR].mean() < -800 and abs(np.median(ct[tissue == anatomy.MUSCLE]) - 45) < 40
    # every object differs from what surrounds it in HU: the labels follow the rendered tissues
    lesion = tissue >= anatomy.LESION
    if lesion.any():
        assert (labels[lesion] > 0).all()
    raw, vol_labels, spacing = anatomy.volume(rng, (12, 96, 96), kind="head", modality="mri", z_step=3.0)
    assert raw.shape == vol_labels.shape == (12, 96, 96) and spacing == (3.0, 1.0, 1.0)
    assert vol_labels.max() >= 2  # ventricles at least
    img, lab = anatomy.sample(np.random.default_rng(5), (80, 100))
    assert img.shape == (80, 100, 3) and img.dtype == np.uint8 and lab.shape == (80, 100)
    again, _ = anatomy.sample(np.random.default_rng(5), (80, 100))
    np.testing.assert_array_equal(img, again)


def test_zoom_windows_for_training_keep_image_and_labels_aligned():
    from promptseg.train.draws import draw
    from promptseg.train.trainer import DEFAULTS

    cfg = {k: dict(v) for k, v in DEFAULTS.items()}
    cfg["data"].update(p_zoom=1.0, p_medical=0.5)
    rng = np.random.default_rng(2)
    seen = 0
    for _ in range(12):
        img, lab, ids, src = draw(rng, 128, cfg)
        mag = None if src is None else src.magnification
        assert img.shape[:2] == lab.shape and max(img.shape[:2]) == 128
        if mag is not None:  # a window: every episode is on its one object, enlarged 1.5-4x
            seen += 1
            assert len(set(ids.tolist())) == 1 and 1.4 < mag <= 4.0 + 1e-6
            assert (lab == ids[0]).sum() >= cfg["data"]["min_area"]
    assert seen >= 6


def test_rods_are_thin_and_only_drawn_when_asked_for():
    """The rods family holds thin objects (short axis <= a third of the long one, as often as not), and
    the default families, which the held-out sets draw, are untouched by it."""
    assert "rods" not in synthetic.SCENES
    rng = np.random.default_rng(4)
    ratios = []
    for _ in range(10):
        _, lab = synthetic.sample(rng, 160, scenes=("rods",))
        for k in np.unique(lab)[1:]:
            m = lab == k
            if m.sum() >= 30:
                w = np.linalg.eigvalsh(np.cov(np.argwhere(m).T.astype(float)))
                ratios.append(np.sqrt(w[0] / w[1]))
    assert len(ratios) > 20 and np.median(ratios) < 0.34
    a = synthetic.sample(np.random.default_rng(9), 96)
    b = synthetic.sample(np.random.default_rng(9), 96, scenes=synthetic.SCENES)
    np.testing.assert_array_equal(a[1], b[1])


def test_plain_renderings_are_flat_objects_on_a_flat_background():
    rng = np.random.default_rng(5)
    spreads = []
    for _ in range(12):
        img, lab = synthetic.sample(rng, 128, p_clean=1.0)
        grey = img.astype(float).mean(axis=2)
        if lab.any() and (lab == 0).any():  # background spread (noise only) against the object-background gap
            gap = abs(np.median(grey[lab > 0]) - np.median(grey[lab == 0]))
            spreads.append(np.subtract(*np.percentile(grey[lab == 0], [75, 25])) / max(gap, 1))
    assert len(spreads) >= 10 and np.median(spreads) < 0.5
    np.testing.assert_array_equal(synthetic.sample(np.random.default_rng(9), 96)[0],
                                  synthetic.sample(np.random.default_rng(9), 96, p_clean=0.0)[0])


def test_a_config_with_an_unknown_key_or_carry_is_refused(tmp_path):
    (tmp_path / "a.toml").write_text('[prompts]\npropagate_carry = "squigle"\n')
    (tmp_path / "b.toml").write_text("[data]\np_propagte = 0.2\n")
    with pytest.raises(ValueError, match="propagate_carry"):
        load_config(tmp_path / "a.toml")
    with pytest.raises(ValueError, match="p_propagte"):
        load_config(tmp_path / "b.toml")


def test_objects_without_a_visible_outline_are_not_prompted():
    """An object painted at its surroundings' intensity (an organ indistinguishable from its neighbour)
    is dropped from the ids a draw prompts; a faint but visible one (contrast 2.5 noise sd) stays."""
    from promptseg.train.draws import draw, visible_ids
    from promptseg.train.trainer import DEFAULTS

    rr, cc = np.mgrid[:128, :160]
    lab = np.zeros((128, 160), np.int32)
    for k, (r, c) in enumerate([(40, 40), (80, 110), (40, 120)], start=1):
        lab[(rr - r) ** 2 + (cc - c) ** 2 < 18**2] = k
    grey = 100 + np.select([lab == 2, lab == 3], [20, -60], 0) + np.random.default_rng(0).normal(0, 8, lab.shape)
    img = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    np.testing.assert_array_equal(visible_ids(img, lab, np.array([1, 2, 3]), 0.5), [2, 3])
    np.testing.assert_array_equal(visible_ids(img, lab, np.array([1, 2, 3]), 0.0), [1, 2, 3])  # 0: keep all
    cfg = {k: dict(v) for k, v in DEFAULTS.items()}
    cfg["data"].update(p_medical=1.0, min_visible=0.5)
    for seed in range(3):
        img, lab, ids, _ = draw(np.random.default_rng(seed), 128, cfg)
        assert len(ids) and len(visible_ids(img, lab, ids, 0.5)) == len(ids)


def test_small_images_are_drawn_small_and_enlarged_as_the_session_enlarges_them():
    from promptseg.train.draws import draw
    from promptseg.train.trainer import DEFAULTS

    cfg = {k: dict(v) for k, v in DEFAULTS.items()}
    cfg["data"].update(p_lowres=1.0, lowres_scale=[0.25, 0.25], p_non_square=0.0)
    img, lab, ids, src = draw(np.random.default_rng(3), 128, cfg)
    assert img.shape == (128, 128, 3) and lab.shape == (128, 128) and src is None
    # drawn at 32 x 32 and enlarged 4x by nearest neighbour: labels come in 4 x 4 blocks
    np.testing.assert_array_equal(lab, np.repeat(np.repeat(lab[::4, ::4], 4, 0), 4, 1))
    assert all((lab == k).sum() >= cfg["data"]["min_area"] for k in ids)


def test_small_volumes_give_propagation_pairs_enlarged_as_the_session_enlarges_them():
    from promptseg.train.draws import Neighbour, draw
    from promptseg.train.trainer import DEFAULTS

    cfg = {k: dict(v) for k, v in DEFAULTS.items()}
    cfg["data"].update(p_propagate=1.0, p_propagate_small=1.0, lowres_scale=[0.25, 0.25])
    img, lab, ids, src = draw(np.random.default_rng(4), 128, cfg)
    assert isinstance(src, Neighbour) and img.shape == (128, 128, 3) and lab.shape == src.labels.shape == (128, 128)
    for plane in (lab, src.labels):  # drawn at 32 x 32, enlarged 4x by nearest neighbour
        np.testing.assert_array_equal(plane, np.repeat(np.repeat(plane[::4, ::4], 4, 0), 4, 1))
    assert (src.labels == ids[0]).any()


def test_coarse_priors_look_like_a_full_view_prediction():
    lab = np.zeros((128, 128), np.int32)
    rr, cc = np.mgrid[:128, :128]
    lab[(rr - 64) ** 2 + (cc - 60) ** 2 < 30**2] = 1
    lab[(rr - 64) ** 2 + (cc - 100) ** 2 < 12**2] = 2
    rng = np.random.default_rng(0)
    dices = []
    for _ in range(40):
        m = P.coarse_mask(rng, lab, 1, 3.0)
        assert m.any()
        dices.append(ps.evaluate.dice(m, lab == 1))
    assert 0.6 < np.median(dices) < 0.99 and min(dices) < 0.9  # near the object, never exactly it


def test_zoom_windows_train_with_the_models_own_full_view_masks(tmp_path, monkeypatch):
    """With p_self_prior the first mask_input of a window's episodes is the model's own full-view mask."""
    from promptseg.train import trainer

    seen = []
    real = trainer._own_priors
    monkeypatch.setattr(trainer, "_own_priors", lambda *a: seen.append(real(*a)) or seen[-1])
    cfg_path = tmp_path / "zoom.toml"
    cfg_path.write_text(TINY.replace("[data]", "[data]\np_zoom = 1.0\np_medical = 0.5")
                        + "[prompts]\np_prior = 1.0\np_self_prior = 1.0\n")
    path = train(cfg_path, tmp_path / "run")
    assert torch.load(path, weights_only=True)
    masks = [m for step in seen for m in step.values()]
    assert masks and all(m.dtype == bool and m.ndim == 2 for m in masks)
