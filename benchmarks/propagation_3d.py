"""3D acceptance: one box on an object's middle slice, then propagation; 3D Dice and HD95 (mm).

    python benchmarks/propagation_3d.py [--model default] [--checkpoint PATH] [--json out.json]

Volumes: the bundled synthetic CT (`ct_lesions`, three low-contrast irregular lesions in a liver, spacing
2.5 x 0.8 x 0.8 mm), synthetic volumes with known 3D objects — an ellipsoid and an irregular blob, each
at high and at low contrast, with noise — and four CT-/MRI-like volumes of `promptseg.train.anatomy`
(seeds the training never drew; their largest object and their smallest one of >= 300 voxels). For
every object: a box at the bounds of its largest slice, `Session.propagate()`, then 3D Dice, HD95 and
MASD against the truth. `--zoom on|off` sets the Session's zoom windows (default: the model's own).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy import ndimage as ndi

import promptseg as ps
from promptseg.evaluate import dice, hd95, masd
from promptseg.samples import load_sample, sample_ground_truth


def synthetic(kind: str, contrast: float, seed: int, shape=(40, 160, 160)):
    """A volume (uint16) with one object of ``kind`` ('ellipsoid' | 'blob') and its mask."""
    rng = np.random.default_rng(seed)
    zz, rr, cc = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(np.float32)
    c = np.array(shape) / 2 + rng.uniform(-3, 3, 3)
    radii = np.array([9.0, 38.0, 30.0]) * rng.uniform(0.8, 1.2, 3)
    d = ((zz - c[0]) / radii[0]) ** 2 + ((rr - c[1]) / radii[1]) ** 2 + ((cc - c[2]) / radii[2]) ** 2
    if kind == "blob":
        d = d + 0.6 * ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 6) * 6
    mask = d <= 1
    base = 1000 + 200 * ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 8)
    vol = base + contrast * 400 * mask + rng.normal(0, 40, shape)
    return np.clip(vol, 0, 65535).astype(np.uint16), mask


def cases():
    vol, _ = load_sample("ct_lesions")
    gt = sample_ground_truth("ct_lesions")
    for label in range(1, int(gt.max()) + 1):
        yield f"ct_lesions #{label}", vol, gt == label, (2.5, 0.8, 0.8), {"modality": "ct"}
    for seed, (kind, (contrast, name)) in enumerate((k, c) for k in ("ellipsoid", "blob") for c in ((1.0, "high"), (0.3, "low"))):
        v, m = synthetic(kind, contrast, seed=seed)
        yield f"{kind}, {name} contrast", v, m, (2.0, 1.0, 1.0), {}
    from promptseg.train import anatomy

    for i, (kind, modality) in enumerate((("abdomen", "ct"), ("thorax", "ct"), ("head", "mri"), ("abdomen", "mri"))):
        raw, labels, spacing = anatomy.volume(np.random.default_rng([30_000_000, i]), (32, 160, 160), kind, modality)
        ids, sizes = np.unique(labels[labels > 0], return_counts=True)
        for j, k in enumerate(dict.fromkeys([ids[np.argmax(sizes)], ids[sizes >= 300][np.argmin(sizes[sizes >= 300])]])):
            yield f"{kind} {modality} #{j + 1}", raw, labels == k, spacing, {"modality": modality}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--checkpoint")
    ap.add_argument("--json")
    ap.add_argument("--zoom", choices=["auto", "on", "off"], default="auto")
    args = ap.parse_args()
    zoom = {"auto": None, "on": True, "off": False}[args.zoom]
    model = ps.load_model(args.model, checkpoint=args.checkpoint, device="cpu")
    rows = []
    for name, vol, mask, spacing, kw in cases():
        z = int(np.argmax(mask.reshape(len(mask), -1).sum(axis=1)))
        rows_, cols_ = np.flatnonzero(mask[z].any(axis=1)), np.flatnonzero(mask[z].any(axis=0))
        s = ps.Session(model, vol, zoom=zoom, **kw)
        t = time.perf_counter()
        s.add_box((z, rows_[0], cols_[0]), (z, rows_[-1], cols_[-1]))
        pred = s.propagate().mask
        secs = time.perf_counter() - t
        rows.append(dict(case=name, dice3d=dice(pred, mask), hd95_mm=hd95(pred, mask, spacing), masd_mm=masd(pred, mask, spacing),
                         dice_box_slice=dice(pred[z], mask[z]), slices_true=int(mask.any(axis=(1, 2)).sum()),
                         slices_pred=int(pred.any(axis=(1, 2)).sum()), seconds=secs))
    print(f"model {model.name}, zoom {args.zoom}; one box on the largest slice, then propagate()")
    print(f"{'case':<26} {'Dice 3D':>8} {'HD95 mm':>8} {'MASD mm':>8} {'Dice box slice':>15} {'slices pred/true':>17} {'s':>6}")
    for r in rows:
        print(f"{r['case']:<26} {r['dice3d']:>8.3f} {r['hd95_mm']:>8.2f} {r['masd_mm']:>8.2f} {r['dice_box_slice']:>15.3f} "
              f"{r['slices_pred']:>8}/{r['slices_true']:<8} {r['seconds']:>6.1f}")
    print(f"mean 3D Dice {np.mean([r['dice3d'] for r in rows]):.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
