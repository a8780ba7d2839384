"""How far a better choice among the decoder's three first-click masks could take the first click.

    python benchmarks/first_click_oracle.py [--json OUT]

On the held-out sets of ``promptseg.train.evaluate`` (shipped model, the Session as shipped: zoom, edges,
wide view), each object gets its protocol's first click (the innermost pixel of the truth) four times:
with the full view's mask picked by the decoder's predicted IoU (as shipped), and with the pick forced
to each of SAM's three masks in turn; every later step (zoom window, wide view, edge refiner) runs as
usual on the forced pick. Prints the mean Dice per set of each, and of the best of the three per object
(an oracle that knows the truth: the most any rule choosing among the three could give).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import promptseg as ps
from promptseg.evaluate import simulate
from promptseg.train import evaluate as te


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = ps.load_model("default", device="cpu")
    decode, force = model.decode, {"pick": None, "seen": False}

    def forced(feats, xy, labels, box, prior, multi, strokes=None):
        low, iou = decode(feats, xy, labels, box, prior, multi, strokes)
        if multi and not force["seen"]:  # the full view's three masks (it runs first)
            force["seen"] = True
            if force["pick"] is not None:
                iou = np.where(np.arange(len(iou)) == force["pick"], 1.0, -1.0).astype(np.float32)
        return low, iou

    model.decode = forced
    rows = {}
    for name, pairs in te.heldout().items():
        rows[name] = []
        for image, gt in pairs:
            dices = []
            for pick in (None, 0, 1, 2):
                force.update(pick=pick, seen=False)
                dices.append(simulate(model, image, np.asarray(gt, bool), start="click", max_clicks=0)["dice"][0])
            rows[name].append(dices)
    rows["all_synthetic"] = sum((rows[k] for k in ("generic_2d", "medical_2d", "medical_3d")), [])
    print("| set | objects | as shipped | mask 0 | mask 1 | mask 2 | best of the three |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        a = np.asarray(r)
        print(f"| {name} | {len(a)} | {a[:, 0].mean():.3f} | {a[:, 1].mean():.3f} | {a[:, 2].mean():.3f} | "
              f"{a[:, 3].mean():.3f} | {a[:, 1:].max(axis=1).mean():.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f)


if __name__ == "__main__":
    main()
