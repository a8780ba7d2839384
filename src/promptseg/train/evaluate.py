"""Evaluation of a trained model through the real inference path (:class:`promptseg.Session`).

Protocol: ``promptseg evaluate``'s (:func:`promptseg.evaluate.evaluate`): a start prompt — one click at
the object's innermost pixel, its exact bounding box, or a squiggle along its long axis — then 20
correction clicks, each at the innermost pixel of the larger error (positive in a missed region,
negative in a false one; ``--click-rule`` says which is larger), through ``Session.add_point`` so the
previous prediction is fed back. A 3D object is prompted on its largest slice. Reported per set and
start: mean Dice after each prompt, the median after the first, NoC@85/90 (prompts to reach that IoU;
22 when never), the share that never reaches IoU 0.9, NoC@90 by object size, whether the mean curve
never falls; ``--objects`` writes every object's record.

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
from ..evaluate import CLICK_RULES, dice, innermost, next_click  # the same protocol as `promptseg evaluate`
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


_KEEP = ("dice", "noc85", "noc90", "ms_per_prompt", "area")  # what an object's record keeps


def _objects(model, pairs, start: str, max_clicks: int, kwargs: dict) -> list[dict]:
    """Per-object results of :func:`promptseg.evaluate.evaluate` from one start, in the order of ``pairs``
    (``kwargs``: its ``click_rule`` and the Session's keywords)."""
    from ..evaluate import evaluate

    cases = [(f"case {i}", im, gt.astype(np.int32), None) for i, (im, gt) in enumerate(pairs)]
    return [{k: o[k] for k in _KEEP} for o in evaluate(model, cases, start=start, max_clicks=max_clicks, **kwargs)["objects"]]


AREAS = ((0, 100, "under 100 px"), (100, 1000, "100-999 px"), (1000, None, "1000 px and more"))


def summary(objects: list[dict]) -> dict:
    """One start's figures over its objects: mean Dice after each prompt, the median after the first,
    mean NoC@85/90, ``never90`` (the share of objects that never reach IoU 0.9), ``noc90_by_area`` ({band
    of :data:`AREAS`: [objects, their mean NoC@90]}, the area on the prompted slice), whether the mean
    curve never falls, ms per prompt."""
    d = np.mean([o["dice"] for o in objects], axis=0).tolist()
    noc90 = np.array([o["noc90"] for o in objects], float)
    area = np.array([o["area"] for o in objects])
    bands = {}
    for lo, hi, name in AREAS:
        m = (area >= lo) & (area < (hi or np.inf))
        bands[name] = [int(m.sum()), round(float(noc90[m].mean()), 2) if m.any() else None]
    return {"dice": [round(v, 4) for v in d], "median_first": float(np.median([o["dice"][0] for o in objects])),
            **{k: float(np.mean([o[k] for o in objects])) for k in ("noc85", "noc90")},
            "never90": round(float(np.mean(noc90 == len(d) + 1)), 4), "noc90_by_area": bands,
            "never_falls": bool(np.all(np.diff(d) >= -1e-9)),
            "ms_per_prompt": float(np.mean([o["ms_per_prompt"] for o in objects]))}


_WORKER = {}  # per worker process of run(workers=N): the model and the held-out sets, made once


def _start_worker(load, kwargs: dict, counts: tuple) -> None:
    import torch

    torch.set_num_threads(1)
    _WORKER.update(model=load(), sets=heldout(*counts), kwargs=kwargs)


def _work(name: str, start: str, idx: list[int]) -> list[dict]:
    pairs = [_WORKER["sets"][name][i] for i in idx]
    return _objects(_WORKER["model"], pairs, start, 20, _WORKER["kwargs"])


def _run_parallel(load, workers: int, sets: dict, counts: tuple, kwargs: dict) -> dict:
    """{set: {start: per-object records}} with the objects shared among ``workers`` processes, each
    loading the model with ``load()`` (a picklable callable): the same records as one process gives."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    jobs = {(name, start, j): list(range(j, len(pairs), workers))
            for name, pairs in sets.items() for start in STARTS for j in range(min(workers, len(pairs)))}
    ctx = multiprocessing.get_context("spawn")  # a fork of a process that has run torch can hang
    with ProcessPoolExecutor(workers, ctx, initializer=_start_worker, initargs=(load, kwargs, counts)) as pool:
        done = {key: pool.submit(_work, key[0], key[1], idx) for key, idx in jobs.items()}
        results = {key: f.result() for key, f in done.items()}
    records = {name: {start: [None] * len(pairs) for start in STARTS} for name, pairs in sets.items()}
    for key, idx in jobs.items():
        for i, o in zip(idx, results[key]):
            records[key[0]][key[1]][i] = o
    return records


def heldout(n_generic: int = 100, n_medical_2d: int = 60, n_medical_3d: int = 12) -> dict:
    """The held-out sets by name: {name: [(image, gt), ...]} (see the module docstring)."""
    im, lab = coins_labels()
    return {"generic_2d": synthetic_set(n_generic), "medical_2d": medical_set(n_medical_2d, 2),
            "medical_3d": medical_set(n_medical_3d, 3), "coins": [(im, lab == k) for k in range(1, lab.max() + 1)]}


SYNTHETIC = ("generic_2d", "medical_2d", "medical_3d")  # pooled as "all_synthetic"


def run(model, png: str | None = None, workers: int = 1, load=None, counts: tuple = (100, 60, 12),
        click_rule: str = "area", objects: dict | None = None, **session_kwargs) -> dict:
    """The protocol on every held-out set (``counts``: the generic, CT-/MRI-like 2D and 3D sets' sizes), plus
    the synthetic sets pooled (``all_synthetic``); optionally draw the coins' one-click and box masks to
    ``png``. With ``workers`` > 1 the objects are shared among that many processes, each loading the model
    with ``load()`` (a picklable callable; ``model`` is then needed only for ``png``). ``click_rule``: see
    :func:`promptseg.evaluate.next_click`. A dict given as ``objects`` receives the per-object records,
    {set: {start: [{"dice", "noc85", "noc90", "ms_per_prompt", "area"}, ...]}}."""
    t0 = time.perf_counter()
    sets = heldout(*counts)
    kwargs = dict(session_kwargs, click_rule=click_rule)
    if workers > 1:
        records = _run_parallel(load, workers, sets, counts, kwargs)
    else:
        records = {name: {start: _objects(model, pairs, start, 20, kwargs) for start in STARTS}
                   for name, pairs in sets.items()}
    records["all_synthetic"] = {start: [o for name in SYNTHETIC for o in records[name][start]] for start in STARTS}
    report = {name: {start: summary(objs) for start, objs in per.items()} for name, per in records.items()}
    report["click_rule"] = click_rule
    report["seconds"] = time.perf_counter() - t0
    if objects is not None:
        objects.update({name: per for name, per in records.items() if name != "all_synthetic"})
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


if __name__ == "__main__":  # python -m promptseg.train.evaluate CHECKPOINT CONFIG [--workers N] [--json J] [--objects O] ...
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
    ap.add_argument("--objects", help="write every object's record here (JSON: set, start, index -> Dice per prompt, NoC, area)")
    ap.add_argument("--click-rule", choices=list(CLICK_RULES), default="area",
                    help="which error a correction click goes to (promptseg.evaluate.next_click; default area)")
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
    records = {}
    report = run(model, png=args.png, workers=args.workers, load=load, counts=counts, click_rule=args.click_rule,
                 objects=records, edges=args.edges == "on")
    text = json.dumps(report, indent=1)
    if args.objects:
        for per in records.values():
            for objs in per.values():
                for o in objs:
                    o.update(dice=[round(v, 4) for v in o["dice"]], ms_per_prompt=round(o["ms_per_prompt"], 1))
        with open(args.objects, "w") as f:
            json.dump(records, f)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    print(text)
