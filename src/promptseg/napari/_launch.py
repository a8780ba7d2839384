"""``promptseg annotate``: open napari with an image (or a sample) and the Annotator docked."""

from __future__ import annotations


def launch(image: str | None = None, *, sample: str | None = None, model: str = "default", checkpoint: str | None = None,
           device: str = "auto", run: bool = True):
    """Open a viewer, load ``image`` (a path, via napari's readers and promptseg's) or a bundled ``sample``,
    dock the Annotator with the model chosen, and start embedding. Returns ``(viewer, widget)``.

    ``run=False`` returns without entering the Qt event loop (for scripts and tests).
    """
    import napari

    viewer = napari.Viewer(title="promptseg")
    if sample:
        viewer.open_sample("promptseg", sample)
    elif image:
        viewer.open(image)
    _, widget = viewer.window.add_plugin_dock_widget("promptseg", "promptseg Annotator")
    widget._model.value = model
    if checkpoint:
        widget._checkpoint.value = checkpoint
    widget._device.value = device
    widget.reset_choices()
    if sample or image:
        widget.start()
    if run:
        napari.run()
    return viewer, widget
