"""Multi-resolution (pyramidal) images: tiled TIFF, OME-TIFF, Aperio SVS and OME-Zarr, read lazily.

:func:`read_pyramid` returns every level as a lazy array (tifffile's zarr interface or the OME-Zarr
datasets themselves), level 0 first, in napari order ``(y, x)`` or ``(y, x, c)`` — the list napari
takes as a multiscale image and :func:`promptseg.embed` / :class:`promptseg.Session` take as a pyramid.
Nothing is read but the metadata until a region is indexed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from promptseg.errors import ImageIOError, PromptsegError
from promptseg.io.meta import ImageMeta, SUPPORTED_READ, format_of, one_line, split_extension
from promptseg.io.readers import LazyView, _read_zarr, _tiff_layout, _unsupported


def read_pyramid(path: str | Path) -> tuple[list[Any], ImageMeta]:
    """Read all resolution levels of a 2D image.

    Parameters
    ----------
    path : a ``.tif``/``.tiff``/``.svs`` file (one level for a plain TIFF) or an OME-Zarr folder.

    Returns
    -------
    levels : list of lazy arrays, level 0 (full resolution) first, each (y, x) or (y, x, c).
    meta : ImageMeta of level 0 (spacing, unit, axes); ``extra["levels"]`` holds every level's shape.

    Raises
    ------
    ImageIOError
        Missing or corrupt file, or an image that is not 2D / RGB.
    """
    path = Path(path)
    ext = split_extension(path, SUPPORTED_READ, "read")
    if not path.exists():
        raise ImageIOError(f"cannot read {path}: no such file or folder")
    fmt = format_of(ext)
    if fmt not in ("tiff", "zarr"):
        raise ImageIOError(f"cannot read {path} as a pyramid: only TIFF/SVS and OME-Zarr hold resolution levels")
    try:
        levels, meta = (_tiff_levels if fmt == "tiff" else _zarr_levels)(path)
    except PromptsegError:
        raise
    except Exception as exc:
        raise ImageIOError(f"cannot read {path}: {one_line(exc)}") from exc
    if meta.axes not in ("yx", "yxc"):
        raise _unsupported(path, f"a pyramid needs a 2D or RGB image, this one has axes {meta.axes!r}")
    meta.extra["levels"] = [tuple(int(v) for v in lv.shape) for lv in levels]
    return levels, meta


def read_image_or_pyramid(path: str | Path, *, lazy: bool = False) -> tuple[Any, ImageMeta]:
    """A TIFF/SVS with several resolution levels as :func:`read_pyramid` (a list of lazy levels), anything
    else as :func:`~promptseg.io.read_image`; TIFF/SVS files are read lazily either way."""
    from promptseg.io.readers import read_image

    tiff = str(path).lower().endswith((".tif", ".tiff", ".svs"))
    if tiff and Path(path).is_file() and pyramid_levels(path) > 1:
        return read_pyramid(path)
    return read_image(path, lazy=lazy or tiff)


def pyramid_levels(path: str | Path) -> int:
    """How many resolution levels a TIFF/SVS file holds (1 for a plain TIFF); 0 if it is not readable."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return len(tif.series[0].levels) if tif.series else 0
    except Exception:
        return 0


def _tiff_levels(path: Path) -> tuple[list[Any], ImageMeta]:
    import tifffile
    import zarr

    with tifffile.TiffFile(path) as tif:
        axes, order, out_axes, spacing, unit = _tiff_layout(tif, path)
        n = len(tif.series[0].levels)
    levels = []
    for k in range(n):
        arr = zarr.open(tifffile.imread(path, aszarr=True, series=0, level=k, squeeze=True), mode="r")
        levels.append(arr if order == tuple(range(len(order))) else LazyView(arr, order))
    meta = ImageMeta(spacing=spacing, axes=out_axes, unit=unit, source_format="tiff", path=str(path),
                     extra={"source_axes": axes})
    return levels, meta


def _zarr_levels(path: Path) -> tuple[list[Any], ImageMeta]:
    import zarr

    first, meta = _read_zarr(path, "zarr", True)
    node = zarr.open(path, mode="r")
    if isinstance(node, zarr.Array):
        return [first], meta
    attrs = dict(node.attrs)
    attrs = attrs.get("ome", attrs)
    if "multiscales" not in attrs and "0" in node:  # bioformats2raw layout
        node = node["0"]
        attrs = dict(node.attrs)
        attrs = attrs.get("ome", attrs)
    levels = [first]
    for ds in attrs["multiscales"][0]["datasets"][1:]:
        arr = node[ds["path"]]
        levels.append(LazyView(arr, first.order) if isinstance(first, LazyView) else arr)
    return levels, meta
