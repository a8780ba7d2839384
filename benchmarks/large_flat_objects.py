"""One click on large flat objects: the Session with the wide view (``promptseg.wide``) and without it.

    python benchmarks/large_flat_objects.py [--clicks 5] [--others 200] [--json OUT]

24 images (seeded): one ellipse of semi-axes 0.22–0.45 of the side, rotated, in a 256², 512² or 1024²
grey image; flat object and background drawn from 0–255 at least 60 apart (bright on dark or dark on
bright), Gaussian noise of std 4–20 and a light blur. The held-out sets of ``promptseg evaluate`` hold
few objects this large. The protocol of ``promptseg evaluate`` from a click (``--clicks`` correction
clicks), shipped model, one thread; once with the Session as shipped and once with ``wide.look``
replaced by a pass-through. Prints mean Dice after 1 / 2 / 3 prompts and NoC@90, and per image.

Then what the wide view costs elsewhere: the first click alone on ``--others`` generic scenes and as
many CT-/MRI-like slices from the held-out sets' generators with new seeds (30,000,000 and 40,000,000;
neither training nor held out), with and without the wide view: how many first masks it changes, and
their Dice before and after.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from scipy import ndimage as ndi

import promptseg as ps
from promptseg import wide
from promptseg.evaluate import evaluate, simulate
from promptseg.train import evaluate as te


def scene(i: int) -> tuple[np.ndarray, np.ndarray]:
    """Image i: uint8 (S, S) and its bool ellipse."""
    rng = np.random.default_rng(1000 + i)
    side = (256, 512, 1024)[i % 3]
    a, b = rng.uniform(0.22, 0.45, 2) * side
    t = rng.uniform(0, np.pi)
    cr, cc = side / 2 + rng.uniform(-0.05, 0.05, 2) * side
    rr, ccs = np.mgrid[:side, :side]
    u = (rr - cr) * np.cos(t) + (ccs - cc) * np.sin(t)
    v = -(rr - cr) * np.sin(t) + (ccs - cc) * np.cos(t)
    obj = (u / a) ** 2 + (v / b) ** 2 < 1
    fg = rng.uniform(0, 255)
    bg = rng.uniform(0, 255)
    while abs(fg - bg) < 60:
        bg = rng.uniform(0, 255)
    img = ndi.gaussian_filter(np.where(obj, fg, bg), 1.0) + rng.normal(0, rng.uniform(4, 20), obj.shape)
    return np.clip(img, 0, 255).astype(np.uint8), obj


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--others", type=int, default=200)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = ps.load_model("default", device="cpu")
    cases = []
    for i in range(24):
        image, truth = scene(i)
        cases.append((f"ellipse {i}", image, truth.astype(np.int32), None))
    look, out = wide.look, {}
    for label, fn in (("without the wide view", lambda session, k, state, rc: state), ("as shipped", look)):
        wide.look = fn
        out[label] = evaluate(model, cases, start="click", max_clicks=args.clicks)
    wide.look = look
    print("| Session | Dice after 1 / 2 / 3 prompts | NoC@90 | objects under Dice 0.5 after one click |")
    print("|---|---|---|---|")
    for label, rep in out.items():
        d = rep["mean"]["dice"]
        low = sum(o["dice"][0] < 0.5 for o in rep["objects"])
        print(f"| {label} | {d[0]:.3f} / {d[1]:.3f} / {d[2]:.3f} | {rep['mean']['noc90']:.2f} | "
              f"{low} of {len(cases)} |")
    print("\nper image, Dice after one click (without / as shipped):")
    for i, (a, b) in enumerate(zip(*(rep["objects"] for rep in out.values()))):
        side = cases[i][1].shape[0]
        print(f"  ellipse {i:2d} ({side}², {int(cases[i][2].sum())} px): {a['dice'][0]:.3f} / {b['dice'][0]:.3f}")
    others = te.synthetic_set(args.others, seed=30_000_000) + te.medical_set(args.others, 2, seed=40_000_000)
    changed = []
    for i, (image, truth) in enumerate(others):
        first = []
        for fn in (lambda session, k, state, rc: state, look):
            wide.look = fn
            first.append(simulate(model, image, np.asarray(truth, bool), start="click", max_clicks=0)["dice"][0])
        if abs(first[1] - first[0]) > 1e-9:
            changed.append((i, int(np.sum(truth)), *first))
    wide.look = look
    n = len(others)
    before, after = np.mean([c[2] for c in changed] or [0]), np.mean([c[3] for c in changed] or [0])
    print(f"\nother scenes: the wide view changed {len(changed)} of {n} first masks; mean one-click Dice "
          f"{before:.3f} -> {after:.3f} on those, {sum(c[3] - c[2] for c in changed) / n:+.4f} over all {n}")
    for i, area, a, b in changed:
        kind = "generic" if i < args.others else "CT/MRI-like"
        print(f"  {kind} scene {i % args.others} ({area} px): {a:.3f} -> {b:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ellipses": {k: {"mean": v["mean"], "first": [o["dice"][0] for o in v["objects"]]}
                                    for k, v in out.items()}, "others_changed": changed}, f)


if __name__ == "__main__":
    main()
