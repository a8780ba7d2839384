"""What the edge refiner costs per prompt, and what a whole prompt costs with it and without it.

    python benchmarks/edge_refiner.py [--checkpoint weights/promptseg_cnn_s.pt] [--repeats 20] [--scenes 30]

Part 1: ``PromptModel.refine_edges`` alone on square crops of 32-256 px (the Session's crop is the mask's
box plus 24 px; past ``promptseg.edges.MAX_PIXELS`` it is refined at a coarser scale, which the
table shows as well). Part 2: ``Session.add_point`` on a disk with a few correction clicks, edges on and
off, zoom on, in a 256² and a 1024² image; the ratio is the cost of the edge step inside a prompt.
Part 3: what honouring clicks (``PromptModel.honour_clicks``, :func:`promptseg.models.edges.honour`)
adds: ``promptseg evaluate``'s click protocol (one click, 20 corrections) on held-out generic scenes,
honouring off and on, ms per prompt. Everything on the shipped model's click thread count (one thread
on its 16x16 grid).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

import promptseg as ps
from promptseg.edges import MAX_PIXELS


def time_refiner(model, side: int, repeats: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    rr, cc = np.mgrid[:side, :side]
    mask = (rr - side / 2) ** 2 + (cc - side / 2) ** 2 < (side / 2 - 24) ** 2 if side > 60 else np.ones((side, side), bool)
    img = np.clip(np.where(mask, 170, 70) + rng.normal(0, 10, mask.shape), 0, 255).astype(np.uint8)
    out = {}
    for cap in (None, MAX_PIXELS):
        times = []
        for _ in range(repeats + 2):
            t = time.perf_counter()
            model.refine_edges(img, mask, np.array([[side / 2, side / 2]]), [True], max_pixels=cap)
            times.append(1e3 * (time.perf_counter() - t))
        out[cap] = float(np.median(times[2:]))
    return out[None], out[MAX_PIXELS]


def time_prompts(model, size: int, radius: float, repeats: int) -> dict:
    rng = np.random.default_rng(1)
    rr, cc = np.mgrid[:size, :size]
    disk = (rr - size / 2) ** 2 + (cc - size / 2) ** 2 < radius**2
    img = np.clip(np.where(disk, 180, 60) + rng.normal(0, 12, disk.shape), 0, 255).astype(np.uint8)
    c = size / 2
    clicks = [((c, c), True), ((c - radius * 0.9, c), True), ((c + radius * 1.1, c), False)]
    res = {}
    for edges in (False, True):
        times = []
        for rep in range(repeats):
            s = ps.Session(model, img, edges=edges)
            s._features(0)  # embed first: the prompt's own cost is timed
            for rc, positive in clicks:
                t = time.perf_counter()
                s.add_point(rc, positive)
                times.append(1e3 * (time.perf_counter() - t))
        res[edges] = float(np.median(times))
    return res


def time_protocol(model, n: int) -> dict:
    """Mean ms per prompt of the click protocol on each of ``n`` held-out generic scenes, honouring
    clicks off and on: {"off": [...], "on": [...]}."""
    from promptseg.evaluate import simulate
    from promptseg.train.evaluate import synthetic_set

    pairs, res = synthetic_set(n), {}
    for on in (False, True):
        model.honour_clicks = on
        res["on" if on else "off"] = [simulate(model, im, gt, start="click", max_clicks=20)["ms_per_prompt"]
                                      for im, gt in pairs]
    model.honour_clicks = True
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--scenes", type=int, default=30, help="held-out scenes for the click protocol (part 3)")
    args = ap.parse_args()
    model = ps.load_model("default", checkpoint=args.checkpoint, device="cpu")
    if not model.has_edges:
        raise SystemExit("this checkpoint has no edge refiner")
    print(f"# {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"click threads {1 if model.sam.prompt_encoder.image_embedding_size[0] <= 32 else 'torch'}")
    print("\n## refine_edges alone (median ms)\n\n| crop | full scale | as the Session runs it |\n|---|---|---|")
    for side in (32, 64, 96, 128, 192, 256):
        full, capped = time_refiner(model, side, args.repeats)
        print(f"| {side}² | {full:.1f} | {capped:.1f} |")
    print("\n## Session.add_point, zoom on (median ms per prompt over 3 clicks)\n")
    print("| image | disk radius | edges off | edges on | ratio |\n|---|---|---|---|---|")
    for size, radius in ((256, 12), (256, 40), (1024, 40), (1024, 150)):
        r = time_prompts(model, size, radius, max(3, args.repeats // 4))
        print(f"| {size}² | {radius} | {r[False]:.1f} | {r[True]:.1f} | {r[True] / r[False]:.2f} |")
    r = time_protocol(model, args.scenes)
    off, on = np.asarray(r["off"]), np.asarray(r["on"])
    print(f"\n## The click protocol on {len(off)} held-out generic scenes (ms per prompt, mean per scene)\n")
    print("| honouring clicks | mean | median scene | slowest scene |\n|---|---|---|---|")
    for name, t in (("off", off), ("on", on)):
        print(f"| {name} | {t.mean():.1f} | {np.median(t):.1f} | {t.max():.1f} |")
    print(f"\nratio of the means, on / off: {on.mean() / off.mean():.2f}")


if __name__ == "__main__":
    main()
