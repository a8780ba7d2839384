"""Evaluation of a trained model through the real inference path (:class:`promptseg.Session`).

Protocol, per object: 1 click at the object's innermost pixel (farthest from its boundary); then up to 2
correction clicks, each at the innermost pixel of the larger error region (positive in a missed region,
negative in a false-positive one), fed through ``Session.add_point`` so that the previous logits are fed
back as the Session does; separately, a box at the object's exact bounding box (``Session.add_box``) and
a squiggle along the object's long axis through its innermost pixel (``Session.add_scribble``, the
stroke of :func:`promptseg.evaluate.squiggle`). Reported: mean Dice after 1 and 3 clicks, with the box,
and with the squiggle; and `promptseg evaluate`'s 20-click protocol (Dice curve, NoC@85/90) per start.

Data: held-out synthetic draws (seeds never used in training) and scikit-image's ``coins()``, labelled
with the watershed recipe of scikit-image's own coins tutorial (Sobel elevation map, markers at grey < 30
and > 150, holes filled, objects < 100 px dropped; 24 coins).
"""

from __future__ import annotations

import json
import time

import numpy as np

import promptseg as ps
from ..evaluate import dice, innermost, next_click, squiggle  # the same protocol as `promptseg evaluate`
from .synthetic import sample


def evaluate_object(model, image: np.ndarray, gt: np.ndarray, n_clicks: int = 3, session_kwargs=None) -> dict:
    """Dice after each click (deterministic protocol above) and with the bounding box, for one object.

    image : uint8 (H, W) or (H, W, 3); gt : bool (H, W). Returns {"clicks": [d1, d2, ...], "box": d,
    "masks": {"click1": bool (H, W), "box": bool (H, W)}}.
    """
    s = ps.Session(model, image, **(session_kwargs or {}))
    pred = s.add_point(innermost(gt), True)
    masks = {"click1": pred.mask.copy()}
    scores = [dice(pred.mask, gt)]
    for _ in range(n_clicks - 1):
        click = next_click(gt, np.asarray(pred.mask))
        if click is None:
            scores.append(scores[-1])
            continue
        pred = s.add_point(click[0], click[1])
        scores.append(dice(pred.mask, gt))
    s.reset()
    rows, cols = np.flatnonzero(gt.any(axis=1)), np.flatnonzero(gt.any(axis=0))
    pb = s.add_box((rows[0], cols[0]), (rows[-1], cols[-1]))
    masks["box"] = pb.mask.copy()  # (a Prediction's mask is a view of the session's buffer: copy it now)
    s.reset()
    psq = s.add_scribble(squiggle(gt))
    return {"clicks": scores, "box": dice(masks["box"], gt), "squiggle": dice(psq.mask, gt), "masks": masks}


def coins_labels() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image ``coins()`` (uint8 (303, 384)) and int32 labels of its 24 coins (see module docstring)."""
    from scipy import ndimage as ndi
    from skimage import data, filters, measure, segmentation

    im = data.coins()
    markers = np.zeros_like(im)
    markers[im < 30] = 1
    markers[im > 150] = 2
    seg = ndi.binary_fill_holes(segmentation.watershed(filters.sobel(im), markers) == 2)
    lab = measure.label(seg)
    sizes = np.bincount(lab.ravel())
    lab[sizes[lab] < 100] = 0
    return im, measure.label(lab > 0).astype(np.int32)


def synthetic_set(n: int = 100, seed: int = 10_000_000, size: int = 256, min_area: int = 30):
    """``n`` held-out synthetic (image, gt) pairs, one random object (>= ``min_area`` px) per image."""
    out = []
    i = 0
    while len(out) < n:
        rng = np.random.default_rng([seed, i])
        i += 1
        image, labels = sample(rng, size)
        ids, counts = np.unique(labels, return_counts=True)
        ok = ids[(ids > 0) & (counts >= min_area)]
        if len(ok):
            out.append((image, labels == rng.choice(ok)))
    return out


def summarise(results: list[dict]) -> dict:
    clicks = np.array([r["clicks"] for r in results])
    box = np.array([r["box"] for r in results])
    return {"n": len(results), "dice_1click": float(clicks[:, 0].mean()), "dice_3clicks": float(clicks[:, -1].mean()),
            "dice_box": float(box.mean()), "dice_squiggle": float(np.mean([r["squiggle"] for r in results])),
            "median_1click": float(np.median(clicks[:, 0])),
            "frac_1click_dice_gt_0.8": float((clicks[:, 0] > 0.8).mean())}


def click_protocol(model, pairs, max_clicks: int = 20) -> dict:
    """``promptseg evaluate``'s protocol (:func:`promptseg.evaluate.evaluate`) on (image, gt) pairs, per start.

    Returns {start: {"dice": mean Dice after the start prompt and each of ``max_clicks`` clicks,
    "noc85", "noc90": mean prompts to reach that IoU (start prompt = 1), "never_falls": whether the mean
    curve never decreases}} for starts click, box and squiggle.
    """
    from ..evaluate import evaluate

    cases = [(f"synthetic {i}", im, gt.astype(np.int32), None) for i, (im, gt) in enumerate(pairs)]
    out = {}
    for start in ("click", "box", "squiggle"):
        mean = evaluate(model, cases, start=start, max_clicks=max_clicks)["mean"]
        d = mean["dice"]
        out[start] = {"dice": [round(v, 4) for v in d], "noc85": mean["noc85"], "noc90": mean["noc90"],
                      "never_falls": bool(np.all(np.diff(d) >= -1e-9))}
    return out


def run(model, n_synthetic: int = 100, png: str | None = None) -> dict:
    """Evaluate ``model`` on held-out synthetic data and on coins; optionally draw coins predictions to ``png``."""
    t0 = time.perf_counter()
    pairs = synthetic_set(n_synthetic)
    syn = [evaluate_object(model, im, gt) for im, gt in pairs]
    im, lab = coins_labels()
    coins = [evaluate_object(model, im, lab == k) for k in range(1, lab.max() + 1)]
    report = {"synthetic": summarise(syn), "coins": summarise(coins),
              "synthetic_20_clicks": click_protocol(model, pairs),
              "coins_20_clicks": click_protocol(model, [(im, lab == k) for k in range(1, lab.max() + 1)]),
              "seconds": time.perf_counter() - t0}
    if png:
        _draw(im, lab, coins, png)
    return report


def _draw(im: np.ndarray, lab: np.ndarray, coins: list[dict], path: str) -> None:
    """Three panels: reference labels, 1-click masks (dot = click), box masks; per-coin Dice as text.

    Predictions are filled in colour; the reference outline is drawn in cyan on the prediction panels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    cmap = plt.get_cmap("tab20")
    for ax, key, title in zip(axes, (None, "click1", "box"), ("reference labels (watershed)", "1 click per coin", "box per coin")):
        ax.imshow(im, cmap="gray")
        ax.set_axis_off()
        for k, res in enumerate(coins, start=1):
            m = lab == k if key is None else res["masks"][key]
            rgba = np.zeros(m.shape + (4,))
            rgba[m] = (*cmap(k % 20)[:3], 0.45)
            ax.imshow(rgba)
            gt = lab == k
            if key:
                ax.contour(gt, [0.5], colors="c", linewidths=0.6)
            if key == "click1":
                r, c = innermost(gt)
                ax.plot(c, r, "r.", ms=6)
                ax.text(c, r - 4, f"{res['clicks'][0]:.2f}", color="yellow", fontsize=7, ha="center")
            elif key == "box":
                rows, cols = np.flatnonzero(gt.any(axis=1)), np.flatnonzero(gt.any(axis=0))
                ax.add_patch(plt.Rectangle((cols[0], rows[0]), cols[-1] - cols[0], rows[-1] - rows[0], fill=False, ec="w", lw=0.7))
                ax.text(cols[0], rows[0] - 2, f"{res['box']:.2f}", color="yellow", fontsize=7)
        if key:
            d = np.mean([r["clicks"][0] if key == "click1" else r["box"] for r in coins])
            title += f" (mean Dice {d:.3f})"
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":  # python -m promptseg.train.evaluate CHECKPOINT CONFIG [PNG]
    import sys

    import torch

    from .trainer import load_config

    torch.set_num_threads(1)
    ckpt, cfg_path = sys.argv[1], sys.argv[2]
    m = load_config(cfg_path)["model"]
    spec = ps.ModelSpec("eval_trained", m["arch"], "eval.pt", input_size=m["image_size"], arch_kwargs=m["arch_kwargs"],
                        pixel_mean=tuple(m["pixel_mean"]), pixel_std=tuple(m["pixel_std"]))
    ps.register_model(spec, overwrite=True)
    model = ps.load_model("eval_trained", checkpoint=ckpt, device="cpu")
    print(json.dumps(run(model, png=sys.argv[3] if len(sys.argv) > 3 else None), indent=2))
