"""Training episodes simulated as tensors on the model's device (``device_episodes``): the same prompt
embeddings as SAM's prompt encoder, the same first-round loss as the host path, and corrections that a
user would place."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from promptseg.models.build import build_sam
from promptseg.train import lockstep, trainer
from promptseg.train.episodes import Episode

from test_train import TINY

PROMPTS = {"p_click": 0.4, "p_box": 0.3, "p_squiggle": 0.3, "p_correct": 0.0, "max_corrections": 4,
           "p_squiggle_correct": 0.5, "p_prior": 0.0, "p_prior_full": 0.0, "p_self_prior": 0.0,
           "propagate_carry": "click"}


def _sam(size=64):
    torch.manual_seed(0)
    return build_sam("cnn_small", image_size=size, widths=[8, 8, 16, 16], blocks=[0, 1, 1, 1], prompt_embed_dim=32,
                     decoder_mlp_dim=64, strokes=True).eval()


def test_tokens_embed_as_the_prompt_encoder_embeds_points_and_boxes():
    pe = _sam().prompt_encoder
    xy = torch.tensor([[[10.0, 20.0], [40.5, 3.0], [0.0, 0.0]]])
    with torch.no_grad():
        want, _ = pe(points=(xy[:, :2], torch.tensor([[1, 0]])), boxes=None, masks=None)  # SAM appends a pad
        got = lockstep.embed_tokens(pe, xy, torch.tensor([[1, 0, -1]]))
        torch.testing.assert_close(got, want)
        box, _ = pe(points=None, boxes=torch.tensor([[5.0, 6.0, 50.0, 40.0]]), masks=None)
        got = lockstep.embed_tokens(pe, torch.tensor([[[5.0, 6.0], [50.0, 40.0]]]), torch.tensor([[2, 3]]))
        torch.testing.assert_close(got, box)


def test_chessboard_distance_counts_erosions_with_the_border_outside():
    region = torch.zeros(1, 7, 9, dtype=torch.bool)
    region[0, :, 2:9] = True  # touches the top, bottom and right borders
    d = lockstep.chessboard(region)[0]
    assert d[3, 5] == 4 and d[0, 5] == 1 and d[3, 8] == 1 and d[3, 2] == 1 and d[3, 1] == 0
    assert torch.equal(d > 0, region[0])


def _state(mask, pr=PROMPTS, seed=0):
    eps = [Episode(np.random.default_rng(seed), m, pr) for m in mask]
    return lockstep.Lockstep(eps, torch.zeros(len(eps), dtype=torch.long), 64, 16, pr["max_corrections"], "cpu"), eps


def test_a_correction_goes_to_the_larger_error_with_its_sign():
    gt = np.zeros((2, 50, 60), bool)
    gt[:, 10:40, 10:50] = True
    st, _ = _state(gt)
    pred = torch.zeros(2, 64, 64, dtype=torch.bool)
    pred[0, 10:40, 10:25] = True  # most of the object missed: a positive correction in the missed part
    pred[1] = st.gt[1]
    pred[1, 0:50, 0:60] = True  # a false region larger than the object: a negative one outside it
    before = st.count.clone()
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        wrong = st.correct(torch.tensor([0, 1]), pred, 0.0, gen)
    assert wrong.all() and (st.count == before + 20).all()
    xy, lab = st.xy[:, before[0]:], st.labels[:, before[0]:]
    for i, want in ((0, 1), (1, 0)):
        c, r = xy[i, :20].long().unbind(1)
        assert (lab[i, :20] == want).all()
        err = st.gt[i] & ~pred[i] if want else pred[i] & ~st.gt[i]
        assert err[r, c].all()
    # nothing wrong: nothing added, and the episode is over
    assert not st.correct(torch.tensor([1]), st.gt[1:2].clone(), 0.0, gen).any()


def test_a_correcting_squiggle_sends_points_inside_the_error_and_draws_its_stroke():
    gt = np.zeros((3, 64, 64), bool)
    gt[:, 8:56, 8:56] = True
    st, _ = _state(gt)
    st.strokes.zero_()
    st.has_stroke.zero_()
    pred = torch.zeros(3, 64, 64, dtype=torch.bool)
    pred[:, 8:56, 8:30] = True  # the right part missed
    before = st.count.clone()
    assert st.correct(torch.arange(3), pred, 1.0, torch.Generator().manual_seed(3)).all()
    missed = st.gt & ~pred
    for i in range(3):
        n = int(st.count[i] - before[i])
        assert 1 <= n <= lockstep.MAX_SPREAD
        c, r = st.xy[i, before[i]:st.count[i]].round().long().unbind(1)
        assert missed[i, r, c].all() and (st.labels[i, before[i]:st.count[i]] == 1).all()
        drawn = st.strokes[i, 0].nonzero() * 4  # low-res cells back to input pixels
        assert len(drawn) >= 1 and st.strokes[i, 1].sum() == 0 and st.has_stroke[i]
        assert (drawn[:, 1] >= 28).all()  # the stroke lies in the missed (right) part


def test_the_first_round_loses_what_the_host_episodes_lose():
    """With no corrections, device episodes and host episodes draw the same prompts and score the same
    masks: the same loss terms (float tolerance)."""
    sam = _sam()
    cfg = {s: dict(v) for s, v in trainer.DEFAULTS.items()}
    cfg["prompts"].update(PROMPTS)
    rng = np.random.default_rng(0)
    masks = []
    for _ in range(8):
        m = np.zeros((64, 64), bool)
        r, c = rng.integers(10, 50, 2)
        m[r - 8 : r + 8, c - 6 : c + 9] = True
        masks.append(m)
    emb = torch.randn(2, 32, 4, 4)
    items = [(i % 2, m, None, None) for i, m in enumerate(masks)]
    with torch.no_grad():
        host = trainer._episodes_batched(sam, emb, items, np.random.default_rng(7), cfg)
        dev = lockstep.run(sam, emb, items, np.random.default_rng(7), cfg, torch.Generator().manual_seed(0))
    assert host[2] == dev[2] == 8
    for k in ("focal", "dice", "iou"):
        assert float(dev[0][k]) == pytest.approx(float(host[0][k]), rel=1e-4)
    assert dev[1] == pytest.approx(host[1], abs=1e-6)


def test_a_run_with_device_episodes_trains_and_saves(tmp_path):
    cfg_path = tmp_path / "dev.toml"
    text = TINY.replace("decoder_mlp_dim = 64}", "decoder_mlp_dim = 64, strokes = true}")
    cfg_path.write_text(text.replace("threads = 2", "threads = 2\ndevice_episodes = true\nfullres_loss = true")
                        + "[prompts]\np_correct = 0.9\nmax_corrections = 3\np_squiggle = 0.3\np_box = 0.3\n"
                          "p_squiggle_correct = 0.5\n")
    path = trainer.train(cfg_path, tmp_path / "run")
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(logs) == 3 and all(np.isfinite(r["loss"]) for r in logs)
    sam = trainer.build_model(trainer.load_config(cfg_path))
    sam.load_state_dict(torch.load(path, weights_only=True))  # every weight saved, the squiggle input's too
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.replace("threads = 2", "threads = 2\ndevice_episodes = true\nclick_weight = 0.5"))
    with pytest.raises(ValueError, match="click_weight"):
        trainer.train(bad, tmp_path / "bad")


def _cfg(**prompts):
    cfg = {s: dict(v) for s, v in trainer.DEFAULTS.items()}
    cfg["model"]["image_size"] = 64
    cfg["data"].update(min_area=10, p_medical=0.3)
    cfg["prompts"].update(PROMPTS, **prompts)
    cfg["train"].update(batch_size=6, objects_per_image=2, device_episodes=True, prompts_in_workers=True)
    return cfg


def _same_items(a, b):
    assert len(a) == len(b)
    for (ba, ma, pa, fa), (bb, mb, pb, fb) in zip(a, b):
        assert ba == bb and np.array_equal(ma, mb)
        assert (pa is None) == (pb is None) and (isinstance(pa, str) == isinstance(pb, str))
        assert pa is None or isinstance(pa, str) or np.array_equal(np.asarray(pa), np.asarray(pb))
        assert (fa is None) == (fb is None) and (fa is None or np.array_equal(fa, fb))


def test_prompts_drawn_with_the_images_are_those_the_main_process_draws():
    """``prompts_in_workers``: :func:`episodes.prepare`, run where a batch is drawn, draws the objects,
    first mask inputs, first prompts and Episodes that the main process would draw from the same
    generator (on a batch without zoom windows, whose first inputs need the model)."""
    from promptseg.train.draws import draw
    from promptseg.train.episodes import prepare

    cfg = _cfg(p_prior_full=0.5, p_correct=0.8)
    batch = [draw(np.random.default_rng([3, i]), 64, cfg) for i in range(6)]
    items, eps = prepare(np.random.default_rng(11), batch, cfg)
    rng = np.random.default_rng(11)  # the main process's draws, as step_loss and lockstep.run make them
    want = [(b, lab == k, *trainer.first_input(rng, lab, k, src, cfg["prompts"], 64, 16, None))
            for b, (_, lab, ids, src) in enumerate(batch) for k in rng.choice(ids, size=min(len(ids), 2), replace=False)]
    _same_items(items, want)
    assert any(p is not None for _, _, p, _ in items)  # (some start from a coarse mask to correct)
    assert all(p is None or isinstance(p, np.ndarray) for _, _, p, _ in items)  # (arrays: no tensors leave a worker)
    for ep, (_, mask, prior, first) in zip(eps, want):
        other = Episode(rng, mask, cfg["prompts"], prior, first)
        assert np.array_equal(ep.rc, other.rc) and ep.flags == other.flags and ep.n_rounds == other.n_rounds
        assert (ep.box is None and other.box is None) or np.array_equal(ep.box, other.box)


def test_a_zoom_window_drawn_in_a_worker_starts_from_the_models_own_mask():
    from promptseg.train.draws import LATER, Window, draw
    from promptseg.train.episodes import StepData

    cfg = _cfg(p_prior=1.0, p_self_prior=1.0)
    cfg["data"]["p_zoom"] = 1.0
    cfg["train"]["steps"] = 2
    batch, items, eps = StepData(draw, cfg, 0)[1]
    again = StepData(draw, cfg, 1)[0]  # step 1 again, as a resumed run draws it: the same episodes
    _same_items(items, again[1])
    window = [isinstance(batch[b][3], Window) for b, *_ in items]  # (a window that does not fit: a whole scene)
    assert sum(window) >= 6 and all(ep.prev is None for ep in eps)
    assert [isinstance(p, str) and p == LATER for _, _, p, _ in items] == window
    sam = _sam()
    with torch.no_grad():
        own = trainer._own_priors(sam, batch, np.random.default_rng(5), 64, "cpu")
        made, eps = trainer._own_later(sam, items, eps, batch, np.random.default_rng(5), 64, 16, "cpu")
    for (b, _, prior, _), ep, win in zip(made, eps, window):
        if win:
            assert ep.prev is prior and prior.shape == (1, 1, 16, 16)
            if own[b].any():  # (an empty own mask is replaced by a coarse one)
                assert torch.equal(prior, trainer.as_prior(own[b], 64, 16))
        else:
            assert prior is None and ep.prev is None
    assert any(own[b].any() for b in own)


def test_a_run_with_prompts_drawn_in_workers_trains_and_a_config_without_batched_episodes_is_refused(tmp_path):
    cfg_path = tmp_path / "w.toml"
    text = TINY.replace("decoder_mlp_dim = 64}", "decoder_mlp_dim = 64, strokes = true}")
    cfg_path.write_text(text.replace("threads = 2", "threads = 2\nbatched_episodes = true\nprompts_in_workers = true\n"
                                     "data_workers = 2").replace("min_area = 10", "min_area = 10\np_zoom = 0.5")
                        + "[prompts]\np_correct = 0.9\nmax_corrections = 2\np_prior = 0.9\np_self_prior = 0.7\n")
    trainer.train(cfg_path, tmp_path / "run")
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(logs) == 3 and all(np.isfinite(r["loss"]) for r in logs)
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.replace("threads = 2", "threads = 2\nprompts_in_workers = true"))
    with pytest.raises(ValueError, match="prompts_in_workers needs device_episodes or batched_episodes"):
        trainer.load_config(bad)
