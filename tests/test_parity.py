"""A fresh Session gives the same masks as segment_anything.SamPredictor for the same weights."""

from __future__ import annotations

import numpy as np
import pytest
from segment_anything import SamPredictor

import promptseg as ps


def _image(h, w, seed, channels=3):
    rng = np.random.default_rng(seed)
    img = (rng.random((h, w, channels)) * 70).astype(np.uint8)
    rr, cc = np.mgrid[:h, :w]
    img[(rr - h // 2) ** 2 + (cc - w // 3) ** 2 < (min(h, w) // 5) ** 2] = 210
    return img


def _agreement(a, b):
    return float((a == b).mean())


def _nontrivial(mask):
    frac = mask.mean()
    assert 0.001 < frac < 0.999, f"degenerate mask (fraction {frac:.4f}) makes the comparison meaningless"


@pytest.mark.parametrize("hw", [(300, 500), (1024, 700), (257, 256)])
def test_point_box_and_correction_match_sampredictor(small_sam, hw):
    model, _ = small_sam
    h, w = hw
    img = _image(h, w, seed=h)
    pred = SamPredictor(model.sam)
    pred.set_image(img)

    # (a) one positive point: best of the multimask outputs by predicted IoU
    pt = (h * 0.5, w / 3)  # (row, col)
    s = ps.Session(model, img)
    p = s.add_point(pt)
    masks, scores, _ = pred.predict(point_coords=np.array([[pt[1], pt[0]]]), point_labels=np.array([1]), multimask_output=True)
    ref = masks[int(np.argmax(scores))]
    _nontrivial(ref)
    assert _agreement(p.mask, ref) >= 0.999
    assert p.score == pytest.approx(float(scores.max()), abs=1e-2)

    # (b) one box, (c) then a negative point with the first call's low-res logits fed back
    box_rc = ((h * 0.3, w * 0.15), (h * 0.7, w * 0.55))
    box_xy = np.array([w * 0.15, h * 0.3, w * 0.55, h * 0.7])
    s = ps.Session(model, img)
    p = s.add_box(*box_rc)
    m1, _, low1 = pred.predict(box=box_xy, multimask_output=False)
    _nontrivial(m1[0])
    assert _agreement(p.mask, m1[0]) >= 0.999
    neg = (h * 0.5, w * 0.5)
    p = s.add_point(neg, positive=False)
    m2, _, _ = pred.predict(point_coords=np.array([[neg[1], neg[0]]]), point_labels=np.array([0]), box=box_xy,
                            mask_input=low1, multimask_output=False)
    assert _agreement(p.mask, m2[0]) >= 0.999


@pytest.mark.parametrize("kind", ["grey_uint8", "uint16", "float32"])
def test_non_rgb_images_take_the_documented_path(small_sam, kind):
    """Grey, uint16 and float images are windowed to uint8, repeated to RGB, then handled as RGB."""
    model, _ = small_sam
    base = _image(200, 320, seed=7, channels=1)[..., 0]
    if kind == "grey_uint8":
        img, as_rgb = base, np.repeat(base[..., None], 3, axis=-1)
    else:
        dtype = np.uint16 if kind == "uint16" else np.float32
        img = base.astype(dtype) * 40 + 1000
        lo, hi = np.percentile(img.astype(np.float64), [0.5, 99.5])
        u8 = np.rint(np.clip((img.astype(np.float32) - np.float32(lo)) * np.float32(255 / (hi - lo)), 0, 255)).astype(np.uint8)
        as_rgb = np.repeat(u8[..., None], 3, axis=-1)
    pred = SamPredictor(model.sam)
    pred.set_image(as_rgb)
    p = ps.Session(model, img).add_point((100, 107))
    masks, scores, _ = pred.predict(point_coords=np.array([[107, 100]]), point_labels=np.array([1]))
    assert _agreement(p.mask, masks[int(np.argmax(scores))]) >= 0.999


def test_ct_window_maps_hounsfield_units(small_sam):
    """modality='ct' applies the soft-tissue window (-160, 240) HU, not per-image percentiles."""
    model, _ = small_sam
    hu = np.full((64, 64), -1000, np.int16)
    hu[16:48, 16:48] = 40
    store = ps.embed(hu, model, modality="ct")
    pre = store.signature["preprocessing"]
    assert (pre["lo"], pre["hi"]) == (-160.0, 240.0)
    from promptseg.preprocess import Intensity

    out = Intensity(-160.0, 240.0).apply(hu)
    assert out[0, 0, 0] == 0 and out[32, 32, 0] == round(200 * 255 / 400)
