"""promptseg's napari plugin: readers, writer, sample data (``_hooks``) and the annotator widget.

Everything that imports napari, Qt or magicgui lives in this package; the manifest is
``promptseg/napari.yaml``. Modules are imported lazily by napari through the manifest's
``python_name`` entries; importing this package imports torch (see ``_keep_triton_out``).
"""


def _keep_triton_out() -> None:
    """Block the import of triton when there is no CUDA device.

    torchvision (imported by segment-anything) imports ``torch._dynamo``, which imports triton when it is
    installed (CUDA builds of torch ship it). triton bundles LLVM; loaded after Mesa's software OpenGL
    (llvmpipe, which napari uses on machines without a GPU driver, e.g. under Xvfb or VNC) it crashes the
    process with a segmentation fault. Without CUDA triton has no use, and torch works without it.
    """
    import sys

    if "triton" in sys.modules:
        return
    import torch

    if not torch.cuda.is_available():
        sys.modules["triton"] = None  # `import triton` now raises ImportError, which torch handles


_keep_triton_out()
