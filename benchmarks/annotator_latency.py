"""Click-to-repaint latency of the napari Annotator (run under Xvfb on a server).

    xvfb-run -a python benchmarks/annotator_latency.py [--clicks 50] [--model default] [--click-threads N]

For a 1024x1024 image and a 200x512x512 volume, with the embeddings computed first, it adds points to
the ``prompt points`` layer exactly as a click in add mode does and measures the time until the canvas
has drawn the first frame with the repainted ``current object`` layer (the viewer window is shown) and,
until the frame after the deferred zoom and edge steps (``Session.refine``) is drawn. The current
object is cleared after every 5 clicks, so each click carries 1-5 prompts with the previous logits fed
back; the same clicks run with zoom off and on. Side by side, in the same process and without a viewer:
``segment_anything.SamPredictor.predict`` and ``Session.add_point`` on the same weights, image and clicks,
back to back and 0.3 s apart (as a person clicks), each on one thread and on torch's count, with the
ratio of medians (reference / promptseg) at the same thread count and as each runs by default.
``--click-threads N`` sets ``PromptModel.click_threads`` for the viewer cases (default: as shipped).
"""

from __future__ import annotations

import argparse
import os
import platform
from itertools import product
import tempfile
import time

import numpy as np
import torch
from qtpy.QtWidgets import QApplication
from segment_anything import SamPredictor

import napari
import promptseg as ps
from promptseg.models.model import torch_threads


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


def run_case(name, data, clicks, model, rng, zoom=True, click_threads=None):
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
    w.session.model.click_threads = click_threads
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


def side_by_side(model, img, clicks):
    """SamPredictor.predict and Session.add_point on the same clicks, no viewer.

    Returns {(call, torch threads, pause s): ms per click}. ``img`` is uint8, which both sides
    preprocess the same way.
    """
    pred = SamPredictor(model.sam)
    pred.set_image(np.repeat(img[..., None], 3, axis=-1))
    session = ps.Session(model, img, zoom=False, edges=False)  # SamPredictor's work: the decoder, no edge step
    ref = {}
    for pause in (0.0, 0.3):  # back to back, and 0.3 s apart as a person clicks
        for who, n in product(("SamPredictor.predict", "Session.add_point"), sorted({1, torch.get_num_threads()})):
            model.click_threads = n
            times = []
            with torch_threads(n if who == "SamPredictor.predict" else None):
                for i, (r, c) in enumerate(clicks):
                    if i % 5 == 0:  # a new object: SAM's recipe, one multimask click, then logits fed back
                        session.reset()
                        xy, low = [], None
                    xy.append([c, r])
                    time.sleep(pause)
                    t = time.perf_counter()
                    if who == "Session.add_point":
                        session.add_point((r, c))
                    else:
                        _, iou, lows = pred.predict(point_coords=np.array(xy), point_labels=np.ones(len(xy)),
                                                    mask_input=low, multimask_output=low is None)
                        low = lows[[int(np.argmax(iou))]]
                    times.append(1e3 * (time.perf_counter() - t))
            ref[who, n, pause] = np.array(times)
    model.click_threads = None
    return ref


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=50)
    ap.add_argument("--model", default="default")
    ap.add_argument("--click-threads", type=int, default=None, help="PromptModel.click_threads in the viewer")
    args = ap.parse_args()
    os.environ.setdefault("PROMPTSEG_CACHE", tempfile.mkdtemp())
    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    img = _image2d(rng)
    vol = np.stack([_image2d(np.random.default_rng(k))[::2, ::2] for k in range(200)])
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, model {args.model}, viewer click_threads {args.click_threads}")
    # first, in a clean process: after the viewers were closed, the calls on two threads ran 2-3x slower
    # (until a gc.collect() and gc.freeze())
    clicks = [tuple(int(v) for v in rng.integers(50, 974, size=2)) for _ in range(args.clicks)]
    ref = side_by_side(ps.load_model(args.model, device="cpu"), img, clicks)
    rows = []
    for name, data in (("image 1024x1024", img), ("volume 200x512x512", vol)):
        for zoom in (False, True):
            embed_s, first, final = run_case(name, data, args.clicks, args.model, np.random.default_rng(1), zoom,
                                             args.click_threads)
            rows.append((f"{name}, zoom {'on' if zoom else 'off'}", embed_s, first, final))
    print("first = click to the first frame with the new mask; refined = to the frame after the deferred zoom "
          "and edge steps")
    print(f"{'case':<32} {'embed s':>8} {'first median':>13} {'first p95':>10} {'refined median':>14} {'refined p95':>11}")
    for name, embed_s, first, final in rows:
        print(f"{name:<32} {embed_s:>8.1f} {np.median(first):>13.1f} {np.percentile(first, 95):>10.1f} "
              f"{np.median(final):>14.1f} {np.percentile(final, 95):>11.1f}")
    with ps.load_model(args.model, device="cpu").threads_for_click():
        shipped = torch.get_num_threads()
    print(f"\nno viewer, 1024x1024, the same clicks on both sides (1-5 points per object, logits fed back);"
          f" as shipped, a click runs on {shipped} thread(s)")
    print(f"{'call':<24} {'threads':>8} {'pause s':>8} {'median':>8} {'p95':>8} {'ratio':>6}")
    for (who, n, pause), t in ref.items():
        ratio = np.median(ref["SamPredictor.predict", n, pause]) / np.median(t)  # at the same thread count
        print(f"{who:<24} {n:>8} {pause:>8.1f} {np.median(t):>8.1f} {np.percentile(t, 95):>8.1f} {ratio:>6.2f}")
    for pause in (0.0, 0.3):
        ratio = np.median(ref["SamPredictor.predict", torch.get_num_threads(), pause]) / np.median(
            ref["Session.add_point", shipped, pause])
        print(f"as each runs by default, pause {pause} s: SamPredictor / Session = {ratio:.2f}")

if __name__ == "__main__":
    main()
