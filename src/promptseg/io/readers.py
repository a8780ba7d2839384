"""Read 2D/3D biomedical images into napari-order arrays: TIFF, PNG/JPEG, (OME-)Zarr and NIfTI.

Every array comes back in napari order (``(z, y, x)``, ``(y, x)`` or ``(y, x, c)``) together with
an :class:`~promptseg.io.meta.ImageMeta`. Every failure is an
:class:`~promptseg.errors.ImageIOError` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from promptseg.errors import ImageIOError, PromptsegError
from promptseg.io.meta import SUPPORTED_READ, ImageMeta, format_of, one_line, split_extension

# Length units -> size in micrometres, to bring differing per-axis units to one unit.
_MICROMETRES = {"nanometer": 1e-3, "micrometer": 1.0, "mm": 1e3, "cm": 1e4, "meter": 1e6}
_UNIT_ALIASES = {
    "um": "micrometer", "µm": "micrometer", "\u03bcm": "micrometer", "\\u00b5m": "micrometer",
    "micron": "micrometer", "microns": "micrometer", "micrometre": "micrometer",
    "millimeter": "mm", "millimetre": "mm", "nm": "nanometer", "centimeter": "cm", "m": "meter",
}


def read_image(path: str | Path, *, lazy: bool = False) -> tuple[Any, ImageMeta]:
    """Read an image file into a napari-order array.

    Parameters
    ----------
    path : str or pathlib.Path
        ``.tif/.tiff``, ``.png``, ``.jpg/.jpeg``, ``.zarr/.ome.zarr`` (folder) or ``.nii/.nii.gz``.
    lazy : bool
        TIFF only: return a zarr array that reads tiles/pages on demand instead of a numpy array
        (when the file's axes need reordering, a read-only lazy view of it). Zarr input is always
        lazy; PNG, JPEG and NIfTI are always read whole.

    Returns
    -------
    image : numpy.ndarray or zarr.Array or LazyView
        Shape ``(z, y, x)``, ``(y, x)`` or ``(y, x, c)`` with c = 3 or 4; the file's own dtype
        (NIfTI data with a scale factor come back as float).
    meta : ImageMeta
        Spacing, axes, unit, affine and whatever is needed to write labels back.

    Raises
    ------
    ImageIOError
        Missing file, unknown extension, corrupt file or an unsupported layout (e.g. 4D data).
    """
    path = Path(path)
    ext = split_extension(path, SUPPORTED_READ, "read")
    if not path.exists():
        raise ImageIOError(f"cannot read {path}: no such file or folder")
    fmt = format_of(ext)
    reader = {"tiff": _read_tiff, "png": _read_imageio, "jpeg": _read_imageio,
              "zarr": _read_zarr, "nifti": _read_nifti}[fmt]
    try:
        return reader(path, fmt, lazy)
    except PromptsegError:
        raise
    except Exception as exc:
        raise ImageIOError(f"cannot read {path}: {one_line(exc)}") from exc


class LazyView:
    """Read-only lazy view of an array-like (e.g. a zarr array) with axes dropped and reordered.

    ``LazyView(base, order)[key]`` reads ``base`` only where `key` asks. Output axis i is base
    axis ``order[i]``; base axes missing from `order` (size-1 axes such as ``t`` or ``c``) are
    read at index 0. Keys may hold ints, slices and one Ellipsis; the result is a numpy array.
    """

    def __init__(self, base: Any, order: tuple[int, ...]):
        self.base, self.order = base, tuple(order)
        self.shape = tuple(int(base.shape[i]) for i in self.order)
        self.dtype = np.dtype(base.dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyView(shape={self.shape}, dtype={self.dtype}, base={self.base!r})"

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
        if len(key) > self.ndim or not all(isinstance(k, (slice, int, np.integer)) for k in key):
            raise IndexError(f"LazyView supports only ints, slices and '...', got {key!r}")
        key = key + (slice(None),) * (self.ndim - len(key))
        base_key: list[Any] = [0] * len(self.base.shape)
        for out_axis, base_axis in enumerate(self.order):
            base_key[base_axis] = key[out_axis]
        data = np.asarray(self.base[tuple(base_key)])
        # Base axes that survive the indexing, in base order, and where they go in the output.
        kept = [b for b in sorted(self.order) if not isinstance(base_key[b], (int, np.integer))]
        wanted = [b for b in self.order if b in kept]
        return np.ascontiguousarray(data.transpose([kept.index(b) for b in wanted]))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[...]
        return data if dtype is None else data.astype(dtype)


def _unsupported(path: Path, what: str) -> ImageIOError:
    return ImageIOError(f"cannot read {path}: {what}")


def _norm_unit(unit: Any) -> str | None:
    """Canonical unit name ("mm", "micrometer", ...) or None for empty/unknown/pixel units."""
    if not unit or not isinstance(unit, str):
        return None
    unit = unit.strip()
    key = unit.lower()
    if key in ("", "pixel", "pixels", "unknown", "none"):
        return None
    return _UNIT_ALIASES.get(key, key)


def _common_unit(sizes: list, units: list) -> tuple[tuple[float, ...], str | None]:
    """Bring per-axis sizes in possibly different length units to the unit of the last axis."""
    target = units[-1]
    if all(u == target for u in units) or not all(u in _MICROMETRES for u in units):
        return tuple(float(s) for s in sizes), target
    factors = [_MICROMETRES[u] / _MICROMETRES[target] for u in units]
    return tuple(float(s) * f for s, f in zip(sizes, factors)), target


def _napari_layout(path: Path, axes: str, shape: tuple[int, ...]) -> tuple[tuple[int, ...], str]:
    """Permutation from a (squeezed, tifffile-style) axes string to napari order, and its axes."""
    if "Y" not in axes or "X" not in axes:
        raise _unsupported(path, f"axes {axes!r} have no Y and X")
    others = [i for i, a in enumerate(axes) if a not in "YXS"]
    samples = [i for i, a in enumerate(axes) if a == "S"]
    if len(others) > 1 or (others and samples):
        raise _unsupported(path, f"axes {axes} with shape {shape}: only 2D, RGB(A) and single 3D "
                                 "stacks are supported")
    if samples and shape[samples[0]] not in (3, 4):
        raise _unsupported(path, f"{shape[samples[0]]} samples per pixel (need 1, 3 or 4)")
    order = tuple(others + [axes.index("Y"), axes.index("X")] + samples)
    return order, ("z" if others else "") + "yx" + ("c" if samples else "")


def _tiff_layout(tif: Any, path: Path) -> tuple[str, tuple[int, ...], str, tuple[float, ...], str | None]:
    """A TIFF's first series: (source axes, permutation to napari order, napari axes, spacing, unit)."""
    if not tif.series:
        raise _unsupported(path, "the TIFF holds no image")
    series = tif.series[0]
    axes, shape = series.get_axes(True), series.get_shape(True)
    order, out_axes = _napari_layout(path, axes, shape)
    spacing, unit = _tiff_spacing(tif, series, out_axes.count("z") + 2)
    if tif.is_svs:  # Aperio keeps the pixel size in its description: "...|MPP = 0.499|..." micrometres
        fields = dict(f.split("=", 1) for f in tif.pages.first.description.split("|") if "=" in f)
        mpp = {k.strip(): v.strip() for k, v in fields.items()}.get("MPP")
        if mpp:
            spacing, unit = (float(mpp), float(mpp)), "micrometer"
    return axes, order, out_axes, spacing, unit


def _read_tiff(path: Path, fmt: str, lazy: bool) -> tuple[Any, ImageMeta]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        axes, order, out_axes, spacing, unit = _tiff_layout(tif, path)
        if not lazy:
            data = tif.asarray(series=0, level=0, squeeze=True)
    if lazy:
        import zarr

        store = tifffile.imread(path, aszarr=True, series=0, level=0, squeeze=True)
        data = zarr.open(store, mode="r")
        if order != tuple(range(len(order))):
            data = LazyView(data, order)
    elif order != tuple(range(len(order))):
        data = np.ascontiguousarray(data.transpose(order))
    meta = ImageMeta(spacing=spacing, axes=out_axes, unit=unit, source_format=fmt,
                     path=str(path), extra={"source_axes": axes})
    return data, meta


def _tiff_spacing(tif: Any, series: Any, nsp: int) -> tuple[tuple[float, ...], str | None]:
    """Pixel size (napari order) from promptseg's JSON, OME-XML, ImageJ or resolution tags."""
    import tifffile

    shaped = tif.shaped_metadata
    if shaped and len(shaped[0].get("spacing", ())) == nsp:  # written by promptseg's write_labels
        return tuple(float(s) for s in shaped[0]["spacing"]), _norm_unit(shaped[0].get("unit"))
    if tif.is_ome and tif.ome_metadata:
        image = tifffile.xml2dict(tif.ome_metadata).get("OME", {}).get("Image", {})
        pixels = (image[0] if isinstance(image, list) else image).get("Pixels", {})
        names = "ZYX"[3 - nsp:]
        if any(f"PhysicalSize{a}" in pixels for a in names):
            sizes = [pixels.get(f"PhysicalSize{a}", 1.0) for a in names]
            units = [_norm_unit(pixels.get(f"PhysicalSize{a}Unit", "µm")) for a in names]
            return _common_unit(sizes, units)
    page = series.keyframe
    xres, yres = page.get_resolution()
    dy, dx = (1.0 / yres if yres else 1.0), (1.0 / xres if xres else 1.0)
    dz, unit = 1.0, None
    if tif.is_imagej and tif.imagej_metadata:
        unit = _norm_unit(tif.imagej_metadata.get("unit"))
        dz = float(tif.imagej_metadata.get("spacing", 1.0))
    else:
        factor, unit = {2: (25.4, "mm"), 3: (10.0, "mm"), 4: (1.0, "mm"),
                        5: (1.0, "micrometer")}.get(int(page.resolutionunit), (1.0, None))
        dy, dx = dy * factor, dx * factor
        if (xres, yres) == (1, 1):
            dy, dx, unit = 1.0, 1.0, None  # tags absent or meaningless
    return ((dz, dy, dx) if nsp == 3 else (dy, dx)), unit


def _read_imageio(path: Path, fmt: str, lazy: bool) -> tuple[np.ndarray, ImageMeta]:
    import imageio.v3 as iio

    data = np.asarray(iio.imread(path, index=0))
    extra: dict = {}
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    elif data.ndim == 3 and data.shape[-1] == 2:  # grey + alpha: keep the grey channel
        data, extra["dropped_alpha"] = np.ascontiguousarray(data[..., 0]), True
    if data.ndim == 2:
        axes = "yx"
    elif data.ndim == 3 and data.shape[-1] in (3, 4):
        axes = "yxc"
    else:
        raise _unsupported(path, f"unsupported image shape {data.shape}")
    return data, ImageMeta(spacing=(1.0, 1.0), axes=axes, source_format=fmt, path=str(path),
                           extra=extra)


def _read_zarr(path: Path, fmt: str, lazy: bool) -> tuple[Any, ImageMeta]:
    import zarr

    node = zarr.open(path, mode="r")
    if isinstance(node, zarr.Array):  # a plain array: guess the axes from the shape
        if node.ndim == 2:
            axes = "yx"
        elif node.ndim == 3 and node.shape[-1] in (3, 4) and node.dtype == np.uint8:
            axes = "yxc"
        elif node.ndim == 3:
            axes = "zyx"
        else:
            raise _unsupported(path, f"plain zarr array of shape {node.shape} (need 2D or 3D)")
        nsp = len(axes) - axes.count("c")
        return node, ImageMeta(spacing=(1.0,) * nsp, axes=axes, source_format="zarr",
                               path=str(path))
    attrs = dict(node.attrs)
    attrs = attrs.get("ome", attrs)  # OME-Zarr 0.5 nests its metadata under "ome"
    if "multiscales" not in attrs and "bioformats2raw.layout" in attrs and "0" in node:
        node, attrs = node["0"], dict(node["0"].attrs)
        attrs = attrs.get("ome", attrs)
    if "multiscales" not in attrs:
        raise _unsupported(path, "zarr group is neither an array nor an OME-Zarr image")
    ms = attrs["multiscales"][0]
    dataset = ms["datasets"][0]
    array = node[dataset["path"]]
    axes_md = ms.get("axes") or ["t", "c", "z", "y", "x"][-array.ndim:]  # before 0.3: 5D tczyx
    names = [a["name"] if isinstance(a, dict) else a for a in axes_md]
    types = [a.get("type") if isinstance(a, dict) else None for a in axes_md]
    spatial = [i for i, (n, t) in enumerate(zip(names, types))
               if t == "space" or (t is None and n in ("z", "y", "x"))]
    others = [i for i in range(array.ndim) if i not in spatial and array.shape[i] != 1]
    if len(spatial) not in (2, 3) or len(spatial) + len(others) > 3:
        raise _unsupported(path, f"OME-Zarr axes {''.join(names)} with shape {array.shape}: only "
                                 "2D, RGB and 3D images (other axes of size 1) are supported")
    rgb = (len(others) == 1 and array.shape[others[0]] in (3, 4) and array.dtype == np.uint8
           and (types[others[0]] == "channel" or names[others[0]] == "c"))
    # a 2D image with one more axis (channels, time) becomes a (z, y, x) stack, as for TIFF
    keep = spatial + others if rgb else others + spatial
    scale, shift = _ome_transform(ms, dataset, array.ndim)
    grid = [i for i in keep if i in spatial or not rgb]  # output axes that have a pixel size
    spacing = tuple(float(scale[i]) if i in spatial else 1.0 for i in grid)
    units = {(a.get("unit") if isinstance(a, dict) else None) for i, a in enumerate(axes_md)
             if i in spatial}
    affine = np.eye(len(grid) + 1)
    affine[:-1, :-1] = np.diag(spacing)
    affine[:-1, -1] = [float(shift[i]) if i in spatial else 0.0 for i in grid]
    data = array if keep == list(range(array.ndim)) else LazyView(array, tuple(keep))
    meta = ImageMeta(spacing=spacing, axes=("zyx"[3 - len(spacing):] + ("c" if rgb else "")),
                     unit=_norm_unit(units.pop()) if len(units) == 1 else None, affine=affine,
                     source_format="ome-zarr", path=str(path),
                     extra={"source_axes": "".join(names), "dataset_path": dataset["path"]})
    return data, meta


def _ome_transform(ms: dict, dataset: dict, ndim: int) -> tuple[list[float], list[float]]:
    """Scale and translation of one OME-Zarr dataset (multiscale-level transforms applied after)."""
    scale, shift = [1.0] * ndim, [0.0] * ndim
    for transforms in (dataset.get("coordinateTransformations", []),
                       ms.get("coordinateTransformations", [])):
        for t in transforms:
            if t.get("type") == "scale" and "scale" in t:
                shift = [o * s for o, s in zip(shift, t["scale"])]
                scale = [a * s for a, s in zip(scale, t["scale"])]
            elif t.get("type") == "translation" and "translation" in t:
                shift = [o + d for o, d in zip(shift, t["translation"])]
    return scale, shift


def _read_nifti(path: Path, fmt: str, lazy: bool) -> tuple[np.ndarray, ImageMeta]:
    import nibabel as nib

    img = nib.load(path)
    shape = tuple(int(s) for s in img.shape)
    nd = 3 if len(shape) >= 3 else len(shape)
    if nd < 2 or any(s != 1 for s in shape[3:]):
        raise _unsupported(path, f"NIfTI data of shape {shape} (need 2D or 3D, x-y-z order)")
    data = np.asanyarray(img.dataobj).reshape(shape[:nd])
    data = np.ascontiguousarray(data.T)  # (x, y, z) -> (z, y, x); (x, y) -> (y, x)
    header = img.header
    src = np.array(img.affine, dtype=np.float64)
    rows = [nd - 1 - i for i in range(nd)] + [3]  # napari axis i <-> NIfTI axis nd-1-i
    affine = src[np.ix_(rows, rows)]
    # zooms are float32 in the header: keep their shortest decimal form (0.9, not 0.899999976)
    spacing = tuple(float(str(np.float32(z))) for z in header.get_zooms()[:nd][::-1])
    extra = {
        "source_axes": "xyz"[:nd],
        "nifti_shape": shape,
        "nifti_affine": src,
        "nifti_header": bytes(header.binaryblock),
        "nifti_header_class": type(header).__name__,
        "qform_code": int(header["qform_code"]),
        "sform_code": int(header["sform_code"]),
    }
    unit = _norm_unit(header.get_xyzt_units()[0])
    meta = ImageMeta(spacing=spacing, axes="zyx"[3 - nd:], unit=unit, affine=affine,
                     source_format=fmt, path=str(path), extra=extra)
    return data, meta
