"""One click's decoder on one torch thread and on torch's count, back to back and after a pause.

    python benchmarks/click_threads.py [--clicks 30]

The measurement behind ``PromptModel.click_threads``: ``PromptModel.decode`` with two points and
previous logits, on the default model's 16x16 grid and on SAM's 64x64 grid (ViT-B's decoder, random
weights: the decoder is the same for every SAM size). The clicks come back to back, 0.05 s apart and
0.5 s apart (a person's pace). Run it again with ``OMP_WAIT_POLICY=active`` in the environment (idle
threads spin instead of sleeping) to see how much of the gap waking a sleeping thread explains.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from segment_anything import sam_model_registry

import promptseg as ps
from promptseg.models.model import PromptModel


def time_decoder(model, n_threads, pause, clicks):
    """ms per ``decode`` call (median, p95) on ``n_threads``, ``pause`` s after the previous call."""
    model.click_threads = n_threads
    g = model.sam.prompt_encoder.image_embedding_size[0]
    feats = torch.randn(1, model.sam.prompt_encoder.embed_dim, g, g)
    prior = np.zeros((1, model.lowres_size, model.lowres_size), np.float32)
    xy, labels = np.array([[100.0, 120.0], [50.0, 60.0]]), np.array([1, 0])
    times = []
    for _ in range(clicks + 2):
        time.sleep(pause)
        t = time.perf_counter()
        model.decode(feats, xy, labels, None, prior, False)
        times.append(1e3 * (time.perf_counter() - t))
    times = np.array(times[2:])  # (the first calls build the fast decoder)
    return np.median(times), np.percentile(times, 95)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=30)
    args = ap.parse_args()
    torch.manual_seed(0)
    default = ps.load_model("default", device="cpu")
    sam_b = PromptModel(sam_model_registry["vit_b"]().eval(), default.spec, torch.device("cpu"))
    n = torch.get_num_threads()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    print(f"{'model (grid)':<20} {'threads':>8} {'pause s':>8} {'median ms':>10} {'p95 ms':>8}")
    for name, model in (("default (16x16)", default), ("SAM ViT-B (64x64)", sam_b)):
        for threads in sorted({1, n}):
            for pause in (0.0, 0.05, 0.5):
                med, p95 = time_decoder(model, threads, pause, args.clicks if pause < 0.5 else args.clicks // 3)
                print(f"{name:<20} {threads:>8} {pause:>8.2f} {med:>10.2f} {p95:>8.2f}")


if __name__ == "__main__":
    main()
