"""Training of the edge refiner (:mod:`promptseg.models.edges`) on a trained model's own masks.

Everything but the refiner stays frozen, so the embeddings (and caches) and the decoder's behaviour are
unchanged. The data are the masks the model actually shows an annotator: the click protocol of
``promptseg evaluate`` (a click, box or squiggle start, then 20 correction clicks at the innermost pixel
of the larger error) run through a real :class:`promptseg.Session` on training draws of the held-out
sets' generators (other seeds: generic scenes, CT-/MRI-like slices and volumes). Each step of each
object is kept, cut to the object's box plus a margin. Training draws crops of ``crop`` pixels around
error or boundary pixels of those masks, flipped and transposed, and fits the refiner's logits to the
truth with binary cross-entropy. With ``rounds`` > 1 the data are collected again after each share of
the steps, with the refiner trained so far in the loop (its corrections move the later clicks), and
added to the earlier rounds'.

Config (TOML, one ``[edges]`` section): ``init`` (the trained model, a plain state dict), ``seed``,
``rounds``, ``generic`` / ``medical_2d`` / ``medical_3d`` (objects per round), ``steps``, ``batch_size``,
``crop``, ``lr``, ``weight_decay``, ``warmup_steps``, ``threads``, ``checkpoint_every``; the refiner's size
``width`` / ``inner`` / ``depth`` (see :class:`~promptseg.models.edges.EdgeRefiner`; 0 keeps the ``init``
refiner's, or 16 / 32 / 3 for a new one; a smaller ``init`` refiner is grown to the size given by
:func:`grow`, its output unchanged); ``click_weight`` (the loss on a pixel counts ``1 + click_weight x`` its
value in the click maps, so clicks are honoured); ``first_share`` (that share of the crops comes from each
record's first prompt, the mask a user meets first; 0: all prompts alike); ``propagation`` (so many of the
round's volumes are also recorded through ``Session.propagate()``, :func:`collect_propagation`). Run with
``promptseg train --config CONFIG -o OUT`` (or ``python -m promptseg.train.trainer CONFIG OUT MINUTES``).
"""

from __future__ import annotations

import json
import math
import pickle
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import read_section

DEFAULTS = {"init": "", "seed": 0, "rounds": 1, "generic": 300, "medical_2d": 240, "medical_3d": 30, "steps": 3000,
            "batch_size": 48, "crop": 64, "lr": 2e-3, "min_lr": 2e-5, "weight_decay": 1e-4, "warmup_steps": 100,
            "threads": 2, "checkpoint_every": 250, "width": 0, "inner": 0, "depth": 0, "click_weight": 0.0,
            "propagation": 0, "first_share": 0.0}
BOX_MARGIN = 40  # px kept around each object's box


def _with_margin(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(r0, r1, c0, c1), half-open: the box of a non-empty bool (H, W) mask plus BOX_MARGIN, within the plane."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return (max(0, rows[0] - BOX_MARGIN), min(mask.shape[0], rows[-1] + 1 + BOX_MARGIN),
            max(0, cols[0] - BOX_MARGIN), min(mask.shape[1], cols[-1] + 1 + BOX_MARGIN))


def collect(model, pairs, max_clicks: int = 20, rng_offset: int = 0) -> list[dict]:
    """The protocol's masks on (image, gt) pairs, starts cycling click / box / squiggle.

    Returns per object {"image": uint8 (h, w[, 3]) crop, "gt": bool (h, w), "box": (r0, c0, r1, c1) of a
    box start in the crop or None, "steps": [(packed mask bits, (N, 3) float points (row, col, positive)
    in the crop)]}, one step per prompt. The mask of a step is the one the refiner was given (the
    decoder's, after the zoom) when the model has a refiner, else the one shown.
    """
    from .._state import decoded_mask, points_of
    from ..evaluate import _largest_slice, simulate

    out = []
    for i, (image, gt) in enumerate(pairs):
        start = ("click", "box", "squiggle")[(i + rng_offset) % 3]
        k, gt2, im2 = (0, gt, image) if gt.ndim == 2 else ((z := _largest_slice(gt)), gt[z], image[z])
        rows, cols = np.flatnonzero(gt2.any(1)), np.flatnonzero(gt2.any(0))
        r0, r1, c0, c1 = _with_margin(gt2)
        steps = []

        def record(session, mask):  # (called within this iteration)
            st = session._states[k]  # the slice's clicks and its squiggles' points, as the Session gives them
            rc, flags = points_of(st)
            pts = np.concatenate([rc, flags[:, None]], axis=1)
            mask = decoded_mask(st, mask.shape)  # what the refiner was given, not what it made of it
            steps.append((np.packbits(mask[r0:r1, c0:c1]), pts.reshape(-1, 3) - (r0, c0, 0)))

        simulate(model, image, gt, start=start, max_clicks=max_clicks, on_prompt=record)
        box = (rows[0] - r0, cols[0] - c0, rows[-1] - r0, cols[-1] - c0) if start == "box" else None
        out.append({"image": im2[r0:r1, c0:c1], "gt": gt2[r0:r1, c0:c1], "box": box, "steps": steps})
    return out


def collect_propagation(model, pairs) -> list[dict]:
    """Records of 3D propagation on (volume uint8 (Z, H, W), gt bool (Z, H, W)) pairs, as :func:`collect`'s.

    A box on the object's largest slice, then ``Session.propagate()``; one record per propagated slice,
    holding what the refiner was given there: the decoder's mask, and the points of the positive squiggle
    that carried the object from the slice before (:mod:`promptseg.volume`).
    """
    from .._state import decoded_mask
    from ..evaluate import _largest_slice, squiggle
    from ..prompts import scribble_to_points
    from ..session import Session

    out = []
    for image, gt in pairs:
        z = _largest_slice(gt)
        rows, cols = np.flatnonzero(gt[z].any(1)), np.flatnonzero(gt[z].any(0))
        s = Session(model, image)
        s.add_box((z, rows[0], cols[0]), (z, rows[-1], cols[-1]))
        s.propagate()
        plane = gt.shape[1:]
        for j, st in sorted(s._states.items()):
            if j == z or st.unrefined is None:
                continue
            mask = decoded_mask(st, plane)
            before = decoded_mask(s._states[j - 1 if j > z else j + 1], plane)
            pts = scribble_to_points(squiggle(before)) if before.any() else np.zeros((0, 2))
            r0, r1, c0, c1 = _with_margin(mask | gt[j])
            pts = np.concatenate([pts - (r0, c0), np.ones((len(pts), 1))], axis=1)
            out.append({"image": image[j, r0:r1, c0:c1], "gt": gt[j, r0:r1, c0:c1], "box": None,
                        "steps": [(np.packbits(mask[r0:r1, c0:c1]), pts)]})
    return out


def _round_pairs(cfg: dict, r: int) -> list:
    from .evaluate import medical_set, synthetic_set

    base = 50_000_000 + 1_000_000 * (cfg["seed"] * 10 + r)  # never the held-out sets' seeds (1e7, 2e7)
    return (synthetic_set(cfg["generic"], seed=base) + medical_set(cfg["medical_2d"], 2, seed=base + 500_000)
            + medical_set(cfg["medical_3d"], 3, seed=base + 500_000))


def grow(old, width: int, inner: int, depth: int):
    """A refiner of the given size that computes exactly what ``old`` (a smaller EdgeRefiner) computes.

    ``old``'s weights fill the first channels; its channels read nothing from the new ones (zeros) and
    the output layer reads nothing from them, so the new channels (randomly initialised) change the
    output only once training has given them weight; added middle layers start at zero (identity).
    """
    from ..models.edges import EdgeRefiner

    new = EdgeRefiner(width, inner, depth)
    w0, i0, d0 = old.inp.out_channels, old.down.out_channels, len(old.mid)
    if w0 > width or i0 > inner or d0 > depth:
        raise ValueError(f"cannot grow a refiner of size {(w0, i0, d0)} to {(width, inner, depth)}")
    up_in = list(range(w0)) + [width + j for j in range(i0)]  # the old `up` inputs' places: (a, b) concatenated
    pairs = [(old.inp, new.inp, list(range(old.inp.in_channels))), (old.inp2, new.inp2, list(range(w0))),
             (old.down, new.down, list(range(w0))), (old.up, new.up, up_in), (old.out, new.out, list(range(w0)))]
    pairs += [(old.mid[j], new.mid[j], list(range(i0))) for j in range(d0)]
    with torch.no_grad():
        for layer in new.mid[d0:]:
            layer.weight.zero_()
            layer.bias.zero_()
        for a, b, cols in pairs:
            n = a.out_channels
            b.weight[:n] = 0
            b.weight[:n, cols] = a.weight
            b.bias[:n] = a.bias
        new.out.weight[:, w0:] = 0
    return new


def draw_crop(rng: np.random.Generator, rec: dict, size: int, click_weight: float = 0.0,
              first_share: float = 0.0) -> tuple:
    """One training crop: (input (7, s, s) float32, target (s, s) float32, weight (s, s) float32); the
    weight is ``1 + click_weight x`` the larger click map. With probability ``first_share`` the crop is
    of the record's first prompt, else of any prompt."""
    from ..models.edges import edge_inputs

    first = first_share > 0 and rng.random() < first_share  # (no extra draw when 0: old runs reproduce)
    bits, pts = rec["steps"][0 if first else rng.integers(len(rec["steps"]))]
    gt = rec["gt"]
    h, w = gt.shape
    m = np.unpackbits(bits, count=h * w).reshape(h, w).astype(bool)
    x = edge_inputs(rec["image"], m, pts[:, :2], pts[:, 2] > 0, rec.get("box"))[0].numpy()
    y, wt = gt.astype(np.float32), 1 + click_weight * x[4:6].max(axis=0)
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:  # a crop smaller than the training crop: pad, outside the mask, with no weight
        x = np.pad(x, ((0, 0), (0, ph), (0, pw)))
        x[3, h:, :], x[3, :, w:] = -1, -1
        y, wt = np.pad(y, ((0, ph), (0, pw))), np.pad(wt, ((0, ph), (0, pw)))
    where = np.argwhere(m != gt) if rng.random() < 0.5 else np.argwhere((m != np.roll(m, 1, 0)) | (m != np.roll(m, 1, 1)))
    cr, cc = where[rng.integers(len(where))] if len(where) else (rng.integers(h), rng.integers(w))
    H, W = y.shape
    r0 = int(np.clip(cr - size // 2 + rng.integers(-8, 9), 0, H - size))
    c0 = int(np.clip(cc - size // 2 + rng.integers(-8, 9), 0, W - size))
    x, y, wt = x[:, r0:r0 + size, c0:c0 + size], y[r0:r0 + size, c0:c0 + size], wt[r0:r0 + size, c0:c0 + size]
    if rng.random() < 0.5:
        x, y, wt = x[:, ::-1], y[::-1], wt[::-1]
    if rng.random() < 0.5:
        x, y, wt = x[:, :, ::-1], y[:, ::-1], wt[:, ::-1]
    if rng.random() < 0.5:
        x, y, wt = x.transpose(0, 2, 1), y.T, wt.T
    return np.ascontiguousarray(x), np.ascontiguousarray(y), np.ascontiguousarray(wt)


def train_edges(config_path, out_dir, resume: bool = True, max_minutes: float | None = None) -> Path:
    """Train the edge refiner of the config's ``init`` model; writes ``OUT/model_last.pt`` (the whole
    model, refiner included, a plain state dict), ``OUT/edges_state.pt`` (resume), ``OUT/data_round{r}.pkl``
    and ``OUT/log.jsonl``."""
    import promptseg as ps
    from tqdm import tqdm

    from ..io.writers import atomic_file
    from ..models.registry import ModelSpec, get_spec, register_model

    cfg = read_section(config_path, "edges", DEFAULTS)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    spec = get_spec("default")
    register_model(ModelSpec("edges_training", spec.arch, "edges.pt", input_size=spec.input_size,
                             arch_kwargs={**spec.arch_kwargs, "edges": True}, zoom=spec.zoom), overwrite=True)
    model = ps.load_model("edges_training", checkpoint=cfg["init"], device="cpu")
    old = model.sam.edge_refiner if model.has_edges else None
    now = (old.inp.out_channels, old.down.out_channels, len(old.mid)) if old is not None else (16, 32, 3)
    size = tuple(cfg[k] or n for k, n in zip(("width", "inner", "depth"), now))
    if old is None:  # the init model has no refiner yet: add an untrained one (it changes nothing)
        from ..models.edges import EdgeRefiner

        model.sam.edge_refiner = EdgeRefiner(*size)
    elif size != now:
        model.sam.edge_refiner = grow(old, *size)
    net = model.sam.edge_refiner
    opt = torch.optim.AdamW(net.parameters(), cfg["lr"], weight_decay=cfg["weight_decay"])
    step = 0
    if resume and (out / "edges_state.pt").is_file():
        state = torch.load(out / "edges_state.pt", weights_only=True)
        net.load_state_dict(state["refiner"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
    per_round = math.ceil(cfg["steps"] / cfg["rounds"])
    data: list = []
    t0 = time.monotonic()
    log = open(out / "log.jsonl", "a")

    def save():
        whole = {k: v.contiguous() for k, v in model.sam.state_dict().items()}
        atomic_file(out / "model_last.pt", ".pt", lambda tmp: torch.save(whole, tmp))
        state = {"refiner": net.state_dict(), "optimizer": opt.state_dict(), "step": step}
        atomic_file(out / "edges_state.pt", ".pt", lambda tmp: torch.save(state, tmp))

    bar = tqdm(total=cfg["steps"], initial=step, desc="edges", mininterval=5)
    while step < cfg["steps"]:
        r = step // per_round
        for q in range(r + 1):  # the rounds' data up to this one, made or read back
            if q < len(data):
                continue
            path = out / f"data_round{q}.pkl"
            if path.is_file():
                data.append(pickle.loads(path.read_bytes()))
                continue
            net.eval()
            pairs = _round_pairs(cfg, q)
            recs = collect(model, pairs, rng_offset=q)
            if cfg["propagation"]:  # some of the round's volumes once more, through propagate()
                recs += collect_propagation(model, [p for p in pairs if p[1].ndim == 3][: cfg["propagation"]])
            atomic_file(path, ".pkl", lambda tmp: Path(tmp).write_bytes(pickle.dumps(recs)))
            data.append(recs)
        pool = [rec for recs in data for rec in recs]
        net.train()
        rng = np.random.default_rng([cfg["seed"], step])
        frac = (step - cfg["warmup_steps"]) / max(1, cfg["steps"] - cfg["warmup_steps"])
        lr = cfg["lr"] * (step + 1) / cfg["warmup_steps"] if step < cfg["warmup_steps"] else (
            cfg["min_lr"] + 0.5 * (cfg["lr"] - cfg["min_lr"]) * (1 + math.cos(math.pi * min(1.0, frac))))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = [draw_crop(rng, pool[rng.integers(len(pool))], cfg["crop"], cfg["click_weight"], cfg["first_share"])
                 for _ in range(cfg["batch_size"])]
        x, y, wt = (torch.as_tensor(np.stack(v)) for v in zip(*batch))
        logits = net(x)[:, 0]
        loss = (F.binary_cross_entropy_with_logits(logits, y, reduction="none") * wt).sum() / wt.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        with torch.no_grad():
            inside = (wt > 0).float()  # (the error rates count every pixel of the crops once)
            before = float((((x[:, 3] > 0).float() != y).float() * inside).sum() / inside.sum())
            after = float((((logits > 0).float() != y).float() * inside).sum() / inside.sum())
        log.write(json.dumps({"step": step, "lr": lr, "loss": float(loss.detach()), "error_in": before, "error_out": after,
                              "minutes": (time.monotonic() - t0) / 60}) + "\n")
        out_of_time = max_minutes is not None and time.monotonic() - t0 > 60 * max_minutes
        if step % cfg["checkpoint_every"] == 0 or step == cfg["steps"] or out_of_time:
            log.flush()
            save()
        if out_of_time:
            break
    bar.close()
    log.close()
    net.eval()
    if not (out / "model_last.pt").is_file():
        save()
    return out / "model_last.pt"
