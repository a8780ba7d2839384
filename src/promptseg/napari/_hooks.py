"""napari (npe2) contributions of promptseg: readers, the labels writer and the sample data.

The manifest ``napari.yaml`` points at the functions here. They return napari *layer data
tuples* ``(data, kwargs, layer_type)``; napari is not imported. Arrays are in napari order
(``(z, y, x)``, ``(y, x)`` or ``(y, x, c)``) and ``scale`` is the pixel spacing in that order, so
layers of one image line up in world coordinates. Every image layer carries the
:class:`~promptseg.io.ImageMeta` it came with in ``metadata["promptseg_meta"]``; labels layers
derived from it keep it there so that the writer can save them with the source's geometry (e.g.
a NIfTI file's affine).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from promptseg.io import ImageMeta, pyramid_levels, read_image, read_pyramid, write_labels

LayerData = tuple[Any, dict, str]
#: Files and folders the reader opens (matched case-insensitively, longest first).
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".ome.zarr")
#: Whole-slide / pyramidal TIFF files, opened as a lazy multiscale image.
PYRAMID_SUFFIXES = (".svs", ".ome.tif", ".ome.tiff", ".tif", ".tiff")
PROJECT_SUFFIX = ".promptseg"
#: Display window of the CT sample: soft tissue, Hounsfield units.
CT_WINDOW = (-160.0, 240.0)


def _suffix(path: str, suffixes: tuple[str, ...]) -> str | None:
    name = Path(path).name.lower()
    return next((s for s in suffixes if name.endswith(s)), None)


def get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader hook: a reader function for `path`, or None when promptseg does not handle it.

    Parameters
    ----------
    path : str or list of str
        A NIfTI file (``.nii``, ``.nii.gz``), an OME-Zarr folder (``.ome.zarr``), a pyramidal TIFF
        (``.svs``, or ``.tif``/``.tiff`` holding more than one resolution level) or a promptseg
        project folder (``.promptseg``). A list is accepted when it holds exactly one path.

    Returns
    -------
    callable or None
        ``reader(path) -> [(data, kwargs, "image" | "labels")]``.
    """
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    path = os.fspath(path)
    if _suffix(path, (PROJECT_SUFFIX,)):
        return read_project if (Path(path) / "project.json").is_file() else None
    if _suffix(path, PYRAMID_SUFFIXES):
        pyramid = Path(path).is_file() and (path.lower().endswith(".svs") or pyramid_levels(path) > 1)
        return read_pyramid_layer if pyramid else None
    ext = _suffix(path, IMAGE_SUFFIXES)
    if ext is None:
        return None
    if ext == ".ome.zarr" and not Path(path).is_dir():
        return None
    if ext != ".ome.zarr" and not Path(path).is_file():
        return None
    return read_image_layer


def _unwrap(path: Any) -> str:
    return os.fspath(path[0] if isinstance(path, (list, tuple)) else path)


def read_image_layer(path: str | list[str]) -> list[LayerData]:
    """Read a NIfTI file or OME-Zarr folder as one image layer.

    Returns
    -------
    list of tuple
        ``[(data, kwargs, "image")]``: `data` in napari order (NIfTI: a ``(z, y, x)`` numpy array;
        OME-Zarr: level 0, lazily), ``kwargs`` with ``name`` (the file name without its
        extension), ``scale`` (the spacing), ``rgb`` and ``metadata = {"promptseg_meta": ImageMeta,
        "promptseg_path": str}``.
    """
    path = _unwrap(path)
    data, meta = read_image(path)
    ext = _suffix(path, IMAGE_SUFFIXES) or ""
    name = Path(path).name
    return [(data, _image_kwargs(name[: len(name) - len(ext)] or name, meta, path), "image")]


def _image_kwargs(name: str, meta: ImageMeta, path: str) -> dict:
    """Layer kwargs of an image read from ``path``: name, scale (the spacing), rgb and promptseg metadata."""
    return {
        "name": name,
        "scale": tuple(float(s) for s in meta.spacing),
        "rgb": meta.rgb,
        "metadata": {"promptseg_meta": meta, "promptseg_path": str(path)},
    }


def read_pyramid_layer(path: str | list[str]) -> list[LayerData]:
    """Read a pyramidal TIFF / SVS as one lazy multiscale image layer (levels read on demand).

    Returns
    -------
    list of tuple
        ``[(levels, kwargs, "image")]`` with ``kwargs["multiscale"] = True`` and the same ``name``,
        ``scale``, ``rgb`` and ``metadata`` as :func:`read_image_layer`.
    """
    path = _unwrap(path)
    levels, meta = read_pyramid(path)
    return [(levels, {**_image_kwargs(Path(path).name.split(".")[0], meta, path), "multiscale": True}, "image")]


def read_project(path: str | list[str]) -> list[LayerData]:
    """Read a promptseg project folder as a labels layer named ``"committed objects"``.

    When the project's image file still exists, its :class:`~promptseg.io.ImageMeta` is read
    (lazily where the format allows) to give the layer the image's ``scale`` and the writer the
    image's geometry.

    Returns
    -------
    list of tuple
        ``[(labels, kwargs, "labels")]``, labels int32 with the project's shape (napari order);
        ``metadata = {"promptseg_project": str, "promptseg_meta": ImageMeta (when known),
        "promptseg_path": str (the image, when known)}``.
    """
    from promptseg.project import Project

    path = _unwrap(path)
    project = Project.open(path)
    metadata: dict[str, Any] = {"promptseg_project": str(project.path)}
    kwargs: dict[str, Any] = {"name": "committed objects", "metadata": metadata}
    meta = _source_meta(project.image.get("path"), project.shape)
    if meta is not None:
        kwargs["scale"] = tuple(float(s) for s in meta.spacing)
        metadata["promptseg_meta"] = meta
        metadata["promptseg_path"] = project.image["path"]
    return [(project.load_labels(), kwargs, "labels")]


def _source_meta(image_path: str | None, shape: tuple[int, ...]) -> ImageMeta | None:
    """The ImageMeta of a project's image, or None when it is gone, unreadable or another shape."""
    if not image_path or not Path(image_path).exists():
        return None
    try:
        data, meta = read_image(image_path, lazy=True)
    except Exception:  # the labels open anyway, only without the image's scale
        return None
    spatial = tuple(data.shape[:-1] if meta.rgb else data.shape)
    return meta if spatial == tuple(shape) else None


def write_labels_layer(path: str, data: Any, attributes: dict) -> list[str]:
    """npe2 single-layer writer: save a labels layer as TIFF, NIfTI or OME-Zarr.

    Parameters
    ----------
    path : str
        Destination ending in ``.tif``, ``.tiff``, ``.nii``, ``.nii.gz`` or ``.ome.zarr``.
    data : array_like
        The layer's labels, napari order (the first level of a multiscale layer).
    attributes : dict
        The layer's attributes. ``metadata["promptseg_meta"]`` (the source image's ImageMeta)
        gives the spacing and geometry, e.g. a NIfTI source's affine and header; without it the
        layer's ``scale`` is used as the spacing.

    Returns
    -------
    list of str
        ``[path]``.
    """
    if isinstance(data, (list, tuple)):  # multiscale: save full resolution
        data = data[0]
    ndim = len(data.shape)
    meta = (attributes.get("metadata") or {}).get("promptseg_meta")
    if not isinstance(meta, ImageMeta) or meta.ndim_spatial != ndim or len(meta.spacing) != ndim:
        scale = attributes.get("scale")
        spacing = tuple(float(s) for s in scale) if scale is not None else (1.0,) * ndim
        meta = ImageMeta(spacing=spacing[-ndim:], axes="zyx"[3 - ndim:])
    return [str(write_labels(path, data, meta))]


def _sample(name: str, **extra: Any) -> list[LayerData]:
    from promptseg.samples import load_sample

    image, meta = load_sample(name)
    kwargs = {
        "name": name,
        "scale": tuple(float(s) for s in meta.spacing),
        "metadata": {"promptseg_meta": meta, "promptseg_sample": name},
        **extra,
    }
    return [(image, kwargs, "image")]


def sample_ct_lesions() -> list[LayerData]:
    """Synthetic abdominal CT, int16 HU ``(48, 192, 192)``, scale ``(2.5, 0.8, 0.8)`` mm."""
    return _sample("ct_lesions", contrast_limits=CT_WINDOW)


def sample_ihc() -> list[LayerData]:
    """Immunohistochemistry pathology image, RGB uint8 ``(512, 512, 3)``."""
    return _sample("ihc", rgb=True)


def sample_coins() -> list[LayerData]:
    """Greek coins, grey uint8 ``(303, 384)`` (a microscopy-like 2D image)."""
    return _sample("coins")


def sample_slide() -> list[LayerData]:
    """Synthetic H&E-like whole slide, RGB uint8 ``(20000, 20000, 3)``, 6 lazy pyramid levels."""
    return _sample("slide", rgb=True, multiscale=True)


def sample_large_2d() -> list[LayerData]:
    """Synthetic fluorescence nuclei, uint16 ``(4096, 4096)``, scale 0.325 micrometre."""
    return _sample("large_2d")
