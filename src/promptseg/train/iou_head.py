"""Fine-tuning of the mask decoder's IoU head, which decides what a lone click shows.

A lone click is ambiguous (a nucleus or its cluster, a lesion or its organ), so the decoder returns three
masks and the Session shows the one with the highest predicted IoU; the zoom step (:mod:`promptseg.zoom`)
also compares predicted IoUs, a window's against the full view's. On version 14 and the held-out sets,
the best of a first click's three full-view masks has a mean Dice 0.06 above the one picked (0.82
against 0.76 pooled; 0.85 against 0.73 on the CT-/MRI-like volumes).

This trains the head alone (``mask_decoder.iou_prediction_head``, an MLP on the decoder's IoU token),
everything else frozen: embeddings, caches and every one of the decoder's masks stay as they were; which
mask is shown, and the zoom's choices, change. On version 14 it closed little of the gap (the model
card's "Tried for version 15"): the IoU token does not hold what tells the three masks apart.

Data (:func:`collect`): prompts as the Session gives them, through the Session's preprocessing and the
real decoder, on training draws of the held-out sets' generators (other seeds). Per object: a first
click (its innermost pixel or a random one, biased to the centre) on the full view, the same click in a
zoom window around the object (from the prompt alone, and with the full view's mask as ``mask_input``,
as :mod:`promptseg.zoom` decodes it), its box, and a correction click with the first mask fed back. A
record holds the IoU token (the head's input) and the true IoU, at the image's pixels, of each of the
four masks the decoder made for it (SAM's single mask and its three).

Loss: the MSE of the four predicted IoUs (the zoom compares them across prompts, so they must stay
calibrated) plus, for a lone click, ``rank_weight`` x the cross-entropy of the softmax of its three
predicted IoUs over ``temperature`` against the best of the three.

Config (TOML, one ``[iou_head]`` section): ``init`` (the trained model, a plain state dict), ``seed``,
``generic`` / ``medical_2d`` / ``medical_3d`` (images or volumes to draw), ``objects_per_image``,
``steps``, ``batch_size``, ``lr``, ``weight_decay``, ``rank_weight``, ``temperature``, ``threads``;
run with ``promptseg train --config CONFIG -o OUT``.
"""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluate import iou
from . import read_section

DEFAULTS = {"init": "", "seed": 0, "generic": 1500, "medical_2d": 1000, "medical_3d": 150, "objects_per_image": 4,
            "steps": 20000, "batch_size": 256, "lr": 1e-3, "weight_decay": 1e-4, "rank_weight": 0.0,
            "temperature": 0.05, "threads": 2}
MIN_AREA = 30  # px, as the held-out sets


class _TokenTap:
    """Keeps the last input of the IoU head (the decoder's IoU token, (B, C)) while in a ``with`` block."""

    def __init__(self, model):
        self.head = model.sam.mask_decoder.iou_prediction_head
        self.value = None

    def __enter__(self):
        self._hook = self.head.register_forward_hook(lambda mod, args, out: setattr(self, "value", args[0]))
        return self

    def __exit__(self, *exc):
        self._hook.remove()


def _placed(hit, plane: tuple[int, int], origin=(0, 0)) -> np.ndarray:
    """``PromptModel.mask``'s (bool crop, (row, col)) or None, placed at ``origin`` in a bool (H, W) plane."""
    from .._state import SliceState, pack_crop, plane_mask

    if hit is not None:
        hit = (hit[0], (hit[1][0] + origin[0], hit[1][1] + origin[1]))
    bits, extent = pack_crop(hit)
    return plane_mask(SliceState(bits=bits, extent=extent), plane)


def _record(model, tap, feats, frame, gt, rc, flags, box=None, prior=None, origin=(0, 0)) -> tuple:
    """Decode one prompt set; returns (IoU token (C,) float32, true IoUs (4,) float32, the single mask's
    low-res logits (1, L, L)). ``rc`` (N, 2) (row, col) and ``box`` (r0, c0, r1, c1) in ``frame``'s image;
    ``gt`` in the plane, ``origin`` the frame's corner there."""
    xy = frame.to_input_xy(np.asarray(rc, float)) if len(rc) else None
    labels = np.asarray(flags, int) if len(rc) else None
    bx = None if box is None else frame.box_to_input(*box)
    three, _ = model.decode(feats, xy, labels, bx, prior, True)
    one, _ = model.decode(feats, xy, labels, bx, prior, False)
    token = tap.value[0].float().cpu().numpy().copy()
    ious = [iou(_placed(model.mask(low, frame.input, frame.original, 0.0), gt.shape, origin), gt)
            for low in (one[0], *three)]
    return token, np.asarray(ious, np.float32), one[:1]


def _object_records(model, tap, session, gt: np.ndarray, rng: np.random.Generator) -> list:
    """The records of one object (see the module docstring) of a Session's 2D image: (token, ious, lone)."""
    from .. import zoom
    from ..evaluate import innermost, next_click
    from ..preprocess import Frame
    from .prompts import box as jitter_box, first_click

    feats, frame = session._features(0), session.frame
    click = np.asarray(innermost(gt) if rng.random() < 0.5 else first_click(rng, gt), float)[None]
    token, ious, low = _record(model, tap, feats, frame, gt, click, [True])
    out = [(token, ious, True)]
    mask = _placed(model.mask(low[0], frame.input, frame.original, 0.0), gt.shape)
    nxt = next_click(gt, mask)
    if nxt is not None:  # a correction click, the single mask fed back as the Session does after a click
        rc = np.concatenate([click, np.asarray(nxt[0], float)[None]])
        out.append(_record(model, tap, feats, frame, gt, rc, [True, nxt[1]], prior=low)[:2] + (False,))
    b = jitter_box(rng, gt) if rng.random() < 0.5 else None  # (r0, c0, r1, c1)
    if b is None:
        rows, cols = np.flatnonzero(gt.any(1)), np.flatnonzero(gt.any(0))
        b = np.array([rows[0], cols[0], rows[-1], cols[-1]], float)
    out.append(_record(model, tap, feats, frame, gt, np.zeros((0, 2)), [], box=tuple(b))[:2] + (False,))
    core = zoom.box_of(gt, [tuple(click[0])])
    win = zoom.window(core, gt.shape, model.input_size, expand=zoom.EXPAND * rng.uniform(0.9, 1.3))
    if win is not None:
        r0, r1, c0, c1 = win
        wf = Frame.for_shape((r1 - r0, c1 - c0), model.input_size, model.spec.resize)
        wfeats = zoom.features(session, 0, win)
        local = click - (r0, c0)
        out.append(_record(model, tap, wfeats, wf, gt, local, [True], origin=(r0, c0))[:2] + (True,))
        seed = wf.mask_to_lowres(mask[r0:r1, c0:c1], model.lowres_size)
        out.append(_record(model, tap, wfeats, wf, gt, local, [True], prior=seed, origin=(r0, c0))[:2] + (False,))
    return out


def _draws(cfg: dict, rng: np.random.Generator):
    """(image as the Session is given it, 2D labels) pairs: generic scenes, CT-/MRI-like slices, and the
    slice of each chosen object's largest extent in CT-/MRI-like volumes, as the held-out sets make them."""
    from ..preprocess import choose_intensity
    from . import anatomy
    from .synthetic import sample

    for _ in range(cfg["generic"]):
        yield sample(rng, 256)
    for dims, n in ((2, cfg["medical_2d"]), (3, cfg["medical_3d"])):
        for i in range(n):
            modality = "ct" if i % 2 == 0 else "mri"
            shape = (256, 256) if dims == 2 else (24, 160, 160)
            tissue, labels = anatomy.scene(rng, shape, z_step=3.0)
            raw = (anatomy.render_ct if modality == "ct" else anatomy.render_mri)(rng, tissue, 3.0)
            image = choose_intensity(raw, rgb=False, modality=modality).apply(raw)[..., 0]
            if dims == 2:
                yield image, labels
                continue
            ids = [k for k in np.unique(labels) if k > 0]
            for k in rng.permutation(ids)[:2]:  # two objects per volume, each on its largest slice
                z = int(np.argmax((labels == k).sum(axis=(1, 2))))
                yield image[z], np.where(labels[z] == k, labels[z], 0)


def collect(model, cfg: dict, progress=None) -> list:
    """Records (token (C,), ious (4,), lone click: bool) of the config's draws; see the module docstring."""
    from ..session import Session

    rng = np.random.default_rng([cfg["seed"], 77])
    out = []
    with _TokenTap(model) as tap:
        for image, labels in _draws(cfg, rng):
            ids, counts = np.unique(labels, return_counts=True)
            ok = ids[(ids > 0) & (counts >= MIN_AREA)]
            if not len(ok):
                continue
            s = Session(model, image, zoom=False, edges=False)
            for k in rng.permutation(ok)[: cfg["objects_per_image"]]:
                out += _object_records(model, tap, s, labels == k, rng)
            if progress is not None:
                progress(len(out))
    return out


def _losses(head, tokens, ious, lone, cfg):
    pred = head(tokens)
    mse = ((pred - ious) ** 2).mean()
    rank = pred.new_zeros(())
    if lone.any():
        rank = F.cross_entropy(pred[lone, 1:] / cfg["temperature"], ious[lone, 1:].argmax(1))
    return mse + cfg["rank_weight"] * rank, pred


def choice_quality(pred: torch.Tensor, ious: torch.Tensor, lone: torch.Tensor) -> dict:
    """On lone clicks: mean true IoU of the three-mask pick by ``pred`` (N, 4), of the best pick, and the
    MSE of ``pred`` on all records."""
    pick = pred[lone, 1:].argmax(1)
    chosen = ious[lone, 1:].gather(1, pick[:, None])[:, 0]
    return {"chosen_iou": float(chosen.mean()), "best_iou": float(ious[lone, 1:].max(1).values.mean()),
            "mse": float(((pred - ious) ** 2).mean())}


def train_iou_head(config_path, out_dir, resume: bool = True, max_minutes: float | None = None) -> Path:
    """Train the IoU head of the config's ``init`` model; writes ``OUT/data.pkl`` (the records, reused on
    a rerun), ``OUT/model_last.pt`` (the whole model, a plain state dict) and ``OUT/log.jsonl`` with the
    choice quality on a tenth of the records held out, before and after. Training takes a few minutes
    on a CPU: ``resume`` only reuses the records, and ``max_minutes`` is not used."""
    import promptseg as ps
    from tqdm import tqdm

    from ..io.writers import atomic_file
    from ..models.registry import ModelSpec, get_spec, register_model

    cfg = read_section(config_path, "iou_head", DEFAULTS)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    spec = get_spec("default")
    register_model(ModelSpec("iou_head_training", spec.arch, "iou.pt", input_size=spec.input_size,
                             arch_kwargs={**spec.arch_kwargs, "edges": True}, zoom=spec.zoom), overwrite=True)
    model = ps.load_model("iou_head_training", checkpoint=cfg["init"], device="cpu")
    path = out / "data.pkl"
    if resume and path.is_file():
        recs = pickle.loads(path.read_bytes())
    else:
        bar = tqdm(desc="records", mininterval=5)
        recs = collect(model, cfg, progress=lambda n: bar.update(n - bar.n))
        bar.close()
        atomic_file(path, ".pkl", lambda tmp: Path(tmp).write_bytes(pickle.dumps(recs)))
    tokens = torch.as_tensor(np.stack([r[0] for r in recs]))
    ious = torch.as_tensor(np.stack([r[1] for r in recs]))
    lone = torch.as_tensor(np.array([r[2] for r in recs]))
    order = torch.as_tensor(np.random.default_rng(cfg["seed"]).permutation(len(recs)))
    val, fit = order[: len(recs) // 10], order[len(recs) // 10:]
    head = model.sam.mask_decoder.iou_prediction_head
    for p in model.sam.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    log = open(out / "log.jsonl", "a")

    def report(step):
        with torch.no_grad():
            q = choice_quality(head(tokens[val]), ious[val], lone[val])
        log.write(json.dumps({"step": step, "records": len(recs), **q}) + "\n")
        log.flush()
        return q

    report(0)
    opt = torch.optim.AdamW(head.parameters(), cfg["lr"], weight_decay=cfg["weight_decay"])
    t0 = time.monotonic()
    for step in tqdm(range(cfg["steps"]), desc="iou head", mininterval=5):
        idx = fit[torch.randint(len(fit), (cfg["batch_size"],))]
        lr = cfg["lr"] * 0.5 * (1 + np.cos(np.pi * step / cfg["steps"]))
        for g in opt.param_groups:
            g["lr"] = lr
        loss, _ = _losses(head, tokens[idx], ious[idx], lone[idx], cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    report(cfg["steps"])
    log.write(json.dumps({"minutes": (time.monotonic() - t0) / 60}) + "\n")
    log.close()
    whole = {k: v.contiguous() for k, v in model.sam.state_dict().items()}
    atomic_file(out / "model_last.pt", ".pt", lambda tmp: torch.save(whole, tmp))
    return out / "model_last.pt"
