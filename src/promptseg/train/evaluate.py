"""Evaluation of a trained model through the real inference path (:class:`promptseg.Session`).

Protocol: ``promptseg evaluate``'s (:func:`promptseg.evaluate.evaluate`): a start prompt — one click at
the object's innermost pixel, its exact bounding box, or a squiggle along its long axis — then 20
correction clicks, each at the innermost pixel of the larger error region (positive in a missed region,
negative in a false one), through ``Session.add_point`` so the previous logits are fed back. A 3D
object is prompted on its largest slice. Reported per set and start: mean Dice after each prompt, the
median after the first, NoC@85/90 (prompts to reach that IoU; 22 when never), whether the mean curve
never falls.

Held-out data (seeds never used in training):

* ``generic_2d``: 100 domain-randomised scenes of :mod:`.synthetic` (grey, H&E-like, fluorescence-like),
* ``medical_2d``: 60 CT- and MRI-like slices of :mod:`.anatomy` (abdomen, thorax, head),
* ``medical_3d``: 12 CT- and MRI-like volumes (24 x 160 x 160, slices 3 px apart),

one random object each (>= 30 pixels on its largest slice); CT in Hounsfield units and MRI are brought to
8 bits as the Session does with ``modality="ct"`` / ``"mri"``. And scikit-image's ``coins()``, labelled
with the watershed recipe of scikit-image's own coins tutorial (Sobel elevation map, markers at grey
< 30 and > 150, holes filled, objects < 100 px dropped; 24 coins).
"""

from __future__ import annotations

import json
import time
from functools import partial

import numpy as np

import promptseg as ps
from ..evaluate import dice, innermost, next_click  # the same protocol as `promptseg evaluate`
from ..preprocess import choose_intensity
from . import anatomy
from .synthetic import sample

STARTS = ("click", "box", "squiggle")


def evaluate_object(model, image: np.ndarray, gt: np.ndarray, n_clicks: int = 3, session_kwargs=None) -> dict:
    """Dice after each click (the protocol above) and with the bounding box, for one 2D object; with the
    masks of the first click and of the box, for drawing.

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
    masks["box"] = s.add_box((rows[0], cols[0]), (rows[-1], cols[-1])).mask.copy()  # (a view: copy it now)
    return {"clicks": scores, "box": dice(masks["box"], gt), "masks": masks}


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


def _pick(rng: np.random.Generator, labels: np.ndarray, min_area: int):
    """One random object with >= ``min_area`` pixels on its largest slice, as a bool mask, or None."""
    flat = labels.reshape(-1, *labels.shape[-2:]) if labels.ndim == 3 else labels[None]
    ids = [k for k in np.unique(labels) if k > 0 and max((sl == k).sum() for sl in flat) >= min_area]
    return labels == rng.choice(ids) if ids else None


def synthetic_set(n: int = 100, seed: int = 10_000_000, size: int = 256, min_area: int = 30):
    """``n`` held-out generic scenes (image uint8 (H, W, 3), gt bool (H, W)), one random object each."""
    out, i = [], 0
    while len(out) < n:
        rng = np.random.default_rng([seed, i])
        i += 1
        image, labels = sample(rng, size)
        ids, counts = np.unique(labels, return_counts=True)
        ok = ids[(ids > 0) & (counts >= min_area)]
        if len(ok):
            out.append((image, labels == rng.choice(ok)))
    return out


def medical_set(n: int, dims: int, seed: int = 20_000_000, min_area: int = 30):
    """``n`` held-out CT-/MRI-like slices (``dims=2``, 256 x 256) or volumes (``dims=3``, 24 x 160 x 160)
    as (image uint8, gt bool); half CT (soft-tissue window), half MRI (non-zero percentiles)."""
    out, i = [], 0
    while len(out) < n:
        rng = np.random.default_rng([seed + dims, i])
        modality = "ct" if i % 2 == 0 else "mri"
        i += 1
        shape = (256, 256) if dims == 2 else (24, 160, 160)
        tissue, labels = anatomy.scene(rng, shape, z_step=3.0)
        raw = (anatomy.render_ct if modality == "ct" else anatomy.render_mri)(rng, tissue, 3.0)
        gt = _pick(rng, labels, min_area)
        if gt is not None:
            image = choose_intensity(raw, rgb=False, modality=modality).apply(raw)[..., 0]
            out.append((image, gt))
    return out


def click_protocol(model, pairs, max_clicks: int = 20, **session_kwargs) -> dict:
    """The protocol (module docstring) on (image, gt) pairs, per start: {start: {"dice": mean Dice after
    the start prompt and each click, "median_first", "noc85", "noc90", "never_falls"}}."""
    return {start: summary(_objects(model, pairs, start, max_clicks, session_kwargs)) for start in STARTS}


def _objects(model, pairs, start: str, max_clicks: int, session_kwargs: dict) -> list[dict]:
    """Per-object results of :func:`promptseg.evaluate.evaluate` from one start, in the order of ``pairs``."""
    from ..evaluate import evaluate

    cases = [(f"case {i}", im, gt.astype(np.int32), None) for i, (im, gt) in enumerate(pairs)]
    return evaluate(model, cases, start=start, max_clicks=max_clicks, **session_kwargs)["objects"]


def summary(objects: list[dict]) -> dict:
    """One start's figures over its objects (see :func:`click_protocol`)."""
    d = np.mean([o["dice"] for o in objects], axis=0).tolist()
    return {"dice": [round(v, 4) for v in d], "median_first": float(np.median([o["dice"][0] for o in objects])),
            **{k: float(np.mean([o[k] for o in objects])) for k in ("noc85", "noc90")},
            "never_falls": bool(np.all(np.diff(d) >= -1e-9)),
            "ms_per_prompt": float(np.mean([o["ms_per_prompt"] for o in objects]))}


_WORKER = {}  # per worker process of run(workers=N): the model and the held-out sets, made once


def _start_worker(load, session_kwargs: dict, counts: tuple) -> None:
    import torch

    torch.set_num_threads(1)
    _WORKER.update(model=load(), sets=heldout(*counts), kwargs=session_kwargs)


def _work(name: str, start: str, idx: list[int]) -> list[dict]:
    pairs = [_WORKER["sets"][name][i] for i in idx]
    return [{k: o[k] for k in ("dice", "noc85", "noc90", "ms_per_prompt")}
            for o in _objects(_WORKER["model"], pairs, start, 20, _WORKER["kwargs"])]


def _run_parallel(load, workers: int, sets: dict, counts: tuple, session_kwargs: dict) -> dict:
    """:func:`run`'s per-set reports with the objects shared among ``workers`` processes, each loading the
    model with ``load()`` (a picklable callable): the same figures as one process gives."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    jobs = {(name, start, j): list(range(j, len(pairs), workers))
            for name, pairs in sets.items() for start in STARTS for j in range(min(workers, len(pairs)))}
    ctx = multiprocessing.get_context("spawn")  # a fork of a process that has run torch can hang
    with ProcessPoolExecutor(workers, ctx, initializer=_start_worker, initargs=(load, session_kwargs, counts)) as pool:
        done = {key: pool.submit(_work, key[0], key[1], idx) for key, idx in jobs.items()}
        results = {key: f.result() for key, f in done.items()}
    report = {}
    for name, pairs in sets.items():
        report[name] = {}
        for start in STARTS:
            objs = [None] * len(pairs)
            for key, idx in jobs.items():
                if key[:2] == (name, start):
                    for i, o in zip(idx, results[key]):
                        objs[i] = o
            report[name][start] = summary(objs)
    return report


def heldout(n_generic: int = 100, n_medical_2d: int = 60, n_medical_3d: int = 12) -> dict:
    """The held-out sets by name: {name: [(image, gt), ...]} (see the module docstring)."""
    im, lab = coins_labels()
    return {"generic_2d": synthetic_set(n_generic), "medical_2d": medical_set(n_medical_2d, 2),
            "medical_3d": medical_set(n_medical_3d, 3), "coins": [(im, lab == k) for k in range(1, lab.max() + 1)]}


def run(model, png: str | None = None, workers: int = 1, load=None, counts: tuple = (100, 60, 12),
        **session_kwargs) -> dict:
    """The protocol on every held-out set (``counts``: the generic, CT-/MRI-like 2D and 3D sets' sizes), plus
    the synthetic sets pooled (``all_synthetic``); optionally draw the coins' one-click and box masks to
    ``png``. With ``workers`` > 1 the objects are shared among that many processes, each loading the model
    with ``load()`` (a picklable callable; ``model`` is then needed only for ``png``)."""
    t0 = time.perf_counter()
    sets = heldout(*counts)
    if workers > 1:
        report = _run_parallel(load, workers, sets, counts, session_kwargs)
    else:
        report = {name: click_protocol(model, pairs, **session_kwargs) for name, pairs in sets.items()}
    n = {name: len(sets[name]) for name in ("generic_2d", "medical_2d", "medical_3d")}
    report["all_synthetic"] = {start: {
        key: (np.sum([np.asarray(report[k][start][key]) * n[k] for k in n], axis=0) / sum(n.values())).round(4).tolist()
        for key in ("dice", "noc85", "noc90")} for start in STARTS}
    for start in STARTS:
        report["all_synthetic"][start]["never_falls"] = bool(np.all(np.diff(report["all_synthetic"][start]["dice"]) >= -1e-9))
    report["seconds"] = time.perf_counter() - t0
    if png:
        im, lab = coins_labels()
        _draw(im, lab, [evaluate_object(model, im, lab == k, session_kwargs=session_kwargs) for k in range(1, lab.max() + 1)], png)
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


def _load(spec: dict, checkpoint: str, honour: bool):
    """The model a :class:`promptseg.ModelSpec` (as a dict) and a checkpoint give, on the CPU."""
    ps.register_model(ps.ModelSpec(**spec), overwrite=True)
    model = ps.load_model(spec["name"], checkpoint=checkpoint, device="cpu")
    model.honour_clicks = honour
    return model


if __name__ == "__main__":  # python -m promptseg.train.evaluate CHECKPOINT CONFIG [--zoom off] [--edges off] [--honour off] [--png P] [--json J] [--workers N]
    import argparse

    import torch

    from .trainer import load_config

    ap = argparse.ArgumentParser(description="evaluate a trained checkpoint on the held-out sets")
    ap.add_argument("checkpoint")
    ap.add_argument("config")
    ap.add_argument("--zoom", choices=["on", "off"], default="on", help="the Session's zoom windows (default on)")
    ap.add_argument("--edges", choices=["on", "off"], default="on", help="the Session's edge refiner, when the model has one")
    ap.add_argument("--honour", choices=["on", "off"], default="on",
                    help="the refiner honours every click (PromptModel.honour_clicks; default on)")
    ap.add_argument("--png", help="draw the coins' one-click and box masks here")
    ap.add_argument("--json", help="write the report here as well")
    ap.add_argument("--workers", type=int, default=1, help="processes sharing the objects (one thread each)")
    ap.add_argument("--counts", default="100,60,12", help="sizes of the generic, CT-/MRI-like 2D and 3D sets")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from ..models.registry import get_spec
    from . import fine_tuning

    if fine_tuning(args.config):  # a fine-tuning of the shipped model
        d = get_spec("default")
        m = {"arch": d.arch, "image_size": d.input_size, "arch_kwargs": d.arch_kwargs, "pixel_mean": d.pixel_mean,
             "pixel_std": d.pixel_std}
    else:
        m = load_config(args.config)["model"]
    # (a checkpoint without an edge refiner loads without one)
    spec = dict(name="eval_trained", arch=m["arch"], filename="eval.pt", input_size=m["image_size"],
                arch_kwargs={**m["arch_kwargs"], "edges": True}, pixel_mean=tuple(m["pixel_mean"]),
                pixel_std=tuple(m["pixel_std"]), zoom=args.zoom == "on")
    load = partial(_load, spec, args.checkpoint, args.honour == "on")
    model = load() if args.workers <= 1 or args.png else None
    counts = tuple(int(v) for v in args.counts.split(","))
    report = run(model, png=args.png, workers=args.workers, load=load, counts=counts, edges=args.edges == "on")
    text = json.dumps(report, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    print(text)
