"""Where a training step's time goes: drawing images, the host-side episode work, the model.

A GPU speeds up the model's part only. The rest of a step — drawing the synthetic images (in
``data_workers`` processes when set), and in the main process the episodes' prompts, correction clicks
and targets, the prompt encoder's many small calls and the copies of each fed-back mask to the host — runs
on the CPU whatever the device, and bounds how many steps a short GPU lease can train.

    python benchmarks/train_step_cost.py [CONFIG] [--steps N] [--device cpu|cuda] [--threads T]

Reports, per step (median over N steps after one warm-up): the seconds to draw the batch in one process,
and the main process's time (a step as :func:`promptseg.train.trainer.step_loss` and the optimiser run
it) split by function (cProfile, cumulative) into the episodes' host-side work and the rest, which is
mostly the model's forward and backward. With ``--device cuda`` the model's part is the GPU's (plus
launch and synchronisation costs).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import numpy as np
import torch

from promptseg.train import trainer
from promptseg.train.episodes import draw_step

# functions whose cumulative time is the step's host-side episode work (see promptseg.train.episodes);
# with device_episodes, "correct", "feed_back" and "prompts" are promptseg.train.lockstep's batched ones
HOST = {
    "correct": "correction clicks and squiggles (distance transforms)",
    "first_input": "first mask inputs of zoom windows and propagation pairs",
    "_target": "loss targets",
    "feed_back": "fed-back masks (device_episodes)",
    "_feed_back": "fed-back masks (upsampled, copied to the host)",
    "embed_prompts": "prompt encoder, one call per episode and round",
    "prompts": "prompt encoder, one call per round (device_episodes)",
    "__init__": "first prompts (Episode; with device_episodes, packed as tensors)",
}


def _cum(stats: pstats.Stats, name: str, filename_part: str) -> float:
    """Cumulative seconds of the functions called ``name`` in files whose path contains ``filename_part``."""
    return sum(v[3] for (f, _, n), v in stats.stats.items() if n == name and filename_part in f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="configs/default_gpu.toml")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--episodes", choices=["host", "device"], default="host",
                    help="batched_episodes (host) or device_episodes (promptseg.train.lockstep)")
    ap.add_argument("--init", default="weights/promptseg_cnn_s.pt", help="weights to start from ('' for none)")
    ap.add_argument("--prompts", choices=["config", "main", "workers"], default="config",
                    help="draw the first prompts in the main process or with the images (prompts_in_workers)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = trainer.load_config(a.config)
    t = cfg["train"]
    sam = trainer.build_model(cfg)
    if a.init:
        state, _ = trainer._carry(sam, torch.load(a.init, map_location="cpu", weights_only=True))
        sam.load_state_dict(state)
    sam.to(a.device).train()
    opt = torch.optim.AdamW(sam.parameters(), lr=1e-6)
    cfg["train"].update(batched_episodes=True, device_episodes=a.episodes == "device")
    if a.prompts != "config":
        cfg["train"]["prompts_in_workers"] = a.prompts == "workers"
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    rows = []
    for step in range(a.steps + 1):
        rng = np.random.default_rng([t["seed"], step])
        t0 = time.perf_counter()
        batch = draw_step(rng, step, cfg)  # (with prompts_in_workers, the first prompts too)
        t_draw = time.perf_counter() - t0
        prof = cProfile.Profile()
        sync()
        t0 = time.perf_counter()
        prof.enable()
        loss = trainer.step_loss(sam, batch, rng, cfg, step, a.device)[0]  # as the trainer's step runs it
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        prof.disable()
        total = time.perf_counter() - t0
        st = pstats.Stats(prof)
        # (the prompt encoder is model work, but it runs once per episode and round: it is counted apart)
        host = {k: _cum(st, k, "promptseg/train") for k in HOST}
        rows.append((t_draw, total, total - sum(host.values()), host))
    keep = rows[1:]
    med = lambda xs: float(np.median(xs))  # noqa: E731
    print(f"config {a.config}: batch {t['batch_size']} images x {t['objects_per_image']} objects, "
          f"up to {cfg['prompts']['max_corrections']} corrections (p {cfg['prompts']['p_correct']}); "
          f"{a.episodes} episodes; first prompts drawn {'with the images' if t['prompts_in_workers'] else 'in the main process'}; "
          f"device {a.device}, {a.threads} thread(s); median of {len(keep)} steps")
    print(f"  drawing the batch in one process: {med([r[0] for r in keep]):.2f} s "
          f"({med([r[0] for r in keep]) / t['batch_size'] * 1000:.0f} ms per image)")
    print(f"  the step in the main process:     {med([r[1] for r in keep]):.2f} s")
    print(f"    the model (encoder, decoder, backward) and the rest: {med([r[2] for r in keep]):.2f} s")
    for k, what in HOST.items():
        if any(r[3][k] for r in keep):
            print(f"    {what}: {med([r[3][k] for r in keep]):.2f} s")


if __name__ == "__main__":
    main()
