"""What the two feedback rules (``promptseg.feedback``) add to a prompt, next to the prompt itself.

    python benchmarks/feedback_cost.py [--repeats 20]

A disk of a quarter of the side's radius in a grey image of 256², 1024² and 2048² px (not tiled),
shipped model, zoom and edges on, a box on the disk; then ``Session.add_point`` for one correction
click (the reference: the whole prompt, feedback included), ``feedback.shown`` (the next prompt's
mask_input made from the mask shown), and ``feedback.guard`` on that click (the usual case: the click
stands) and on a forced collapse (the local edit is made). Median ms over the repeats, one thread.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace

import numpy as np
import torch

import promptseg as ps
from promptseg import feedback
from promptseg._state import pack


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats + 2):
        t = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t))
    return float(np.median(times[2:]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = ps.load_model("default", device="cpu")
    print(f"# {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, one thread")
    print("| image | add_point (whole prompt) | shown | guard, click stands | guard, local edit |")
    print("|---|---|---|---|---|")
    for side in (256, 1024, 2048):
        rr, cc = np.mgrid[:side, :side]
        disk = (rr - side / 2) ** 2 + (cc - side / 2) ** 2 < (side / 4) ** 2
        rng = np.random.default_rng(0)
        img = np.clip(np.where(disk, 170, 70) + rng.normal(0, 8, disk.shape), 0, 255).astype(np.uint8)
        s = ps.Session(model, img, tile_shape=None)  # (one embedding, so that the edge step runs)
        q = side // 4 - 2
        s.add_box((side // 2 - q, side // 2 - q), (side // 2 + q, side // 2 + q))  # (a box finds a large disk)
        before = s._states[0]
        click = (side // 2, side // 2 + side // 8)
        times = []
        for _ in range(args.repeats + 2):
            t = time.perf_counter()
            s.add_point(click)
            times.append(1e3 * (time.perf_counter() - t))
            s.undo()
        t_prompt = float(np.median(times[2:]))
        s.add_point(click)
        after = s._states[0]
        t_shown = median_ms(lambda: feedback.shown(s, after), args.repeats)
        t_stand = median_ms(lambda: feedback.guard(s, before, after), args.repeats)
        e = before.extent  # a collapse: a tenth of the mask's box at its top-left corner stays
        small = np.zeros((max(1, (e[1] - e[0]) // 10), max(1, (e[3] - e[2]) // 10)), bool)
        small[:] = True
        bits, extent = pack(small, (e[0], e[2]))
        collapsed = replace(after, bits=bits, extent=extent)
        assert feedback.guard(s, before, collapsed) is not collapsed
        t_edit = median_ms(lambda: feedback.guard(s, before, collapsed), args.repeats)
        print(f"| {side}² | {t_prompt:.1f} | {t_shown:.2f} | {t_stand:.2f} | {t_edit:.2f} |")


if __name__ == "__main__":
    main()
