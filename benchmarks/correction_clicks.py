"""What a correction click does, and what it could do: the shipped model on the held-out sets.

    python benchmarks/correction_clicks.py [--workers 2] [--click-rule area]
        [--out benchmarks/results/correction_clicks.txt]

Runs the click protocol of ``promptseg.train.evaluate`` (a first click at each object's innermost pixel,
then 20 correction clicks, the area rule unless ``--click-rule`` names another) through the Session as
shipped, on the 172 pooled held-out synthetic objects, and reports:

1. per correction click, by the depth of the error at the click (its distance-transform value, in px):
   how many clicks, the median size of the connected error region clicked, the share of that region
   the response fixed, the error pixels the response added elsewhere, the net change of the error;
2. a ceiling for local corrections: from the model's first-click masks, each protocol click flips its
   whole connected error region (it knows the truth), or the part of it within r px of the click, and
   nothing else; NoC@90 and the objects that never reach IoU 0.9 in 21 prompts.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy import ndimage as ndi

_W = {}


def _start() -> None:
    import torch

    import promptseg as ps
    from promptseg.train.evaluate import SYNTHETIC, heldout

    torch.set_num_threads(1)
    sets = heldout()
    _W.update(model=ps.load_model("default", device="cpu"), pairs=[p for name in SYNTHETIC for p in sets[name]])


def _plane(image, gt):
    """A 3D object's largest slice (the protocol prompts there); 2D as it is."""
    from promptseg.evaluate import _largest_slice

    if gt.ndim == 2:
        return image, gt
    z = _largest_slice(gt)
    return image[z], gt[z]


def _protocol(idx: list[int], rule: str = "area") -> tuple[list[dict], list[tuple]]:
    """Per correction click records, and each object's (gt, first-click mask)."""
    import promptseg as ps
    from promptseg.evaluate import inner_distance, innermost, next_click

    clicks, firsts = [], []
    for i in idx:
        image, gt = _plane(*_W["pairs"][i])
        s = ps.Session(_W["model"], image)
        mask = np.asarray(s.add_point(innermost(gt)).mask).copy()
        firsts.append((i, gt, mask))
        for k in range(20):
            click = next_click(gt, mask, rule)
            if click is None:
                break
            (r, c), positive = click
            err = (gt & ~mask) if positive else (mask & ~gt)
            labels, _ = ndi.label(err)
            region = labels == labels[int(r), int(c)]
            after = np.asarray(s.add_point((r, c), positive).mask).copy()
            wrong_before, wrong_after = mask != gt, after != gt
            clicks.append(dict(depth=float(inner_distance(err)[int(r), int(c)]), region=int(region.sum()),
                               fixed=int((region & ~wrong_after).sum()), added=int((wrong_after & ~wrong_before).sum()),
                               net=int(wrong_after.sum()) - int(wrong_before.sum())))
            mask = after
    return clicks, firsts


def flip_ceiling(gt: np.ndarray, mask: np.ndarray, radius: float | None, max_clicks: int = 20,
                 rule: str = "area") -> int:
    """NoC@90 when each protocol click flips its connected error region (within ``radius`` px of the
    click if given) and nothing else; ``max_clicks + 2`` if never. gt, mask: bool (H, W)."""
    from promptseg.evaluate import iou, next_click

    yy, xx = np.indices(gt.shape)
    for n in range(1, max_clicks + 2):
        if iou(mask, gt) >= 0.9:
            return n
        if n == max_clicks + 1:
            break
        (r, c), positive = next_click(gt, mask, rule)
        labels, _ = ndi.label((gt & ~mask) if positive else (mask & ~gt))
        region = labels == labels[int(r), int(c)]
        if radius is not None:
            region &= (yy - r) ** 2 + (xx - c) ** 2 <= radius ** 2
        mask = mask.copy()
        mask[region] = positive
    return max_clicks + 2


def main() -> None:
    from promptseg.evaluate import CLICK_RULES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--click-rule", default="area", choices=CLICK_RULES,
                    help="which error a correction click goes to (promptseg.evaluate.next_click)")
    ap.add_argument("--out", default="benchmarks/results/correction_clicks.txt")
    args = ap.parse_args()
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, ctx, initializer=_start) as pool:
        parts = list(pool.map(_protocol, [list(range(j, 172, args.workers)) for j in range(args.workers)],
                              [args.click_rule] * args.workers))
    clicks = [c for part, _ in parts for c in part]
    firsts = sorted((f for _, part in parts for f in part), key=lambda f: f[0])
    lines = [f"# python benchmarks/correction_clicks.py --workers {args.workers} --click-rule {args.click_rule}: the shipped "
             f"model, the click protocol ({args.click_rule} rule) on the {len(firsts)} pooled held-out synthetic objects; "
             f"{len(clicks)} correction clicks",
             "| depth of the error at the click | clicks | median size of the region clicked (px) | share of it fixed "
             "| error px added elsewhere (mean) | net change of the error (px, mean) |", "|---|---|---|---|---|---|"]
    for lo, hi, name in ((0, 1.5, "1 px"), (1.5, 2.5, "2 px"), (2.5, 4.5, "3-4 px"), (4.5, 8.5, "5-8 px"), (8.5, 1e9, "over 8 px")):
        sel = [c for c in clicks if lo <= c["depth"] < hi]
        if sel:
            lines.append(f"| {name} | {len(sel)} | {np.median([c['region'] for c in sel]):.0f} | "
                         f"{np.mean([c['fixed'] / c['region'] for c in sel]):.2f} | {np.mean([c['added'] for c in sel]):.1f} | "
                         f"{np.mean([c['net'] for c in sel]):.1f} |")
    lines += ["", "| each click flips (knowing the truth) | NoC@90 | never reach IoU 0.9 |", "|---|---|---|"]
    for radius in (None, 8, 4, 2):
        nocs = np.array([flip_ceiling(gt, m, radius, rule=args.click_rule) for _, gt, m in firsts])
        what = "its whole connected error region" if radius is None else f"that region within {radius} px of the click"
        lines.append(f"| {what} | {nocs.mean():.2f} | {(nocs == 22).sum()} of {len(nocs)} |")
    lines.append(f"\n({time.perf_counter() - t0:.0f} s)")
    text = "\n".join(lines)
    print(text)
    with open(args.out, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
