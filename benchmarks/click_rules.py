"""Where a correction click goes, and what that does to NoC: the three click rules on a validation set.

    python benchmarks/click_rules.py [--workers 2] [--starts click] [--out benchmarks/results/click_rules.txt]

The protocol of ``promptseg evaluate`` through the shipped Session, once per click rule
(:func:`promptseg.evaluate.next_click`: ``area``, ``ritm``, ``region``), on 172 objects drawn like the
held-out sets of ``python -m promptseg.train.evaluate`` but from other seeds (41,000,000-43,000,000:
100 generic scenes, 60 CT-/MRI-like slices, 12 volumes prompted on their largest slice), so that a
finding on the held-out sets can be checked on objects it was not made on. Pooled figures: Dice after
1 / 3 / 10 / 21 prompts, NoC@85, NoC@90, the share never reaching IoU 0.9, NoC@90 by object size, and
the largest fall of the mean curve.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

_W = {}
N = 172


def _start() -> None:
    import torch

    import promptseg as ps
    from promptseg.train.evaluate import medical_set, synthetic_set

    torch.set_num_threads(1)
    _W.update(model=ps.load_model("default"),
              pairs=synthetic_set(100, seed=41_000_000) + medical_set(60, 2, seed=42_000_000)
              + medical_set(12, 3, seed=43_000_000))


def _run(idx: list[int], start: str, rule: str) -> list[dict]:
    from promptseg.train.evaluate import _objects

    return _objects(_W["model"], [_W["pairs"][i] for i in idx], start, 20, {"click_rule": rule})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--starts", default="click")
    ap.add_argument("--out", default="benchmarks/results/click_rules.txt")
    args = ap.parse_args()
    from promptseg.evaluate import CLICK_RULES
    from promptseg.train.evaluate import summary

    lines = ["start | rule | Dice 1/3/10/21 | NoC@85 | NoC@90 | never 0.9 | NoC@90 <100 / 100-999 / >=1000 px "
             "| largest fall"]
    t = time.perf_counter()
    with ProcessPoolExecutor(args.workers, multiprocessing.get_context("spawn"), initializer=_start) as pool:
        for start in args.starts.split(","):
            for rule in CLICK_RULES:
                parts = [pool.submit(_run, list(range(j, N, args.workers)), start, rule)
                         for j in range(args.workers)]
                s = summary([o for p in parts for o in p.result()])
                d = s["dice"]
                fall = max([0.0] + [a - b for a, b in zip(d, d[1:])])
                bands = " / ".join("-" if v[1] is None else f"{v[1]:.1f}" for v in s["noc90_by_area"].values())
                lines.append(f"{start} | {rule} | {d[0]:.3f} / {d[2]:.3f} / {d[9]:.3f} / {d[20]:.3f} | "
                             f"{s['noc85']:.2f} | {s['noc90']:.2f} | {100 * s['never90']:.0f} % | {bands} | "
                             + ("never falls" if fall <= 1e-9 else f"{fall:.4f}"))
                print(lines[-1], flush=True)
    lines.append(f"({N} objects, seeds 41,000,000-43,000,000; {time.perf_counter() - t:.0f} s, {args.workers} processes "
                 "of one thread)")
    print(lines[-1])
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
