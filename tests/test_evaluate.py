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


def test_the_ritm_rule_corrects_the_deeper_error_not_the_one_with_more_pixels():
    gt = np.zeros((40, 40), bool)
    gt[2:38, 2:38] = True
    pred = gt.copy()
    pred[2:38, 2] = pred[2:38, 37] = pred[2, 2:38] = False  # missed: thin strips along three sides (106 px)
    pred[20:27, 39:40] = True  # (a sliver outside the object does not change the answer)
    gt[10:17, 10:17] = False  # false: a 7 x 7 hole inside the object that the prediction fills (49 px)
    assert (gt & ~pred).sum() > (pred & ~gt).sum()
    (rc, positive) = ev.next_click(gt, pred)  # the area rule: the missed strips, the larger count
    assert positive and gt[int(rc[0]), int(rc[1])] and not pred[int(rc[0]), int(rc[1])]
    (rc, positive) = ev.next_click(gt, pred, "ritm")  # RITM's: the hole, 4 px deep against 1 px
    assert not positive and rc == (13.0, 13.0)
    tie = np.zeros((20, 20), bool)
    tie[5:8, 5:8] = True  # a missed 3 x 3 square and a false one: the same depth, the false one wins
    other = np.zeros_like(tie)
    other[12:15, 12:15] = True
    assert ev.next_click(tie, other, "ritm") == ((13.0, 13.0), False)
    assert ev.next_click(tie, other, "area") == ((6.0, 6.0), True)
    with pytest.raises(ValueError, match="unknown click rule 'nearest'"):
        ev.next_click(tie, other, "nearest")


def test_the_region_rule_aims_at_the_largest_wrong_region_not_a_stray_pixel():
    gt = np.zeros((30, 30), bool)
    gt[5:25, 5:25] = True
    pred = gt.copy()
    pred[5, 5] = False  # a stray missed pixel, first in raster order
    pred[10:21, 24] = False  # a missed sliver 11 px long down the right side
    pred[27:29, 10:13] = True  # a false 2 x 3 block below the object (6 px)
    (rc, positive) = ev.next_click(gt, pred)  # the area rule: every missed pixel is 1 px deep, the first wins
    assert positive and rc == (5.0, 5.0)
    (rc, positive) = ev.next_click(gt, pred, "region")  # the sliver's middle
    assert positive and rc == (15.0, 24.0)
    pred[26:29, 8:14] = True  # the false block grows to 18 px, larger than the sliver
    (rc, positive) = ev.next_click(gt, pred, "region")
    assert not positive and rc == (27.0, 10.0) and not gt[27, 10]
    diagonal = np.eye(12, dtype=bool)  # a diagonal sliver is one region (8-connected), a lone pixel another
    diagonal[0, 11] = True
    (rc, positive) = ev.next_click(diagonal, np.zeros_like(diagonal), "region")
    assert positive and rc in [(5.0, 5.0), (6.0, 6.0)]
    assert ev.next_click(gt, gt, "region") is None


def test_the_held_out_summary_counts_never_and_noc_by_object_size():
    from promptseg.train.evaluate import summary

    curve = lambda first: [first] + [0.95] * 20  # Dice after 21 prompts
    objects = [dict(dice=curve(0.5), noc85=3, noc90=22, ms_per_prompt=10.0, area=50),
               dict(dice=curve(0.9), noc85=1, noc90=2, ms_per_prompt=20.0, area=80),
               dict(dice=curve(0.7), noc85=2, noc90=5, ms_per_prompt=30.0, area=400),
               dict(dice=curve(0.6), noc85=4, noc90=22, ms_per_prompt=40.0, area=5000)]
    s = summary(objects)
    assert s["never90"] == 0.5 and s["noc90"] == pytest.approx(51 / 4) and s["noc85"] == 2.5
    assert s["noc90_by_area"] == {"under 100 px": [2, 12.0], "100-999 px": [1, 5.0], "1000 px and more": [1, 22.0]}
    assert s["dice"][0] == pytest.approx(0.675) and s["never_falls"] and s["median_first"] == pytest.approx(0.65)


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
    r = ev.simulate(model, img, gt, start=start, max_clicks=4, click_rule="ritm" if start == "box" else "area")
    assert len(r["dice"]) == len(r["iou"]) == 5 and r["area"] == 24 * 32
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
    with pytest.raises(ValueError, match="unknown click rule"):
        ev.evaluate(model, [("vol", vol, labels, None)], click_rule="farthest")


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
    objects_one, objects_two = {}, {}
    one = te.run(load(), counts=(3, 2, 1), objects=objects_one)
    two = te.run(None, workers=2, load=load, counts=(3, 2, 1), objects=objects_two)
    for name in ("generic_2d", "medical_2d", "medical_3d", "coins", "all_synthetic"):
        for start in te.STARTS:
            for key in ("dice", "noc85", "noc90", "never_falls", "never90", "noc90_by_area"):
                assert one[name][start][key] == two[name][start][key], (name, start, key)
    assert len(two["coins"]["click"]["dice"]) == 21
    same = lambda recs: {(n, s, i): {k: v for k, v in o.items() if k != "ms_per_prompt"}
                         for n, per in recs.items() for s, objs in per.items() for i, o in enumerate(objs)}
    assert same(objects_one) == same(objects_two) and len(objects_two["generic_2d"]["box"]) == 3
    sets = te.heldout(3, 2, 1)  # each record is its object's, in the set's order
    assert [o["area"] for o in objects_two["medical_2d"]["click"]] == [int(gt.sum()) for _, gt in sets["medical_2d"]]
    assert sum(b[0] for b in two["all_synthetic"]["click"]["noc90_by_area"].values()) == 6
