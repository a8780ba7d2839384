"""Reading images and writing label images (TIFF, PNG/JPEG, (OME-)Zarr, NIfTI).

Arrays are in napari order: ``(z, y, x)`` for volumes, ``(y, x)`` for 2D images and ``(y, x, c)``
for RGB/RGBA images. This package needs neither torch nor napari.
"""

from promptseg.io.meta import SUPPORTED_READ, SUPPORTED_WRITE, ImageMeta
from promptseg.io.pyramid import pyramid_levels, read_image_or_pyramid, read_pyramid
from promptseg.io.readers import read_image
from promptseg.io.writers import write_labels

__all__ = ["ImageMeta", "SUPPORTED_READ", "SUPPORTED_WRITE", "pyramid_levels", "read_image", "read_image_or_pyramid", "read_pyramid", "write_labels"]
