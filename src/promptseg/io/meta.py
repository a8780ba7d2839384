"""Image metadata and file-format detection shared by the readers and writers.

Coordinate convention used everywhere in :mod:`promptseg.io`: arrays are in *napari order*, i.e.
the slowest spatial axis first -- ``(z, y, x)`` for volumes, ``(y, x)`` for 2D images, and
``(y, x, c)`` for RGB/RGBA images (channels last).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from promptseg.errors import ImageIOError

#: Extensions :func:`promptseg.io.read_image` understands (matched case-insensitively).
SUPPORTED_READ: tuple[str, ...] = (
    ".tif", ".tiff", ".svs", ".png", ".jpg", ".jpeg", ".zarr", ".ome.zarr", ".nii", ".nii.gz",
)
#: Extensions :func:`promptseg.io.write_labels` understands (matched case-insensitively).
SUPPORTED_WRITE: tuple[str, ...] = (".tif", ".tiff", ".nii", ".nii.gz", ".zarr", ".ome.zarr")

# Map from extension to the format name stored in ImageMeta.source_format.
_FORMATS = {
    ".tif": "tiff", ".tiff": "tiff", ".svs": "tiff", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg",
    ".zarr": "zarr", ".ome.zarr": "zarr", ".nii": "nifti", ".nii.gz": "nifti",
}


@dataclass
class ImageMeta:
    """What promptseg knows about an image besides its pixels.

    Attributes
    ----------
    spacing : tuple of float
        Physical size of one pixel along each *spatial* axis, in napari order: ``(dz, dy, dx)`` or
        ``(dy, dx)``. 1.0 where the file does not say.
    axes : str
        Axes of the returned array, napari order: ``"yx"`` (grey 2D), ``"yxc"`` (RGB or RGBA,
        channels last) or ``"zyx"`` (volume or stack).
    unit : str or None
        Unit of `spacing` (``"mm"``, ``"micrometer"``, ...) when the file says, else None.
    affine : numpy.ndarray or None
        float64 voxel->world matrix of the *returned* array, 4x4 for 3D and 3x3 for 2D. Both its
        input (array index) and its output (world coordinate) are in napari order, so it can be
        passed straight to a napari layer's ``affine``; for a NIfTI file the world coordinates are
        the scanner (RAS+) coordinates reversed to ``(z, y, x)``. None when no more than `spacing`
        is known.
    source_format : str
        ``"tiff"``, ``"png"``, ``"jpeg"``, ``"zarr"``, ``"ome-zarr"``, ``"nifti"``, or ``"sample"``
        for :mod:`promptseg.samples`.
    path : str or None
        The file the image came from.
    extra : dict
        Format specific details, e.g. what :func:`~promptseg.io.write_labels` needs to write labels
        back in the source's own axis order and geometry (``"nifti_header"``, ...), or the
        ``"source_axes"`` of the file.

    Notes
    -----
    ``==`` compares spacing, axes, unit, source_format and path, not `affine` or `extra`.
    """

    spacing: tuple[float, ...]
    axes: str
    unit: str | None = None
    affine: np.ndarray | None = field(default=None, compare=False)  # arrays don't compare
    source_format: str = ""
    path: str | None = None
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def rgb(self) -> bool:
        """True when the last axis holds colour channels (RGB or RGBA)."""
        return self.axes.endswith("c")

    @property
    def ndim_spatial(self) -> int:
        """Number of spatial axes: 2 or 3."""
        return len(self.axes) - (1 if self.rgb else 0)


def split_extension(path: str | Path, supported: tuple[str, ...], action: str) -> str:
    """Return the (lower-case) supported extension of `path`, longest match first.

    Raises
    ------
    ImageIOError
        When the extension is not one of `supported`.
    """
    name = Path(path).name.lower()
    for ext in sorted(supported, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    raise ImageIOError(
        f"cannot {action} {path}: unsupported file extension (supported: {', '.join(supported)})"
    )


def format_of(ext: str) -> str:
    """Format name (``"tiff"``, ``"nifti"``, ...) of an extension returned by `split_extension`."""
    return _FORMATS[ext]


def one_line(exc: BaseException) -> str:
    """A one-line description of an exception, for use inside an ImageIOError message."""
    text = " ".join(str(exc).split()) or "no details"
    return f"{type(exc).__name__}: {text}"
