"""Where the wide view (``promptseg.wide``) changes a first click on real images (no truth: drawn to look at).

    python benchmarks/wide_real_images.py [--png OUT]

A 5-point grid of first clicks (the centre and the four points at a quarter of each side) on 20 of
scikit-image's bundled images, shipped model, each click in a new Session with the wide view and with
``wide.look`` replaced by a pass-through. Prints the clicks whose masks differ, with both areas, and
draws them side by side to ``--png``.
"""

from __future__ import annotations

import argparse

import numpy as np
import skimage.data
import torch

import promptseg as ps
from promptseg import wide

IMAGES = ["camera", "moon", "cell", "horse", "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
          "retina", "microaneurysms", "hubble_deep_field", "brick", "grass", "gravel", "page", "text", "clock",
          "coins", "binary_blobs"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--png", default="benchmarks/results/wide_real_images.png")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = ps.load_model("default", device="cpu")
    look, changed, n = wide.look, [], 0
    for name in IMAGES:
        image = getattr(skimage.data, name)()
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        h, w = image.shape[:2]
        for fr, fc in ((0.5, 0.5), (0.25, 0.25), (0.75, 0.75), (0.25, 0.75), (0.75, 0.25)):
            rc, n = (int(h * fr), int(w * fc)), n + 1
            wide.look = look
            with_wide = ps.Session(model, image).add_point(rc).mask.copy()
            wide.look = lambda session, k, state, rc: state
            without = ps.Session(model, image).add_point(rc).mask.copy()
            if (with_wide != without).any():
                changed.append((name, image, rc, with_wide, without))
                print(f"{name} {rc}: {with_wide.sum()} px with the wide view, {without.sum()} px without")
    wide.look = look
    print(f"{len(changed)} of {n} first clicks changed")
    if changed and args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(len(changed), 2, figsize=(7, 3.5 * len(changed)), squeeze=False)
        for i, (name, image, rc, a, b) in enumerate(changed):
            for j, mask in enumerate((a, b)):
                ax[i, j].imshow(image, cmap="gray")
                ax[i, j].contour(mask, [0.5], colors="red", linewidths=1)
                ax[i, j].plot(rc[1], rc[0], "c+", ms=12)
                ax[i, j].set_title(f"{name}, {'wide view' if j == 0 else 'without'}", fontsize=9)
                ax[i, j].set_axis_off()
        fig.tight_layout()
        fig.savefig(args.png, dpi=45)


if __name__ == "__main__":
    main()
