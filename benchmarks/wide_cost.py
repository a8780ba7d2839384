"""What the wide view (``promptseg.wide``) adds to a first click, next to the click without it.

    python benchmarks/wide_cost.py [--repeats 10]

Grey images of 256², 1024² and 2048² px (not tiled), shipped model, zoom and edges on, one click at the
centre of a bright disk (200 on 40, noise 8) of a fifth of the side's radius (the full view finds it:
only the flatness test runs) and of two fifths (a blob inside it: the wide view is encoded and decoded).
Each first click is timed with the wide step (the Session as shipped) and without it (``wide.look``
replaced by a pass-through: the reference), its undo untimed; the wide view's embedding is dropped from
the Session's cache before each click, as a new image would have it. Median ms, one thread; Dice of
each mask against the disk; and ``wide.decode`` alone (the wide view's encoder and decoder pass).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

import promptseg as ps
from promptseg import wide
from promptseg.evaluate import dice


def first_click_ms(s, rc, repeats: int) -> tuple[float, float]:
    times, d = [], 0.0
    for _ in range(repeats + 1):
        s._zoom_cache.clear()
        t = time.perf_counter()
        mask = s.add_point(rc).mask
        times.append(1e3 * (time.perf_counter() - t))
        d = dice(mask, s.truth)
        s.undo()
    return float(np.median(times[1:])), d


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = ps.load_model("default", device="cpu")
    look = wide.look
    print(f"# {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, one thread")
    print("| image | disk radius | without the wide step: ms, Dice | with it: ms, Dice | ratio "
          "| wide.decode alone, ms |")
    print("|---|---|---|---|---|---|")
    for side in (256, 1024, 2048):
        for frac in (0.2, 0.4):
            rr, cc = np.mgrid[:side, :side]
            disk = (rr - side / 2) ** 2 + (cc - side / 2) ** 2 < (frac * side) ** 2
            img = np.clip(np.where(disk, 200, 40) + np.random.default_rng(0).normal(0, 8, disk.shape), 0, 255)
            s = ps.Session(model, img.astype(np.uint8), tile_shape=None)
            s.truth = disk
            rc = (side // 2, side // 2)
            s.add_point(rc)  # (embeds the image once, outside the timing)
            s.undo()
            wide.look = lambda session, k, state, rc: state
            t0, d0 = first_click_ms(s, rc, args.repeats)
            wide.look = look
            t1, d1 = first_click_ms(s, rc, args.repeats)
            times = []
            for _ in range(args.repeats):
                s._zoom_cache.clear()
                t = time.perf_counter()
                wide.decode(s, 0, np.array(rc, float))
                times.append(1e3 * (time.perf_counter() - t))
            print(f"| {side}² | {frac:.1f} × side | {t0:.1f}, {d0:.3f} | {t1:.1f}, {d1:.3f} | {t1 / t0:.2f} | "
                  f"{np.median(times):.1f} |")


if __name__ == "__main__":
    main()
