"""Scale: volume embedding throughput and peak memory by depth; tiles embedded per click on a 20000² slide.

    python benchmarks/scale_memory.py [--depths 32 128 512] [--clicks 20] [--json out.json]

Part 1 — volumes of D slices of 512², uint16, stored as a zarr array on disk (never in RAM whole), embedded
with the shipped default model into a zarr cache by ``promptseg.embed``. Each depth runs in a fresh
subprocess, so its peak RSS (``ru_maxrss``) is its own; the input itself is D × 0.5 MiB, so a loader that
read it whole would grow with D.

Part 2 — the synthetic 20000 × 20000 RGB slide (lazy, computed tile by tile) with a lazy on-disk cache:
clicks on object centres, for each the number of tiles embedded by that click, the time of the click
(embedding included) and the time of a repeated click on the same object (tiles cached).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def volume_run(depth: int, folder: Path) -> dict:
    """In this process: make a D×512×512 zarr volume on disk, embed it, report time and peak RSS."""
    import zarr

    import promptseg as ps

    vol = zarr.open_array(str(folder / f"vol{depth}.zarr"), mode="w", shape=(depth, 512, 512), chunks=(1, 512, 512),
                          dtype="uint16")
    rng = np.random.default_rng(0)
    for z in range(depth):  # written slice by slice: the volume is never whole in memory here either
        vol[z] = (rng.random((512, 512)) * 4000).astype(np.uint16)
    model = ps.load_model("default")
    ps.embed(vol[:2], model)  # warm-up (model, threads) outside the timing
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    store = ps.embed(vol, model, cache=folder / f"emb{depth}.zarr", window=(0, 4000))
    dt = time.perf_counter() - t
    assert not store.missing()
    return {"depth": depth, "seconds": dt, "slices_per_s": depth / dt, "input_MiB": depth * 0.5,
            "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_MiB": rss_before}


def slide_clicks(n: int, folder: Path) -> dict:
    import promptseg as ps
    from promptseg.samples import SLIDE_SEED, SLIDE_SHAPE
    from promptseg.slide import SyntheticSlide

    slide = SyntheticSlide(SLIDE_SHAPE, seed=SLIDE_SEED)
    levels = slide.levels()
    model = ps.load_model("default")
    store = ps.embed(levels, model, cache=folder / "slide.zarr", lazy=True)
    s = ps.Session(model, levels, embeddings=store)
    rng = np.random.default_rng(1)
    picks = rng.choice(len(slide.objects), n, replace=False)
    rows, dice = [], []
    for i in picks:
        r, c = slide.objects[i][:2]
        before = store.n_slices - len(store.missing())
        t = time.perf_counter()
        s.add_point((r, c))
        first = time.perf_counter() - t
        tiles = store.n_slices - len(store.missing()) - before
        s.reset()
        t = time.perf_counter()
        s.add_point((r, c))
        again = time.perf_counter() - t
        box = (slice(max(int(r) - 300, 0), min(int(r) + 300, SLIDE_SHAPE[0])),
               slice(max(int(c) - 300, 0), min(int(c) + 300, SLIDE_SHAPE[1])))
        truth = slide.labels(box[0].start, box[0].stop, box[1].start, box[1].stop) == i + 1
        pred = np.asarray(s.mask[box])
        dice.append(2 * (pred & truth).sum() / max(pred.sum() + truth.sum(), 1))
        rows.append({"object": int(i), "tiles_embedded": tiles, "first_click_s": first, "cached_click_s": again})
        s.reset()
    return {"n_tiles": store.n_slices, "clicks": rows, "dice_mean": float(np.mean(dice)),
            "tiles_per_click_mean": float(np.mean([r["tiles_embedded"] for r in rows])),
            "tiles_per_click_max": int(max(r["tiles_embedded"] for r in rows)),
            "first_click_median_s": float(np.median([r["first_click_s"] for r in rows])),
            "cached_click_median_s": float(np.median([r["cached_click_s"] for r in rows])),
            "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[32, 128, 512])
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--json")
    ap.add_argument("--one-depth", type=int, help=argparse.SUPPRESS)  # the per-depth subprocess
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.one_depth:
            print(json.dumps(volume_run(args.one_depth, Path(tmp))))
            return
        vols = []
        for d in args.depths:
            out = subprocess.run([sys.executable, __file__, "--one-depth", str(d)], capture_output=True, text=True, check=True)
            vols.append(json.loads(out.stdout.strip().splitlines()[-1]))
            v = vols[-1]
            print(f"volume {d:4d}×512²: {v['slices_per_s']:.1f} slices/s, peak RSS {v['peak_rss_MiB']:.0f} MiB "
                  f"(input {v['input_MiB']:.0f} MiB)", flush=True)
        slide = slide_clicks(args.clicks, Path(tmp))
        print(f"slide 20000²: {slide['n_tiles']} tiles; per click {slide['tiles_per_click_mean']:.2f} tiles embedded "
              f"(max {slide['tiles_per_click_max']}), first click {slide['first_click_median_s'] * 1000:.0f} ms median, "
              f"cached {slide['cached_click_median_s'] * 1000:.0f} ms median, Dice {slide['dice_mean']:.3f}, "
              f"peak RSS {slide['peak_rss_MiB']:.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps({"volumes": vols, "slide": slide}, indent=1))


if __name__ == "__main__":
    main()
