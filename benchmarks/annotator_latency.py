"""Click-to-repaint latency of the napari Annotator (run under Xvfb on a server).

    xvfb-run -a python benchmarks/annotator_latency.py [--clicks 50] [--model default]

For a 1024x1024 image and a 200x512x512 volume, with the embeddings computed first, it adds points to
the ``prompt points`` layer exactly as a click in add mode does and measures the time until the canvas
has drawn the first frame with the repainted ``current object`` layer (the viewer window is shown) and,
with zoom on, until the frame after the deferred zoom step (``Session.refine``) is drawn. The current
object is cleared after every 5 clicks, so each click carries 1-5 prompts with the previous logits fed
back; the same clicks run with zoom off and on. Side by side, in the same process:
``segment_anything.SamPredictor.predict`` on the same weights and image (the reference's decoder call
alone, no viewer).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import torch
from qtpy.QtWidgets import QApplication
from segment_anything import SamPredictor

import napari


def _wait(app, cond, limit=1800):
    t = time.time()
    while not cond() and time.time() - t < limit:
        app.processEvents()
        time.sleep(0.01)


def _image2d(rng):
    img = (rng.random((1024, 1024)) * 40).astype(np.uint8)
    rr, cc = np.mgrid[:1024, :1024]
    for _ in range(30):
        r, c, rad = rng.integers(60, 964), rng.integers(60, 964), rng.integers(20, 60)
        img[(rr - r) ** 2 + (cc - c) ** 2 < rad**2] = rng.integers(120, 255)
    return img


def run_case(name, data, clicks, model, rng, zoom=True):
    app = QApplication.instance() or QApplication([])
    viewer = napari.Viewer(show=True)
    viewer.add_image(data, name=name)
    _, w = viewer.window.add_plugin_dock_widget("promptseg", "promptseg Annotator")
    w._model.value = model
    w.reset_choices()
    t0 = time.perf_counter()
    w.start()
    n = 1 if data.ndim == 2 else data.shape[0]
    _wait(app, lambda: w.session is not None and len(w.embedded) == n)
    embed_s = time.perf_counter() - t0
    w._zoom.value = zoom and w.session.zoom
    draws, marks = [], []
    viewer.window._qt_viewer.canvas._scene_canvas.events.draw.connect(
        lambda e: draws.append(time.perf_counter()), position="last")  # a frame was rendered
    timer = w._refine_timer
    timer.timeout.disconnect()
    for f in (lambda: marks.append(time.perf_counter()), w._refine, lambda: marks.append(time.perf_counter())):
        timer.timeout.connect(f)  # when the deferred zoom step starts and ends
    first, final, z = [], [], 0
    for i in range(clicks):
        if i % 5 == 0:
            w.clear()
        pt = [int(v) for v in rng.integers(50, np.array(data.shape[-2:]) - 50)]
        if data.ndim == 3:
            z = int(rng.integers(0, data.shape[0])) if i % 5 == 0 else z
            viewer.dims.current_step = (z, 0, 0)
            pt = [z] + pt
        _wait(app, lambda: not w.session.needs_refine)
        app.processEvents()
        draws.clear()
        marks.clear()
        t = time.perf_counter()
        w.layers.points.add([pt])
        pending = w.session.needs_refine
        app.processEvents()  # the frame with the full view's mask is drawn and shown here
        shown = time.perf_counter()
        while pending and len(marks) < 2 and time.perf_counter() - t < 30:
            app.processEvents()  # the zoom step
        while pending and not draws[-1] > marks[-1] and time.perf_counter() - marks[-1] < 0.2:
            app.processEvents()  # the frame with the zoomed mask (none when the zoom step changed nothing)
        end = time.perf_counter() if pending and draws[-1] > marks[-1] else (marks[-1] if pending else shown)
        if pending and marks and draws and draws[0] < marks[0]:
            shown = marks[0]  # the first frame was on screen before the zoom step began
        first.append(1e3 * (shown - t))
        final.append(1e3 * (end - t))
    viewer.close()
    return embed_s, np.array(first), np.array(final)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=50)
    ap.add_argument("--model", default="default")
    args = ap.parse_args()
    os.environ.setdefault("PROMPTSEG_CACHE", tempfile.mkdtemp())
    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    img = _image2d(rng)
    vol = np.stack([_image2d(np.random.default_rng(k))[::2, ::2] for k in range(200)])
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, model {args.model}")
    rows = []
    for name, data in (("image 1024x1024", img), ("volume 200x512x512", vol)):
        for zoom in (False, True):
            embed_s, first, final = run_case(name, data, args.clicks, args.model, np.random.default_rng(1), zoom)
            rows.append((f"{name}, zoom {'on' if zoom else 'off'}", embed_s, first, final))
    import promptseg as ps

    sam = ps.load_model(args.model, device="cpu").sam
    pred = SamPredictor(sam)
    pred.set_image(np.repeat(img[..., None], 3, axis=-1))
    ref = []
    for _ in range(args.clicks):
        x, y = rng.integers(50, 974, size=2)
        t = time.perf_counter()
        pred.predict(point_coords=np.array([[x, y]]), point_labels=np.array([1]))
        ref.append(1e3 * (time.perf_counter() - t))
    ref = np.array(ref)
    print("first = click to the first frame with the new mask; zoomed = to the frame after the zoom step")
    print(f"{'case':<32} {'embed s':>8} {'first median':>13} {'first p95':>10} {'zoomed median':>14} {'zoomed p95':>11}")
    for name, embed_s, first, final in rows:
        print(f"{name:<32} {embed_s:>8.1f} {np.median(first):>13.1f} {np.percentile(first, 95):>10.1f} "
              f"{np.median(final):>14.1f} {np.percentile(final, 95):>11.1f}")
    print(f"{'SamPredictor.predict':<32} {'':>8} {np.median(ref):>13.1f} {np.percentile(ref, 95):>10.1f}   "
          "(reference, 1024x1024, same weights, no viewer)")


if __name__ == "__main__":
    main()
