"""Metrics against hand-computed cases, and the simulated-annotator protocol."""

from __future__ import annotations

import json

import numpy as np
import pytest

from promptseg import evaluate as ev


def test_dice_and_iou_by_hand():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :4] = True          # 4 pixels
    b[0, 2:4] = True
    b[1, 0:2] = True         # 4 pixels, 2 shared
    assert ev.dice(a, b) == pytest.approx(2 * 2 / 8)
    assert ev.iou(a, b) == pytest.approx(2 / 6)
    assert ev.dice(a, a) == 1.0 and ev.iou(a, ~a) == 0.0
    empty = np.zeros((4, 4), bool)
    assert ev.dice(empty, empty) == 1.0 and ev.iou(empty, empty) == 1.0


def test_surface_distances_with_spacing():
    a = np.zeros((10, 12), bool)
    b = np.zeros((10, 12), bool)
    a[0, 1:11] = True        # two parallel lines 4 rows apart: every boundary pixel is 4 rows away
    b[4, 1:11] = True
    assert ev.hd95(a, b) == pytest.approx(4.0)
    assert ev.masd(a, b) == pytest.approx(4.0)
    assert ev.hd95(a, b, spacing=(2.5, 1.0)) == pytest.approx(10.0)  # rows are 2.5 mm apart
    assert ev.hd95(a, a) == 0.0 and ev.masd(a, a) == 0.0
    assert ev.hd95(a, np.zeros_like(a)) == float("inf")


def test_surface_of_a_square_offset_by_one_pixel():
    a = np.zeros((20, 20), bool)
    a[5:15, 5:15] = True
    b = np.roll(a, 1, axis=1)
    ab, ba = ev.surface_distances(a, b)
    # left edge of a is 1 px from b's left edge; right edge of a lies inside b, 1 px from b's right
    # edge; the top and bottom edges of a lie on b's boundary (distance 0) except their first pixel
    assert ab.max() == pytest.approx(1.0) and ba.max() == pytest.approx(1.0)
    assert ev.hd95(a, b) == pytest.approx(1.0)


def test_next_click_goes_to_the_middle_of_the_larger_error():
    gt = np.zeros((30, 30), bool)
    gt[5:15, 5:15] = True
    click, positive = ev.next_click(gt, np.zeros_like(gt))
    assert positive and click in [(9.0, 9.0), (9.0, 10.0), (10.0, 9.0), (10.0, 10.0)]
    pred = gt.copy()
    pred[18:29, 18:29] = True  # a false region larger than anything missed
    click, positive = ev.next_click(gt, pred)
    assert not positive and click == (23.0, 23.0)
    assert ev.next_click(gt, gt) is None


def test_squiggle_stays_inside_the_object():
    m = np.zeros((40, 60), bool)
    m[15:25, 5:55] = True
    s = ev.squiggle(m)
    assert s.shape == (12, 2)
    assert all(m[int(round(r)), int(round(c))] for r, c in s)
    assert np.ptp(s[:, 1]) > 30  # drawn along the long axis


@pytest.mark.parametrize("start", ["click", "box", "squiggle"])
def test_simulate_runs_the_protocol_through_a_session(small_sam, start):
    model, _ = small_sam
    img = np.zeros((64, 64), np.uint8)
    img[20:44, 16:48] = 200
    gt = img > 0
    r = ev.simulate(model, img, gt, start=start, max_clicks=4)
    assert len(r["dice"]) == len(r["iou"]) == 5
    assert all(0 <= v <= 1 for v in r["dice"])
    assert 1 <= r["noc90"] <= 6 and r["ms_per_prompt"] > 0
    assert r["hd95"] >= 0 and r["masd"] >= 0


def test_evaluate_volume_and_report(small_sam, tmp_path):
    model, _ = small_sam
    vol = np.zeros((5, 48, 48), np.uint8)
    vol[1:4, 10:30, 10:30] = 200
    labels = np.zeros(vol.shape, np.int32)
    labels[1:4, 10:30, 10:30] = 1
    labels[2, 35:45, 35:45] = 2
    report = ev.evaluate(model, [("vol", vol, labels, (2.0, 0.5, 0.5))], max_clicks=3)
    assert report["n_objects"] == 2 and len(report["mean"]["dice"]) == 4
    ev.write_report(report, tmp_path / "r.json", tmp_path / "r.png")
    assert json.loads((tmp_path / "r.json").read_text())["n_objects"] == 2
    assert (tmp_path / "r.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="no objects"):
        ev.evaluate(model, [("empty", vol, np.zeros_like(labels), None)])


def test_inner_distance_is_the_full_plane_distance_transform():
    from scipy import ndimage as ndi

    rng = np.random.default_rng(1)
    for shape in [(40, 50), (7, 30, 30), (1, 12)]:
        for level in (0.45, 0.5, 0.55):
            mask = ndi.gaussian_filter(rng.random(shape), 2) > level
            full = ndi.distance_transform_edt(np.pad(mask, 1))[(slice(1, -1),) * mask.ndim]  # borders are outside
            assert np.array_equal(ev.inner_distance(mask), full)
    one = np.zeros((5, 5), bool)
    one[0, 2] = True  # on the image border: distance 1, like any single pixel
    assert ev.inner_distance(one)[0, 2] == 1.0 and ev.innermost(one) == (0.0, 2.0)
    assert not ev.inner_distance(np.zeros((4, 4), bool)).any()


def test_the_held_out_protocol_shared_among_processes_gives_the_same_figures(tmp_path):
    """``python -m promptseg.train.evaluate --workers N`` (a 16-core machine finishes in minutes what takes
    one core twenty): the objects shared among two processes give one process's figures."""
    from functools import partial

    import torch

    from promptseg.models.build import build_sam
    from promptseg.models.tiny import save_state_dict
    from promptseg.train import evaluate as te

    arch = {"widths": [8, 8, 16, 16], "blocks": [0, 1, 1, 1], "prompt_embed_dim": 32, "decoder_mlp_dim": 64}
    torch.manual_seed(0)
    save_state_dict(build_sam("cnn_small", image_size=64, **arch), tmp_path / "m.pt")
    spec = dict(name="eval_tiny", arch="cnn_small", filename="m.pt", input_size=64, arch_kwargs=arch, zoom=False)
    load = partial(te._load, spec, str(tmp_path / "m.pt"), True)
    one = te.run(load(), counts=(3, 2, 1))
    two = te.run(None, workers=2, load=load, counts=(3, 2, 1))
    for name in ("generic_2d", "medical_2d", "medical_3d", "coins", "all_synthetic"):
        for start in te.STARTS:
            for key in ("dice", "noc85", "noc90", "never_falls"):
                assert one[name][start][key] == two[name][start][key], (name, start, key)
    assert len(two["coins"]["click"]["dice"]) == 21
