"""Fine-tuning of the decoder's IoU head (promptseg.train.iou_head): what a lone click shows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import promptseg as ps
from promptseg.evaluate import iou
from promptseg.train.iou_head import _record, _TokenTap, choice_quality

from conftest import star_image


def test_a_record_holds_the_iou_token_and_the_true_iou_of_each_mask(default_model):
    """The record's four IoUs are those of the masks the decoder makes, measured at the image's pixels:
    the one the Session shows for a lone click is the three-mask output with the highest predicted IoU,
    and the head, applied to the recorded token, predicts what the decoder predicted."""
    image, star = star_image()
    s = ps.Session(default_model, image, zoom=False, edges=False)
    feats, frame = s._features(0), s.frame
    with _TokenTap(default_model) as tap:
        token, ious, low = _record(default_model, tap, feats, frame, star, np.array([[128.0, 128.0]]), [True])
    assert token.shape == (128,) and token.dtype == np.float32 and ious.shape == (4,) and low.shape == (1, 64, 64)
    assert ((ious >= 0) & (ious <= 1)).all()
    _, predicted = default_model.decode(feats, frame.to_input_xy(np.array([[128.0, 128.0]])), np.array([1]), None, None, True)
    with torch.no_grad():
        head = default_model.sam.mask_decoder.iou_prediction_head(torch.as_tensor(token)[None])[0].numpy()
    np.testing.assert_allclose(head[1:], predicted, atol=1e-4)
    shown = s.add_point((128, 128)).mask
    assert iou(shown, star) == pytest.approx(float(ious[1 + int(np.argmax(predicted))]), abs=1e-6)


def test_choice_quality_scores_the_pick_against_the_best():
    ious = torch.tensor([[0.5, 0.2, 0.9, 0.4], [0.1, 0.8, 0.3, 0.6], [0.7, 0.7, 0.7, 0.7]])
    pred = torch.tensor([[0.5, 0.9, 0.1, 0.2], [0.1, 0.9, 0.2, 0.3], [0.0, 0.0, 0.0, 0.0]])
    q = choice_quality(pred, ious, torch.tensor([True, True, False]))
    assert q["chosen_iou"] == pytest.approx((0.2 + 0.8) / 2) and q["best_iou"] == pytest.approx((0.9 + 0.8) / 2)
    assert q["mse"] == pytest.approx(float(((pred - ious) ** 2).mean()))


def test_training_the_iou_head_changes_only_the_head_and_reuses_its_records(tmp_path):
    from promptseg.models.checkpoints import weights_dir
    from promptseg.train import train

    init = weights_dir() / "promptseg_cnn_s.pt"
    cfg = tmp_path / "iou.toml"
    cfg.write_text(f'[iou_head]\ninit = "{init}"\nseed = 1\ngeneric = 2\nmedical_2d = 1\nmedical_3d = 1\n'
                   'steps = 20\nbatch_size = 8\nthreads = 1\n')
    out = tmp_path / "run"
    path = train(cfg, out)
    state, base = torch.load(path, weights_only=True), torch.load(init, weights_only=True)
    head = "mask_decoder.iou_prediction_head."
    assert set(state) == set(base)
    assert all(torch.equal(state[k], v) for k, v in base.items() if not k.startswith(head))
    assert any(not torch.equal(state[k], v) for k, v in base.items() if k.startswith(head))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "step" in r] == [0, 20] and log[0]["records"] > 10
    data = (out / "data.pkl").stat().st_mtime_ns
    train(cfg, out)
    assert (out / "data.pkl").stat().st_mtime_ns == data  # the records were read back, not collected again
    with pytest.raises(ValueError, match="unknown key"):
        bad = tmp_path / "bad.toml"
        bad.write_text('[iou_head]\nsteps = 1\nstep = 2\n')
        train(bad, tmp_path / "bad")
