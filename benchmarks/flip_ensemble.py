"""Would an ensemble over flipped copies of the image make the first click better? (Not shipped.)

    python benchmarks/flip_ensemble.py [--sets generic_2d,medical_2d,medical_3d,coins] [--json OUT]

On the held-out sets of ``promptseg.train.evaluate`` (shipped model, the Session as shipped), each
object's first click (the innermost pixel of the truth; a 3D object's largest slice as a 2D image) is
given to four Sessions: on the image as it is, flipped left-right, up-down, and both, the click flipped
with it. Their masks are flipped back and combined three ways: a pixel vote (in when at least 2 of the
4 masks hold it, or at least 3), and the medoid (the one mask with the highest mean Dice against the
other three). Prints the mean Dice per set of each flip, of each combination and of the best flip per
object (an oracle that knows the truth). A test-time ensemble costs four encoder and decoder passes.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import promptseg as ps
from promptseg.evaluate import _largest_slice, dice, innermost
from promptseg.train import evaluate as te

FLIPS = ("as is", "left-right", "up-down", "both")


def flip(a: np.ndarray, f: int) -> np.ndarray:
    """Flip the first two axes of ``a`` (H, W[, 3]) as FLIPS[f] says; its own inverse."""
    return np.ascontiguousarray(a[:: -1 if f & 2 else 1, :: -1 if f & 1 else 1])


def first_masks(model, image: np.ndarray, gt: np.ndarray) -> list[np.ndarray]:
    """The one-click masks of the four flips, each flipped back: bool (H, W) in the image's frame."""
    (r, c), (h, w) = innermost(gt), gt.shape
    out = []
    for f in range(4):
        click = (h - 1 - r if f & 2 else r, w - 1 - c if f & 1 else c)
        s = ps.Session(model, flip(image, f))
        out.append(flip(np.asarray(s.add_point(click, True).mask, bool), f))
    return out


def scores(masks: list[np.ndarray], gt: np.ndarray) -> list[float]:
    """Dice of: each flip (4), the 2-of-4 vote, the 3-of-4 vote, the medoid, the best flip."""
    flips = [dice(m, gt) for m in masks]
    votes = np.sum(masks, axis=0)
    agree = [np.mean([dice(masks[a], masks[b]) for b in range(4) if b != a]) for a in range(4)]
    return flips + [dice(votes >= 2, gt), dice(votes >= 3, gt), flips[int(np.argmax(agree))], max(flips)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="generic_2d,medical_2d,medical_3d,coins")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = ps.load_model("default", device="cpu")
    sets = te.heldout()
    rows = {}
    for name in args.sets.split(","):
        rows[name] = []
        for image, gt in sets[name]:
            gt = np.asarray(gt, bool)
            if gt.ndim == 3:  # the largest slice, as the protocol prompts a volume
                z = _largest_slice(gt)
                image, gt = image[z], gt[z]
            rows[name].append(scores(first_masks(model, image, gt), gt))
    synthetic = [k for k in ("generic_2d", "medical_2d", "medical_3d") if k in rows]
    if len(synthetic) > 1:
        rows["all_synthetic"] = sum((rows[k] for k in synthetic), [])
    print("| set | objects | " + " | ".join(FLIPS) + " | vote 2 of 4 | vote 3 of 4 | medoid | best flip |")
    print("|---|---|" + "---|" * 8)
    for name, r in rows.items():
        a = np.asarray(r).mean(axis=0)
        print(f"| {name} | {len(r)} | " + " | ".join(f"{v:.3f}" for v in a) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f)


if __name__ == "__main__":
    main()
