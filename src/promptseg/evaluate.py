"""Metrics and the simulated-annotator protocol: the yardstick for every model.

Metrics take bool masks (2D or 3D, napari order) and, for distances, the pixel ``spacing`` per axis
(physical units, e.g. mm); Dice and IoU of two empty masks are 1.

Protocol (:func:`simulate`): a fresh :class:`promptseg.Session` gets a start prompt — one click at the
object's innermost pixel (distance-transform maximum), its exact bounding box, or a squiggle along its
long axis — and then up to ``max_clicks`` correction clicks, sent with ``Session.add_point`` so that the
previous prediction is fed back exactly as in interactive use. Each click goes to the innermost pixel of
the larger error, positive in a missed region, negative in a false one; which error is larger, the
``click_rule`` says (:func:`next_click`): ``"area"`` (the default), the one with more pixels;
``"ritm"``, the one whose innermost pixel lies deeper, as the clicker of RITM (Sofiiuk et al. 2022) and
the interactive-segmentation papers that reuse it place clicks; ``"region"``, the largest connected
error region. Once every error is a one-pixel sliver along the outline, the first two click the first
such pixel in raster order, often a stray one; the third clicks the middle of the longest sliver, as a
person would. A 3D object is evaluated on the slice where it is largest (until propagation is part of
the protocol).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two bool arrays of the same shape."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool arrays of the same shape."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a mask: its pixels with a background neighbour (face connectivity)."""
    return mask & ~ndi.binary_erosion(mask, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing=None) -> tuple[np.ndarray, np.ndarray]:
    """Distances (physical units) from each boundary pixel of ``a`` to ``b``'s boundary, and back.

    Returns two 1D float arrays; both empty if either mask is empty.
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    spacing = np.ones(a.ndim) if spacing is None else np.asarray(spacing, float)
    if not a.any() or not b.any():
        return np.zeros(0), np.zeros(0)
    sa, sb = _surface(a), _surface(b)
    to_b = ndi.distance_transform_edt(~sb, sampling=spacing)
    to_a = ndi.distance_transform_edt(~sa, sampling=spacing)
    return to_b[sa], to_a[sb]


def _summarise(a, b, spacing, reduce) -> float:
    """0 if both masks are empty, inf if one is, else ``reduce`` of the two directed distance sets."""
    if not np.any(a) and not np.any(b):
        return 0.0
    ab, ba = surface_distances(a, b, spacing)
    return float(reduce(ab, ba)) if len(ab) else float("inf")


def hd95(a: np.ndarray, b: np.ndarray, spacing=None) -> float:
    """95th percentile Hausdorff distance (symmetric); ``inf`` if exactly one mask is empty, 0 if both."""
    return _summarise(a, b, spacing, lambda ab, ba: max(np.percentile(ab, 95), np.percentile(ba, 95)))


def masd(a: np.ndarray, b: np.ndarray, spacing=None) -> float:
    """Mean average surface distance: the mean of the two directed mean distances."""
    return _summarise(a, b, spacing, lambda ab, ba: (ab.mean() + ba.mean()) / 2.0)


def inner_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (pixels) of each mask pixel to the nearest pixel outside it; image borders count
    as outside. float64 of the mask's shape, 0 outside the mask."""
    mask = np.asarray(mask, bool)
    out = np.zeros(mask.shape)
    if not mask.any():
        return out
    # only the mask's bounding box, padded by one outside pixel, matters: the nearest outside pixel of any
    # mask pixel lies no farther than that ring (exact, and far cheaper for small objects in big planes)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(mask))
    padded = np.pad(mask[box], 1)
    out[box] = ndi.distance_transform_edt(padded)[(slice(1, -1),) * padded.ndim]
    return out


def innermost(mask: np.ndarray) -> tuple[float, ...]:
    """Coordinates of the pixel of ``mask`` farthest from its boundary (image borders count as boundary)."""
    return _peak(inner_distance(mask))


def _peak(dist: np.ndarray) -> tuple[float, ...]:
    """Coordinates of the (first) maximum of an array."""
    return tuple(float(v) for v in np.unravel_index(int(np.argmax(dist)), dist.shape))


CLICK_RULES = ("area", "ritm", "region")


def _check_rule(rule: str) -> None:
    if rule not in CLICK_RULES:
        raise ValueError(f"unknown click rule {rule!r}: use one of {', '.join(CLICK_RULES)}")


def next_click(gt: np.ndarray, pred: np.ndarray, rule: str = "area") -> tuple[tuple[float, ...], bool] | None:
    """The simulated annotator's next click: the innermost pixel of the larger error.

    gt, pred : bool arrays of one shape. ``rule`` says which error is larger: ``"area"``, the one with
    more pixels (ties: the missed one); ``"ritm"``, the one whose innermost pixel is farther from its
    boundary (ties: the false one), as RITM's clicker decides; ``"region"``, the largest 8-connected
    missed or false region (ties: a missed one), clicked at its innermost pixel nearest its centroid.
    Returns ``((row, col), positive)`` — positive when the click goes to a missed region — or None when
    prediction and truth agree.
    """
    _check_rule(rule)
    missed, false = gt & ~pred, pred & ~gt
    if not missed.any() and not false.any():
        return None
    if rule == "area":
        positive = bool(missed.sum() >= false.sum())
        return innermost(missed if positive else false), positive
    if rule == "region":
        return _largest_region_click(missed, false)
    deep_missed, deep_false = inner_distance(missed), inner_distance(false)
    positive = bool(deep_missed.max() > deep_false.max())
    return _peak(deep_missed if positive else deep_false), positive


def _largest_region_click(missed: np.ndarray, false: np.ndarray) -> tuple[tuple[float, ...], bool]:
    """The ``"region"`` rule: the largest 8-connected error region (ties: a missed one) and its innermost
    pixel; of pixels equally deep (a one-pixel sliver), the one nearest the region's centroid."""
    best = None
    for positive, err in ((True, missed), (False, false)):
        labels, n = ndi.label(err, np.ones((3,) * err.ndim, bool))
        if n:
            sizes = np.bincount(labels.ravel())[1:]
            k = int(np.argmax(sizes)) + 1
            if best is None or sizes[k - 1] > best[0]:
                best = (sizes[k - 1], positive, labels == k)
    _, positive, region = best
    depth = inner_distance(region)
    pts = np.argwhere(depth >= depth.max() - 1e-9)
    centre = np.argwhere(region).mean(axis=0)
    pick = pts[int(np.argmin(((pts - centre) ** 2).sum(axis=1)))]
    return tuple(float(v) for v in pick), positive


def squiggle(mask: np.ndarray, n: int = 12) -> np.ndarray:
    """A stroke (n, 2) inside ``mask`` along its long axis through its innermost pixel, as a person draws."""
    rc = np.argwhere(mask).astype(float)
    dist = inner_distance(mask)
    centre = np.asarray(_peak(dist))  # innermost(mask), from the distances needed below anyway
    cov = np.cov((rc - rc.mean(axis=0)).T) if len(rc) > 2 else np.eye(2)
    axis = np.linalg.eigh(cov)[1][:, -1]
    inside = dist >= 1.5
    ends = []
    for sign in (-1, 1):
        t = 0.0
        while True:
            r, c = np.rint(centre + sign * (t + 1) * axis).astype(int)
            if not (0 <= r < mask.shape[0] and 0 <= c < mask.shape[1]) or not inside[r, c]:
                break
            t += 1
        ends.append(centre + sign * 0.8 * t * axis)
    return np.linspace(ends[0], ends[1], n)


def _largest_slice(gt: np.ndarray) -> int:
    return int(np.argmax(gt.reshape(len(gt), -1).sum(axis=1)))


def simulate(model, image, gt: np.ndarray, *, start: str = "click", max_clicks: int = 20, spacing=None,
             embeddings=None, on_prompt=None, click_rule: str = "area", **session_kwargs) -> dict:
    """Run the annotator protocol on one object (see the module docstring).

    Parameters
    ----------
    model : PromptModel.
    image : 2D (H, W[, 3]) or 3D (Z, H, W) array, as for :class:`promptseg.Session`.
    gt : bool mask of the object, the image's spatial shape.
    start : "click", "box" or "squiggle".
    max_clicks : correction clicks after the start prompt.
    click_rule : which error the next click corrects, "area", "ritm" or "region" (:func:`next_click`).
    spacing : pixel size per spatial axis for HD95 / MASD (default 1).
    on_prompt : called as ``on_prompt(session, mask)`` after each prompt, ``mask`` the bool (H, W) mask
        of the prompted slice (the edge refiner's training records the protocol's masks this way).

    Returns
    -------
    dict with ``dice`` and ``iou`` (lists: after the start prompt, then after each click; once the masks
    agree the last value is repeated), ``noc85`` / ``noc90`` (prompts needed to reach that IoU, the start
    prompt counting 1; ``max_clicks + 2`` if never), ``hd95`` and ``masd`` (final mask), ``ms_per_prompt``,
    and ``area``, the object's pixels on the prompted slice.
    """
    from .session import Session

    gt = np.asarray(gt, bool)
    s = Session(model, image, embeddings=embeddings, **session_kwargs)
    lead, gt2, sp2 = (), gt, spacing
    if gt.ndim == 3:
        z = _largest_slice(gt)
        lead, gt2 = (z,), gt[z]
        sp2 = None if spacing is None else tuple(spacing)[1:]
    if not gt2.any():
        raise ValueError("the ground-truth object is empty")
    _check_rule(click_rule)  # (before the image is embedded)
    from .embeddings import fill

    fill(s.store, s.embedder, [lead[0] if lead else 0])  # embed first: ms per prompt times the decoder path
    times = []

    def timed(fn, *args, **kw):
        t = time.perf_counter()
        pred = fn(*args, **kw)
        times.append(1e3 * (time.perf_counter() - t))
        mask = np.asarray(pred.mask[lead] if lead else pred.mask)
        if on_prompt is not None:
            on_prompt(s, mask)
        return mask

    if start == "click":
        mask = timed(s.add_point, lead + innermost(gt2))
    elif start == "box":
        rows, cols = np.flatnonzero(gt2.any(axis=1)), np.flatnonzero(gt2.any(axis=0))
        mask = timed(s.add_box, lead + (rows[0], cols[0]), lead + (rows[-1], cols[-1]))
    elif start == "squiggle":
        mask = timed(s.add_scribble, [lead + tuple(p) for p in squiggle(gt2)])
    else:
        raise ValueError(f"unknown start {start!r}: use click, box or squiggle")
    dices, ious = [dice(mask, gt2)], [iou(mask, gt2)]
    for _ in range(max_clicks):
        click = next_click(gt2, mask, click_rule)
        if click is None:
            dices.append(dices[-1])
            ious.append(ious[-1])
            continue
        mask = timed(s.add_point, lead + click[0], positive=click[1])
        dices.append(dice(mask, gt2))
        ious.append(iou(mask, gt2))

    def noc(thr):
        hit = [i for i, v in enumerate(ious) if v >= thr]
        return hit[0] + 1 if hit else max_clicks + 2

    return {"dice": dices, "iou": ious, "noc85": noc(0.85), "noc90": noc(0.90), "hd95": hd95(mask, gt2, sp2),
            "masd": masd(mask, gt2, sp2), "ms_per_prompt": float(np.mean(times)), "area": int(gt2.sum())}


def evaluate(model, cases, *, start: str = "click", max_clicks: int = 20, progress=None, click_rule: str = "area",
             **session_kwargs) -> dict:
    """Run :func:`simulate` on every object of every case.

    ``cases``: iterable of ``(name, image, labels, spacing)``, labels an int array (0 = background).
    Returns ``{"objects": [...per object...], "mean": {...}}`` with mean Dice/IoU per click, mean NoC,
    HD95, MASD and ms per prompt. ``click_rule`` goes to :func:`simulate`; ``session_kwargs``
    (``modality``, ``window``, ...) go to each Session.
    """
    objects = []
    for name, image, labels, spacing in cases:
        for label in [v for v in np.unique(labels) if v != 0]:
            r = simulate(model, image, labels == label, start=start, max_clicks=max_clicks, spacing=spacing,
                         click_rule=click_rule, **session_kwargs)
            objects.append({"case": name, "label": int(label), **r})
            if progress is not None:
                progress(len(objects))
    if not objects:
        raise ValueError("no objects to evaluate: every label image is empty")
    mean = {
        "dice": np.mean([o["dice"] for o in objects], axis=0).tolist(),
        "iou": np.mean([o["iou"] for o in objects], axis=0).tolist(),
        **{k: float(np.mean([o[k] for o in objects])) for k in ("noc85", "noc90", "ms_per_prompt")},
        **{k: float(np.median([o[k] for o in objects])) for k in ("hd95", "masd")},
    }
    return {"model": model.name, "start": start, "max_clicks": max_clicks, "click_rule": click_rule,
            "n_objects": len(objects),
            "objects": objects, "mean": mean}


def write_report(report: dict, json_path=None, png_path=None) -> None:
    """Save a report as JSON and/or a PNG plot of mean Dice against the number of prompts."""
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=1, default=float))
    if png_path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
        d = report["mean"]["dice"]
        ax.plot(range(1, len(d) + 1), d, marker="o", ms=3)
        ax.set_xlabel("prompts (start + correction clicks)")
        ax.set_ylabel("mean Dice")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.set_title(f"{report['model']}, {report['start']} start, {report['n_objects']} objects")
        fig.tight_layout()
        fig.savefig(png_path)
        plt.close(fig)
