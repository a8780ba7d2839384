"""A CT volume from a NIfTI file to a finished zarr embedding cache, end to end, against a serial reference.

    python benchmarks/volume_to_cache.py [--arch vit_b] [--device cuda] [--slices 300] [--batch 8]

The issue's goal: a 512×512×300 CT volume with ViT-B in ≤ 1.5 s on the GPU, reading, preprocessing,
encoding and writing overlapped. Timed from the file on disk to a closed cache in which every slice is
flagged done: ``promptseg.read_image`` (nibabel, lazy) then ``promptseg.embed(..., cache=...)`` (prefetching
reader threads, background writers, the chosen precision). Side by side in the same run, on the same
random weights and slices: segment-anything's ``SamPredictor.set_image`` slice by slice, each embedding
saved with ``np.save`` (the serial path a script would take), and the cosine similarity of the two.
Random weights (seed 0); the file is synthetic (HU-like noise and discs) and written before timing.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def write_volume(path: Path, slices: int, side: int = 512) -> None:
    import nibabel as nib

    rng = np.random.default_rng(0)
    vol = (rng.normal(40, 20, (side, side, slices))).astype(np.int16)  # x, y, z: NIfTI order
    rr, cc = np.mgrid[:side, :side]
    for z in range(slices):
        vol[(rr - side // 2) ** 2 + (cc - side // 3 - z % 50) ** 2 < (side // 6) ** 2, z] = 120
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 2.5, 1.0])), str(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="vit_b", choices=["vit_b", "vit_l", "vit_h", "tiny"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--batch", type=int, default=None, help="encoder batch (default: 8 on a GPU, 1 on the CPU)")
    ap.add_argument("--reference-slices", type=int, default=None, help="slices for the reference (default: all)")
    args = ap.parse_args()

    import torch
    from segment_anything import SamPredictor

    import promptseg as ps
    from promptseg.bench import _random_model
    from promptseg.io import read_image
    from promptseg.embeddings import Embedder

    folder = Path(tempfile.mkdtemp(prefix="promptseg_volume_"))
    path = folder / "ct.nii"  # uncompressed: gzip would be one single-threaded inflate of the whole file
    write_volume(path, args.slices)
    model = _random_model(args.arch, args.device, args.precision)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    ps.embed(np.zeros((2, 64, 64), np.int16), model, window=(-100, 200))  # warm-up outside the timing
    sync()

    t = time.perf_counter()
    image, meta = read_image(path, lazy=True)
    store = ps.embed(image, model, cache=folder / "cache.zarr", modality="ct", batch_size=args.batch)
    sync()
    ours = time.perf_counter() - t
    assert not store.missing()

    # the reference: SamPredictor.set_image per slice (same window, RGB uint8), np.save per embedding
    n_ref = min(args.reference_slices or args.slices, args.slices)
    predictor = SamPredictor(model.sam)
    model.fast = False  # segment-anything's own attention
    intensity = Embedder(model, image, modality="ct").intensity  # the same window as embed's
    t = time.perf_counter()
    for z in range(n_ref):
        grey = intensity.apply(np.asarray(image[z]))
        predictor.set_image(grey if grey.ndim == 3 else np.repeat(grey[..., None], 3, axis=-1))
        np.save(folder / f"ref{z}.npy", predictor.get_image_embedding().cpu().numpy())
    sync()
    ref = (time.perf_counter() - t) * args.slices / n_ref
    a = np.asarray(store.get(n_ref - 1), np.float32).ravel()
    b = np.load(folder / f"ref{n_ref - 1}.npy").astype(np.float32).ravel()
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    print(f"machine: {platform.machine()}, device {model.device}, torch {torch.__version__}, {args.arch}, "
          f"precision {model.precision}, {args.slices} slices of 512², intensity {intensity.as_dict()}")
    print(f"promptseg read_image + embed -> zarr: {ours:.2f} s ({args.slices / ours:.1f} slices/s)")
    print(f"reference set_image + np.save:        {ref:.2f} s"
          f"{'' if n_ref == args.slices else f' (extrapolated from {n_ref} slices)'}")
    print(f"ratio {ref / ours:.1f}x; cosine of the last reference slice's embeddings {cos:.6f}")


if __name__ == "__main__":
    main()
