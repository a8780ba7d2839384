"""``promptseg bench``: promptseg's encoder and decoder paths side by side with the reference, in one run.

Everything is measured in one process on the same random weights (seeded): the reference is
segment-anything's ``SamPredictor`` (``set_image`` per image, ``predict`` per click), and micro-sam's
``precompute_image_embeddings`` / ``segment_from_points`` when micro-sam is importable. promptseg's side
is :func:`promptseg.embed` (fast paths, chosen precision) and :meth:`Session.add_point` including
post-processing to a full-resolution mask. Reported: medians, ratios (reference / promptseg, higher is
better) and the agreement of embeddings (cosine) and masks.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path

import numpy as np


def _median_ms(fn, n: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def _random_model(arch: str, device: str, precision: str, fast: bool = True):
    import torch

    from .models import get_spec, resolve_device, resolve_precision
    from .models.build import build_sam
    from .models.model import PromptModel

    torch.manual_seed(0)
    sam = build_sam(arch).eval()
    dev = resolve_device(device)
    spec = get_spec("sam_vit_b" if arch == "tiny" else f"sam_{arch}")  # input size and normalisation
    return PromptModel(sam=sam.to(dev), spec=spec, device=dev, precision=resolve_precision(dev, precision), fast=fast)


def _image(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = (rng.random((size, size, 3)) * 80).astype(np.uint8)
    rr, cc = np.mgrid[:size, :size]
    for _ in range(6):
        r, c, rad = rng.integers(size // 8, size - size // 8, 2).tolist() + [int(rng.integers(size // 20, size // 8))]
        img[(rr - r) ** 2 + (cc - c) ** 2 < rad**2] = rng.integers(100, 255, 3)
    return img


def run(arch: str = "vit_b", *, device: str = "auto", precision: str = "auto", images: int = 2, clicks: int = 30,
        size: int = 1024, micro_sam: bool = True, progress=print) -> dict:
    """Run the suite; returns {"rows": [(what, reference, promptseg, ratio, note)], ...} (times in ms)."""
    import torch
    from segment_anything import SamPredictor

    from .embeddings import embed
    from .session import Session

    model = _random_model(arch, device, precision)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    imgs = [_image(size, seed) for seed in range(images)]
    predictor = SamPredictor(model.sam)
    rows, info = [], {"arch": arch, "device": str(model.device), "precision": model.precision, "size": size,
                      "torch_threads": torch.get_num_threads()}

    # -- encoder: SamPredictor.set_image (fp32, reference attention) vs promptseg.embed (fast path) ----------
    progress(f"encoder: {images} image(s) of {size}² through SamPredictor.set_image and promptseg.embed ...")
    model.fast = False  # the reference runs segment-anything's own attention
    ref_ms = _median_ms(lambda: [predictor.set_image(im) or sync() for im in imgs], 1) / images
    ref_feat = predictor.get_image_embedding().float().cpu().numpy().ravel()
    model.fast = True
    stores = []
    ours_ms = _median_ms(lambda: stores.append(embed(imgs[-1], model, batch_size=1)) or sync(), max(1, images - 1))
    ours_feat = stores[-1].get(0).astype(np.float32).ravel()
    cos = float(ref_feat @ ours_feat / (np.linalg.norm(ref_feat) * np.linalg.norm(ours_feat)))
    rows.append(("encoder ms / image", ref_ms, ours_ms, ref_ms / ours_ms, f"cosine {cos:.6f}"))

    # -- decoder: SamPredictor.predict vs Session.add_point, same embedding, one click each --------------------
    progress(f"decoder: {clicks} clicks through SamPredictor.predict and Session.add_point ...")
    rng = np.random.default_rng(1)
    pts = rng.integers(size // 10, size - size // 10, (clicks, 2)).astype(float)  # (row, col)
    s = Session(model, imgs[-1], embeddings=stores[-1])
    agree = []
    ref_pts, our_pts = itertools.cycle(pts), itertools.cycle(pts)

    def ref_click():
        predictor.predict(next(ref_pts)[None, ::-1], np.array([1]), multimask_output=True)  # SAM wants (x, y)
        sync()

    def our_click():
        s.reset()
        s.add_point(tuple(next(our_pts)))
        sync()

    ref_ms = _median_ms(ref_click, clicks)
    ours_ms = _median_ms(our_click, clicks)
    for p in pts[: min(clicks, 10)]:
        masks, scores, _ = predictor.predict(p[None, ::-1], np.array([1]), multimask_output=True)
        s.reset()
        agree.append(float((masks[int(np.argmax(scores))] == s.add_point(tuple(p)).mask).mean()))
    rows.append(("decoder ms / click", ref_ms, ours_ms, ref_ms / ours_ms, f"mask agreement min {min(agree):.5f}"))
    rows.append(_correction_clicks(predictor, s, pts, clicks, sync))

    if micro_sam:
        rows += _micro_sam(model, imgs[-1], pts, clicks, progress)
    rows.append(_default_model(imgs[-1], device, clicks))
    info["rows"] = rows
    return info


def _correction_clicks(predictor, s, pts, clicks: int, sync) -> tuple:
    """A second click with the first one's low-resolution logits fed back (the Session's way), both sides."""
    ref, ours, agree = [], [], []
    for i in range(clicks + 1):  # the first round is a warm-up
        a, b = pts[i % len(pts)], pts[(i + 1) % len(pts)]
        masks, scores, low = predictor.predict(a[None, ::-1], np.array([1]), multimask_output=True)
        best = int(np.argmax(scores))
        t = time.perf_counter()
        want, _, _ = predictor.predict(np.stack([a, b])[:, ::-1], np.array([1, 1]), mask_input=low[best][None],
                                       multimask_output=False)
        sync()
        ref.append(time.perf_counter() - t)
        s.reset()
        s.add_point(tuple(a))
        t = time.perf_counter()
        got = s.add_point(tuple(b)).mask
        sync()
        ours.append(time.perf_counter() - t)
        agree.append(float((want[0] == got).mean()))
    ref_ms, ours_ms = 1000 * float(np.median(ref[1:])), 1000 * float(np.median(ours[1:]))
    return ("decoder ms / correction click", ref_ms, ours_ms, ref_ms / ours_ms,
            f"logits fed back; mask agreement min {min(agree):.5f}")


def _default_model(image, device, clicks) -> tuple:
    """The shipped default model on the same image: encoder ms per image; in the note, ms per click on a
    small disc with the full view alone and with a new zoom window (its encoder pass included)."""
    from .embeddings import embed
    from .models import load_model
    from .session import Session

    model = load_model("default", device=device)
    enc = _median_ms(lambda: embed(image, model), 3)
    n = image.shape[0]
    image = image.copy()
    rr, cc = np.ogrid[:n, :n]
    image[(rr - n / 2) ** 2 + (cc - n / 3) ** 2 < (n / 30) ** 2] = 230  # an object small enough to zoom into
    s = Session(model, image, embeddings=embed(image, model))

    def click(zoom: bool):
        s.zoom = zoom
        s.reset()
        s._zoom_cache.clear()  # every click a new window, as on a new object
        s.add_point((n / 2, n / 3))

    dec = _median_ms(lambda: click(False), clicks)
    dz = _median_ms(lambda: click(True), clicks)
    return ("default model encoder ms / image", float("nan"), enc, float("nan"),
            f"{dec:.1f} ms per click, {dz:.1f} with a new zoom window")


def _micro_sam(model, image, pts, clicks, progress) -> list:
    """micro-sam's precompute and point-prompt path on the same weights (skipped when not importable)."""
    try:
        import torch
        from micro_sam import prompt_based_segmentation as pbs
        from micro_sam import util
    except Exception as e:  # noqa: BLE001 - any import problem means "not available here"
        return [("micro-sam", float("nan"), float("nan"), float("nan"), f"not available ({type(e).__name__})")]
    arch = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}.get(model.sam.image_encoder.patch_embed.proj.out_channels)
    if arch is None:
        return [("micro-sam", float("nan"), float("nan"), float("nan"), "only for official SAM sizes")]
    progress("micro-sam: precompute_image_embeddings and segment_from_points on the same weights ...")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "w.pth"
        torch.save(model.sam.state_dict(), ckpt)
        predictor = util.get_sam_model(model_type=arch, checkpoint_path=str(ckpt), device=str(model.device))
        t = time.perf_counter()
        emb = util.precompute_image_embeddings(predictor, image, ndim=2, verbose=False)
        enc_ms = (time.perf_counter() - t) * 1000
        util.set_precomputed(predictor, emb)
        cycle = itertools.cycle(pts)

        def click():  # micro-sam takes (row, col) points
            pbs.segment_from_points(predictor, next(cycle)[None], np.array([1]), multimask_output=True)

        dec_ms = _median_ms(click, clicks)
    return [("micro-sam encoder ms / image", enc_ms, float("nan"), float("nan"), "one image"),
            ("micro-sam decoder ms / click", dec_ms, float("nan"), float("nan"), "")]


def table(info: dict) -> str:
    """The rows as a text table, with the ratio reference / promptseg."""
    head = (f"promptseg bench — {info['arch']} on {info['device']} ({info['precision']}), {info['size']}² images, "
            f"{info['torch_threads']} torch threads")
    lines = [head, f"{'':32s} {'reference':>11s} {'promptseg':>11s} {'ratio':>7s}  note"]
    for what, ref, ours, ratio, note in info["rows"]:
        fmt = lambda v: "—" if v != v else f"{v:.1f}"  # noqa: E731 - NaN prints as a dash
        lines.append(f"{what:32s} {fmt(ref):>11s} {fmt(ours):>11s} {fmt(ratio):>7s}  {note}")
    return "\n".join(lines)
