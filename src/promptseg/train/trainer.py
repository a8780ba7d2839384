"""The training loop: synthetic images, simulated interactive prompting, focal + dice + IoU loss.

Each step draws ``batch_size`` images (:mod:`.draws`), embeds them once, and for
``objects_per_image`` objects of each runs an interactive episode the way :class:`promptseg.Session`
prompts the model: a first prompt (one click, a box or a squiggle's points), then with probability
``p_correct`` one or two correction rounds that add a click in the larger error region and feed the
previous best low-resolution logits back as ``mask_input``. A first single click uses multimask output
and trains the best of the three masks (as SAM does); the other rounds use one mask. Loss on the
low-resolution logits against the area-downsampled ground truth (or, with ``fullres_loss``, on the
logits upsampled to the input size against the exact mask): ``focal_weight * focal + dice``, plus the
MSE between the IoU head and the actual IoU of each mask, plus ``click_weight`` times the BCE of the
logits at the clicked pixels against the clicks' signs (0 by default).

Zoom windows (``p_zoom``): some images are a window around one object, enlarged to the input size as
the Session's zoom (:mod:`promptseg.zoom`) does; their episodes start, as there, from a full-view mask
as ``mask_input`` — the model's own prediction on the whole scene (``p_self_prior``) or a coarse,
perturbed version of the truth. Propagation pairs (``p_propagate``) start from the previous slice's
mask and one click at its innermost pixel or (``propagate_carry = "squiggle"``) a squiggle along its
long axis, as :func:`promptseg.volume.propagate` now does.

Every random draw of step ``k`` comes from generators seeded with ``(seed, k)``, so a resumed run
continues exactly as an uninterrupted one would (up to float non-determinism).
"""

from __future__ import annotations

import json
import math
import time
import tomllib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import zoom
from ..models.build import build_sam
from . import lockstep
from . import prompts as P
from .draws import Window, as_prior, draw, first_input
from .episodes import Episode, StepData, as_is, decode_batch, draw_step, losses

DEFAULTS = {
    "model": {"arch": "cnn_small", "image_size": 256, "arch_kwargs": {}, "init": "",
              "pixel_mean": [123.675, 116.28, 103.53], "pixel_std": [58.395, 57.12, 57.375]},
    "data": {"min_area": 30, "p_non_square": 0.3, "p_medical": 0.0, "p_zoom": 0.0, "zoom_expand": [1.25, 2.2],
             "extra_scenes": [], "p_lowres": 0.0, "lowres_scale": [0.2, 0.75], "p_clean": 0.0,
             "p_propagate": 0.0, "propagate_z_step": [1.0, 4.0], "min_visible": 0.0,
             "p_propagate_small": 0.0},
    "prompts": {"p_click": 0.6, "p_box": 0.3, "p_squiggle": 0.1, "p_correct": 0.5, "max_corrections": 2,
                "p_squiggle_correct": 0.0, "p_prior": 0.0, "p_prior_full": 0.0, "p_self_prior": 0.0,
                "propagate_carry": "click"},
    "train": {"seed": 0, "steps": 1000, "batch_size": 8, "objects_per_image": 2, "lr": 1e-3, "min_lr": 1e-5,
              "weight_decay": 0.01, "warmup_steps": 100, "grad_clip": 1.0, "focal_weight": 20.0, "focal_gamma": 2.0,
              "iou_weight": 1.0, "checkpoint_every": 200, "log_every": 10, "threads": 1, "trainable": [],
              "device": "cpu", "data_workers": 0, "batched_episodes": False, "fullres_loss": False,
              "click_weight": 0.0, "device_episodes": False, "prompts_in_workers": False},
}


TERMS = ("focal", "dice", "iou", "click")  # the loss terms an episode sums (see _add_round)


def load_config(path) -> dict:
    """Read a TOML (``.toml``) or JSON config and fill in :data:`DEFAULTS` per section."""
    path = Path(path)
    raw = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
    cfg = {}
    for section, values in DEFAULTS.items():
        unknown = set(raw.get(section, {})) - set(values)
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {sorted(unknown)} in [{section}]")
        cfg[section] = {**values, **raw.get(section, {})}
    if cfg["prompts"]["propagate_carry"] not in ("click", "squiggle"):  # a typo would train on clicks silently
        raise ValueError(f"{path}: propagate_carry must be \"click\" or \"squiggle\", "
                         f"not {cfg['prompts']['propagate_carry']!r}")
    t = cfg["train"]
    if t["prompts_in_workers"] and not (t["device_episodes"] or t["batched_episodes"]):
        raise ValueError(f"{path}: prompts_in_workers needs device_episodes or batched_episodes")
    return cfg


def build_model(cfg: dict):
    """The untrained Sam of a config's ``[model]`` section."""
    m = cfg["model"]
    return build_sam(m["arch"], image_size=m["image_size"], pixel_mean=m["pixel_mean"], pixel_std=m["pixel_std"],
                     **m["arch_kwargs"])


def lr_at(step: int, t: dict) -> float:
    """Linear warm-up then cosine decay from ``lr`` to ``min_lr`` over ``steps``."""
    if step < t["warmup_steps"]:
        return t["lr"] * (step + 1) / t["warmup_steps"]
    frac = min(1.0, (step - t["warmup_steps"]) / max(1, t["steps"] - t["warmup_steps"]))
    return t["min_lr"] + 0.5 * (t["lr"] - t["min_lr"]) * (1 + math.cos(math.pi * frac))


def _to_input(sam, images, dev) -> torch.Tensor:
    """uint8 (h, w, 3) images -> the encoder's input batch (B, 3, S, S): normalised and padded by SAM."""
    return torch.cat([sam.preprocess(torch.from_numpy(im).permute(2, 0, 1).float()[None].to(dev)) for im in images])


def _own_priors(sam, batch: list, rng: np.random.Generator, size: int, dev, only=None) -> dict:
    """The model's own full-view prediction of each zoom window's object (of those in ``only`` if given)
    — a lone click, the best of three masks by predicted IoU, as a Session's first prompt — cut to the
    window and enlarged as it was: {batch index: bool (h, w)}. What the Session's zoom starts from, so
    training sees it too."""
    idx = [b for b, item in enumerate(batch) if isinstance(item[3], Window) and (only is None or b in only)]
    if not idx:
        return {}
    pe, srcs = sam.prompt_encoder, [batch[b][3] for b in idx]
    with torch.no_grad():
        emb = sam.image_encoder(_to_input(sam, [src.image for src in srcs], dev))
        prompts = []
        for src in srcs:
            click = torch.as_tensor(P.to_xy(P.first_click(rng, src.labels == src.k)[None]), dtype=torch.float, device=dev)
            prompts.append(pe(points=(click[None], torch.ones(1, 1, dtype=torch.int, device=dev)), boxes=None, masks=None))
        low, iou = decode_batch(sam, emb, [sp for sp, _ in prompts], torch.cat([dn for _, dn in prompts]))
        best = low[torch.arange(len(idx)), 1 + iou[:, 1:].argmax(dim=1)]  # masks 1-3: the multimask outputs
        full = F.interpolate(best[:, None], (size, size), mode="bilinear", align_corners=False)[:, 0] > 0
    out = {}
    for j, (b, src) in enumerate(zip(idx, srcs)):
        h, w = src.labels.shape
        r0, r1, c0, c1 = src.window
        out[b] = zoom.resize_labels(full[j, :h, :w][r0:r1, c0:c1].cpu().numpy(), batch[b][1].shape)
    return out


def _lowres_target(mask: np.ndarray, size: int, lowres: int, device="cpu") -> torch.Tensor:
    """bool (h, w) -> float (lowres, lowres): the fraction of object pixels per low-res cell (padded);
    ``lowres == size`` gives the padded mask itself."""
    full = torch.zeros(size, size)
    full[: mask.shape[0], : mask.shape[1]] = torch.from_numpy(mask.astype(np.float32))
    return F.avg_pool2d(full[None, None], size // lowres)[0, 0].to(device)


def _target(mask: np.ndarray, size: int, lowres: int, t: dict, device) -> torch.Tensor:
    """An episode's loss target: area fractions on the low-res grid, or the mask at the input size
    with ``fullres_loss`` (see :func:`.episodes.losses`)."""
    return _lowres_target(mask, size, size if t["fullres_loss"] else lowres, device)


def _episode(sam, emb: torch.Tensor, mask: np.ndarray, rng: np.random.Generator, cfg: dict, prior=None, first=None):
    """One simulated interactive episode on one object; returns the summed loss terms and the IoUs."""
    t = cfg["train"]
    size = sam.image_encoder.img_size
    lowres = 4 * sam.prompt_encoder.image_embedding_size[0]
    dev = emb.device
    target = _target(mask, size, lowres, t, dev)
    pe = sam.prompt_encoder
    ep = Episode(rng, mask, cfg["prompts"], prior, first)
    total = dict.fromkeys(TERMS, 0.0)
    ious = []
    for r in range(ep.n_rounds):
        multimask = ep.multimask
        sparse, dense = ep.embed_prompts(pe, size, lowres, dev)
        low, iou_pred = sam.mask_decoder(image_embeddings=emb, image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse,
                                         dense_prompt_embeddings=dense, multimask_output=multimask)
        ious.append(_add_round(total, low[0], iou_pred[0], target, ep.n_rounds, multimask, t, ep, size))
        if r + 1 < ep.n_rounds and not ep.correct(rng, _feed_back(ep, low, iou_pred[0], multimask, size)):
            break
    return total, ious


def _add_round(total: dict, low, iou_pred, target, n_rounds: int, multimask: bool, t: dict, ep=None,
               size: int | None = None) -> float:
    """Add one round's loss terms (its best mask when multimask) to ``total``; returns that mask's IoU.
    ``ep``: the Episode, whose clicks enter the click term when ``click_weight`` > 0 (``size``: the input side)."""
    clicks = (ep.rc, ep.flags) if ep is not None and t["click_weight"] > 0 else None
    focal, dice, mse, click, iou = losses(low, target, iou_pred, t["focal_gamma"], clicks, size)
    best = int(torch.argmin(t["focal_weight"] * focal + dice)) if multimask else 0
    total["focal"] = total["focal"] + focal[best] / n_rounds
    total["dice"] = total["dice"] + dice[best] / n_rounds
    total["iou"] = total["iou"] + mse.mean() / n_rounds
    total["click"] = total["click"] + click[best] / n_rounds
    return float(iou[best])


def _feed_back(ep: Episode, low, iou_pred, multimask: bool, size: int) -> np.ndarray:
    """Keep the mask the Session would feed back (best by predicted IoU) in ``ep.prev``; return it as a
    bool mask over the episode's image. ``low``: (1, K, L, L) logits of this round."""
    pick = int(torch.argmax(iou_pred)) if multimask else 0
    ep.prev = low[:, pick : pick + 1].detach()
    with torch.no_grad():
        up = F.interpolate(ep.prev, size=(size, size), mode="bilinear", align_corners=False)[0, 0] > 0
    return up[: ep.mask.shape[0], : ep.mask.shape[1]].cpu().numpy()


def _own_later(sam, items: list, eps: list, batch: list, rng: np.random.Generator, size: int, lowres: int, dev):
    """:func:`.episodes.prepare`'s (items, episodes) with their first inputs made tensors (and the
    Episodes' ``prev``): the worker's arrays, and for each :data:`.draws.LATER` the model's own full-view
    mask (:func:`_own_priors`), or a coarse one where that mask is empty."""
    if lowres != size // 4:
        raise ValueError(f"prompts_in_workers assumes masks of a quarter of the input side, not {lowres} of {size}")
    own = _own_priors(sam, batch, rng, size, dev, only={b for b, _, prior, _ in items if isinstance(prior, str)})
    for i, (b, mask, prior, first) in enumerate(items):
        if isinstance(prior, str):
            src = batch[b][3]
            prior = as_prior(own[b] if own[b].any() else P.coarse_mask(rng, src.labels, src.k, src.magnification),
                             size, lowres)
        elif prior is not None:
            prior = torch.from_numpy(prior)
        items[i] = (b, mask, prior, first)
        eps[i].prev = prior
    return items, eps


def _episodes_batched(sam, emb: torch.Tensor, items: list, rng: np.random.Generator, cfg: dict, eps=None):
    """All episodes of a step in lockstep, one batched decoder call per round (:func:`decode_batch`).

    ``items``: (image index into ``emb``, bool mask, prior logits or None, first click or None) per
    episode; ``eps`` their Episodes when already drawn. Returns summed terms, IoUs, count.
    """
    t = cfg["train"]
    size = sam.image_encoder.img_size
    lowres = 4 * sam.prompt_encoder.image_embedding_size[0]
    dev, pe = emb.device, sam.prompt_encoder
    if eps is None:
        eps = [Episode(rng, mask, cfg["prompts"], prior, first) for _, mask, prior, first in items]
    targets = [_target(mask, size, lowres, t, dev) for _, mask, *_ in items]
    active, r = list(range(len(eps))), 0  # the episodes that go on to round r
    total, ious = dict.fromkeys(TERMS, 0.0), []
    while active:
        multi = [eps[e].multimask for e in active]
        prompts = [eps[e].embed_prompts(pe, size, lowres, dev) for e in active]
        idx = torch.as_tensor([items[e][0] for e in active], device=dev)
        low, iou_pred = decode_batch(sam, emb[idx], [sp for sp, _ in prompts], torch.cat([de for _, de in prompts]))
        still = []
        for j, e in enumerate(active):
            sl = slice(1, None) if multi[j] else slice(0, 1)
            ious.append(_add_round(total, low[j, sl], iou_pred[j, sl], targets[e], eps[e].n_rounds, multi[j], t, eps[e],
                                   size))
            if r + 1 < eps[e].n_rounds and eps[e].correct(rng, _feed_back(eps[e], low[j : j + 1, sl], iou_pred[j, sl],
                                                                        multi[j], size)):
                still.append(e)
        active, r = still, r + 1
    return total, ious, len(eps)


def _carry(sam, state: dict) -> tuple[dict, dict]:
    """Split a checkpoint's ``state`` into the entries for ``sam`` and those of an edge refiner that
    ``sam`` lacks (this loop does not train one): the latter go into every checkpoint unchanged, so a
    fine-tuning of the shipped model's decoder keeps its refiner."""
    own = sam.state_dict()
    carried = {k: v for k, v in state.items() if k.startswith("edge_refiner.") and k not in own}
    return {k: v for k, v in state.items() if k not in carried}, carried


def _save(sam, opt, step: int, out: Path, carried: dict | None = None) -> None:
    """Plain state dict (weights_only-readable; with ``carried`` entries) + optimiser state, written atomically."""
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in sam.state_dict().items()}
    state.update(carried or {})
    tmp = out / "model_last.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(out / "model_last.pt")
    torch.save({"step": step, "optimizer": opt.state_dict()}, out / "train_state.pt.tmp")
    (out / "train_state.pt.tmp").replace(out / "train_state.pt")


def step_loss(sam, batch, rng: np.random.Generator, cfg: dict, step: int, dev, encoder_frozen: bool = False):
    """Step ``step``'s loss on its drawn ``batch`` (:func:`.draws.draw` results; with ``prompts_in_workers``
    (batch, items, episodes), see :func:`.episodes.draw_step`): the images embedded (with no gradient for a frozen
    encoder), the objects' episodes run one at a time, batched, or on the device as ``[train]`` says, and
    their terms weighed. Returns the loss, the summed terms, every round's IoU and the number of episodes."""
    t, size = cfg["train"], cfg["model"]["image_size"]
    if t["prompts_in_workers"]:
        batch, items, eps = batch
    with torch.set_grad_enabled(not encoder_frozen):
        emb = sam.image_encoder(_to_input(sam, [im for im, *_ in batch], dev))
    terms = dict.fromkeys(TERMS, 0.0)
    ious, n = [], 0
    lowres = 4 * sam.prompt_encoder.image_embedding_size[0]
    if t["prompts_in_workers"]:  # drawn with the images (episodes.prepare); the model's own masks are made here
        items, eps = _own_later(sam, items, eps, batch, rng, size, lowres, dev)
    else:
        own = _own_priors(sam, batch, rng, size, dev) if cfg["prompts"]["p_self_prior"] > 0 else {}
        items = [(b, labels == k, *first_input(rng, labels, k, src, cfg["prompts"], size, lowres, own.get(b)))
                 for b, (_, labels, ids, src) in enumerate(batch)
                 for k in rng.choice(ids, size=min(len(ids), t["objects_per_image"]), replace=False)]
        eps = None
    if t["device_episodes"]:  # every episode's prompts, corrections and loss as tensors on the device
        gen = torch.Generator(device=dev)
        gen.manual_seed(t["seed"] * 1_000_003 + step)
        terms, ious, n = lockstep.run(sam, emb, items, rng, cfg, gen, eps)
    elif t["batched_episodes"]:
        terms, ious, n = _episodes_batched(sam, emb, items, rng, cfg, eps)
    else:
        for b, mask, prior, first in items:
            tot, iu = _episode(sam, emb[b:b + 1], mask, rng, cfg, prior, first)
            for key in terms:
                terms[key] = terms[key] + tot[key]
            ious += iu
            n += 1
    loss = (t["focal_weight"] * terms["focal"] + terms["dice"] + t["iou_weight"] * terms["iou"]
            + t["click_weight"] * terms["click"]) / n
    return loss, terms, ious, n


def train(config_path, out_dir, resume: bool = True, max_minutes: float | None = None) -> Path:
    """Train a model from a config file; return the path of the final weights.

    Parameters
    ----------
    config_path : TOML or JSON file with sections ``[model]``, ``[data]``, ``[prompts]``, ``[train]``
        (see :data:`DEFAULTS`).
    out_dir : folder for ``model_last.pt`` (plain state dict), ``train_state.pt`` (step, optimiser),
        ``log.jsonl`` (one JSON line per ``log_every`` steps) and a copy of the config.
    resume : continue from ``out_dir``'s last checkpoint when there is one.
    max_minutes : stop (after saving) when this much wall time has passed, even before ``steps``.

    Returns
    -------
    Path of ``model_last.pt``.
    """
    from tqdm import tqdm

    cfg = load_config(config_path)
    t = cfg["train"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    torch.set_num_threads(int(t["threads"]))
    torch.manual_seed(t["seed"])
    from ..models import resolve_device

    dev = resolve_device(t["device"])  # "auto": a GPU when there is one
    sam = build_model(cfg).train()
    carried = {}
    if cfg["model"]["init"]:  # fine-tuning: start from trained weights; new modules keep their initialisation
        state, carried = _carry(sam, torch.load(cfg["model"]["init"], map_location="cpu", weights_only=True))
        missing, unexpected = sam.load_state_dict(state, strict=False)
        if unexpected or any(not any(k.startswith(p) for p in t["trainable"]) for k in missing):
            raise ValueError(f"{cfg['model']['init']} does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if t["trainable"]:  # train only these parameters (name prefixes); the rest stays as it is
        for name, prm in sam.named_parameters():
            prm.requires_grad_(any(name.startswith(p) for p in t["trainable"]))
    sam.to(dev)
    params = [prm for prm in sam.parameters() if prm.requires_grad]
    encoder_frozen = not any(prm.requires_grad for prm in sam.image_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=t["lr"], weight_decay=t["weight_decay"])
    start = 0
    if resume and (out / "model_last.pt").is_file() and (out / "train_state.pt").is_file():
        state, more = _carry(sam, torch.load(out / "model_last.pt", map_location="cpu", weights_only=True))
        sam.load_state_dict(state)
        carried = {**carried, **more}
        state = torch.load(out / "train_state.pt", map_location=dev, weights_only=True)
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
    t0 = time.monotonic()
    step = start
    log = open(out / "log.jsonl", "a")
    bar = tqdm(range(start, t["steps"]), initial=start, total=t["steps"], desc="train", mininterval=5)
    running = {}
    loader = None
    if t["data_workers"] > 0 and start < t["steps"]:  # images drawn in worker processes, seeded by (seed, step)
        loader = iter(torch.utils.data.DataLoader(StepData(draw, cfg, start), batch_size=None, collate_fn=as_is,
                                                  num_workers=t["data_workers"], prefetch_factor=4))
    for step in bar:
        rng = np.random.default_rng([t["seed"], step])
        torch.manual_seed(t["seed"] * 1_000_003 + step)
        lr = lr_at(step, t)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = next(loader) if loader is not None else draw_step(rng, step, cfg)
        loss, terms, ious, n = step_loss(sam, batch, rng, cfg, step, dev, encoder_frozen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, t["grad_clip"])
        opt.step()
        vals = {"loss": float(loss.detach()), **{k: float(v.detach() if torch.is_tensor(v) else v) / n for k, v in terms.items()}, "miou": float(np.mean(ious))}
        for k, v in vals.items():
            running[k] = running.get(k, 0.0) + v
        done = step + 1
        if done % t["log_every"] == 0:
            rec = {"step": done, "lr": lr, "gnorm": float(gnorm), "minutes": (time.monotonic() - t0) / 60,
                   **{k: v / t["log_every"] for k, v in running.items()}}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{rec['loss']:.3f}", miou=f"{rec['miou']:.3f}")
            running = {}
        out_of_time = max_minutes is not None and time.monotonic() - t0 > 60 * max_minutes
        if done % t["checkpoint_every"] == 0 or done == t["steps"] or out_of_time:
            _save(sam, opt, done, out, carried)
        if out_of_time:
            break
    bar.close()
    log.close()
    if start >= t["steps"] and not (out / "model_last.pt").is_file():
        _save(sam, opt, start, out, carried)
    return out / "model_last.pt"


if __name__ == "__main__":  # python -m promptseg.train.trainer CONFIG OUT_DIR [MAX_MINUTES]
    import sys

    from . import train as _dispatch  # an [edges] or [iou_head] config trains that part alone

    _dispatch(sys.argv[1], sys.argv[2], max_minutes=float(sys.argv[3]) if len(sys.argv) > 3 else None)
