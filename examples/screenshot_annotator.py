"""Take a screenshot of the promptseg Annotator with segmented objects (run under Xvfb on a server).

    xvfb-run -a python examples/screenshot_annotator.py docs/annotator.png [--sample coins]

It drives the real plugin as a user would: opens a bundled sample in napari, docks the Annotator,
waits for the embedding, clicks on the image through the Points layer, commits one object and leaves a
second one in progress.
"""

from __future__ import annotations

import argparse
import time

from qtpy.QtWidgets import QApplication

from promptseg.napari._launch import launch

CLICKS = {"coins": [(124, 205), (196, 102)], "cell": [(300, 330), (150, 200)], "ihc": [(230, 300), (400, 150)]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output")
    ap.add_argument("--sample", default="coins", choices=sorted(CLICKS))
    ap.add_argument("--model", default="default")
    ap.add_argument("--checkpoint")
    args = ap.parse_args()
    viewer, widget = launch(sample=args.sample, model=args.model, checkpoint=args.checkpoint, run=False)
    app = QApplication.instance()
    start = time.time()
    while (widget.session is None or not widget.embedded) and time.time() - start < 600:
        app.processEvents()
        time.sleep(0.05)
    first, second = CLICKS[args.sample]
    widget.layers.points.add([list(first)])
    widget.commit()
    widget.layers.points.add([list(second)])
    viewer.window._qt_window.resize(1400, 900)
    for _ in range(10):
        app.processEvents()
        time.sleep(0.05)
    viewer.reset_view()
    for _ in range(10):
        app.processEvents()
        time.sleep(0.05)
    viewer.screenshot(args.output, canvas_only=False)
    print(f"wrote {args.output}")
    viewer.close()


if __name__ == "__main__":
    main()
