"""Parity of promptseg with segment_anything.SamPredictor on a full-size ViT-B.

Random ViT-B weights (seeded) are saved as an official-format ``.pth`` (a plain state dict). The same file
is loaded by ``promptseg.load_model("sam_vit_b", checkpoint=...)`` and by
``segment_anything.sam_model_registry["vit_b"]``; both answer (a) one positive point, (b) one box,
(c) that box and then a negative point with the first call's best low-res logits fed back, on RGB uint8
images of several sizes and aspect ratios. Reports pixel agreement, mask fractions (a degenerate mask
would make agreement meaningless), cosine similarity of the embeddings (promptseg stores fp16) and
timings side by side, in one process.

    python benchmarks/parity_vit_b.py [--sizes 300x500,1024x700] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from segment_anything import SamPredictor, sam_model_registry

import promptseg as ps


def test_image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = (rng.random((h, w, 3)) * 70).astype(np.uint8)
    rr, cc = np.mgrid[:h, :w]
    img[(rr - h // 2) ** 2 + (cc - w // 3) ** 2 < (min(h, w) // 5) ** 2] = (210, 120, 90)
    img[h // 8 : h // 4, w // 2 : (3 * w) // 4] = (60, 200, 230)
    return img


def run(sizes, device="cpu"):
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp())
    ckpt = tmp / "sam_vit_b_random.pth"
    torch.save(sam_model_registry["vit_b"]().state_dict(), ckpt)
    ref_model = sam_model_registry["vit_b"](checkpoint=str(ckpt)).to(device).eval()
    model = ps.load_model("sam_vit_b", checkpoint=ckpt, device=device)
    rows = []
    for h, w in sizes:
        img = test_image(h, w, seed=h + w)
        pred = SamPredictor(ref_model)
        t0 = time.perf_counter()
        pred.set_image(img)
        t_ref_embed = time.perf_counter() - t0
        t0 = time.perf_counter()
        store = ps.embed(img, model)
        t_embed = time.perf_counter() - t0
        a = pred.features.flatten().double()
        b = torch.as_tensor(store.get(0).astype(np.float32)).flatten().double()
        cos = float(torch.dot(a, b) / (a.norm() * b.norm()))

        pt = (h * 0.5, w / 3)
        t0 = time.perf_counter()
        masks, scores, _ = pred.predict(point_coords=np.array([[pt[1], pt[0]]]), point_labels=np.array([1]))
        t_ref_click = time.perf_counter() - t0
        ref_a = masks[int(np.argmax(scores))]
        s = ps.Session(model, img, embeddings=store)
        s.add_point((0, 0))  # warm the slice's feature tensor, then time a fresh object
        s.reset()
        s = ps.Session(model, img, embeddings=store)
        t0 = time.perf_counter()
        got_a = s.add_point(pt).mask
        t_click = time.perf_counter() - t0

        box_xy = np.array([w * 0.15, h * 0.3, w * 0.55, h * 0.7])
        m1, _, low1 = pred.predict(box=box_xy, multimask_output=False)
        s = ps.Session(model, img, embeddings=store)
        got_b = s.add_box((h * 0.3, w * 0.15), (h * 0.7, w * 0.55)).mask.copy()
        neg = (h * 0.5, w * 0.5)
        m2, _, _ = pred.predict(point_coords=np.array([[neg[1], neg[0]]]), point_labels=np.array([0]), box=box_xy,
                                mask_input=low1, multimask_output=False)
        got_c = s.add_point(neg, positive=False).mask
        for case, ref, got in (("point", ref_a, got_a), ("box", m1[0], got_b), ("box+negative", m2[0], got_c)):
            rows.append(dict(size=f"{h}x{w}", case=case, agreement=float((ref == got).mean()),
                             differing_pixels=int((ref != got).sum()), ref_fraction=float(ref.mean()),
                             embedding_cosine=cos))
        rows[-3].update(ref_set_image_s=t_ref_embed, promptseg_embed_s=t_embed, ref_predict_ms=1e3 * t_ref_click,
                        promptseg_add_point_ms=1e3 * t_click)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="300x500,1024x700,700x1024")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json")
    args = ap.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    rows = run(sizes, args.device)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} torch threads, device {args.device}")
    print(f"{'size':<10} {'case':<13} {'agreement':>10} {'diff px':>8} {'mask frac':>9} {'emb cos':>9}")
    for r in rows:
        print(f"{r['size']:<10} {r['case']:<13} {r['agreement']:>10.6f} {r['differing_pixels']:>8d} {r['ref_fraction']:>9.3f} {r['embedding_cosine']:>9.7f}")
    for r in rows:
        if "ref_set_image_s" in r:
            print(f"{r['size']:<10} set_image {r['ref_set_image_s']:.2f} s vs embed {r['promptseg_embed_s']:.2f} s; "
                  f"predict {r['ref_predict_ms']:.0f} ms vs add_point {r['promptseg_add_point_ms']:.0f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    worst = min(r["agreement"] for r in rows)
    print(f"worst agreement {worst:.6f} ({'PASS' if worst >= 0.999 else 'FAIL'} at >= 0.999)")


if __name__ == "__main__":
    main()
