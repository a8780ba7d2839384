"""Write label images (integer masks) atomically: TIFF, NIfTI and OME-Zarr.

Labels arrive in napari order (``(z, y, x)`` or ``(y, x)``). Each writer first writes to a hidden
temporary name in the destination folder and then renames it over the final name, so an
interrupted write never leaves a half-written file under the final name.
"""

from __future__ import annotations

import os
import secrets
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from promptseg.errors import ImageError, ImageIOError, PromptsegError
from promptseg.io.meta import SUPPORTED_WRITE, ImageMeta, format_of, one_line, split_extension

# promptseg unit names -> NIfTI (nibabel) and OME-Zarr unit names.
_NIFTI_UNITS = {"mm": "mm", "micrometer": "micron", "meter": "meter"}
_OME_UNITS = {"nanometer": "nanometer", "micrometer": "micrometer", "mm": "millimeter",
              "cm": "centimeter", "meter": "meter"}


def write_labels(path: str | Path, labels: Any, meta: ImageMeta | None = None) -> Path:
    """Write a label image, atomically.

    Parameters
    ----------
    path : str or pathlib.Path
        Destination, format from the extension: ``.tif/.tiff`` (zlib-compressed TIFF),
        ``.nii/.nii.gz`` (NIfTI-1, or NIfTI-2 when the source was) or ``.zarr/.ome.zarr``
        (single-scale OME-Zarr 0.5 labels image). An existing file or folder is replaced.
    labels : array_like
        Integer labels, shape ``(z, y, x)`` or ``(y, x)`` in napari order; 0 is background.
        Written with their own dtype (bool is written as uint8).
    meta : ImageMeta, optional
        Metadata of the image the labels belong to (from :func:`~promptseg.io.read_image`).
        Its spacing is stored (TIFF resolution, NIfTI zooms/affine, OME-Zarr scale). When it came
        from a NIfTI file the labels are written back in that file's (x, y, z) order with its exact
        header geometry (affine, qform/sform codes, zooms, units).

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    ImageError
        `labels` is not a 2D/3D integer array, or does not fit `meta`.
    ImageIOError
        Unsupported extension, missing folder, or the write failed (no file is left behind then,
        and an existing file under `path` is unchanged).
    """
    path = Path(path)
    ext = split_extension(path, SUPPORTED_WRITE, "write")
    labels = _check_labels(labels, meta)
    if not path.parent.is_dir():
        raise ImageIOError(f"cannot write {path}: folder {path.parent} does not exist")
    fmt = format_of(ext)
    if fmt == "zarr":
        _atomic_folder(path, lambda tmp: _write_ome_zarr(tmp, labels, meta))
    else:
        writer = _write_tiff if fmt == "tiff" else _write_nifti
        atomic_file(path, ext, lambda tmp: writer(tmp, labels, meta, path))
    return path


def _check_labels(labels: Any, meta: ImageMeta | None) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "iu":
        raise ImageError(f"labels must be an integer array, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise ImageError(f"labels must be 2D (y, x) or 3D (z, y, x), got shape {arr.shape}")
    if meta is not None and (meta.ndim_spatial != arr.ndim or len(meta.spacing) != arr.ndim):
        raise ImageError(f"labels of shape {arr.shape} do not fit a {meta.ndim_spatial}D image "
                         f"with axes {meta.axes!r} and spacing {meta.spacing}")
    return arr


def _temp_name(path: Path, suffix: str) -> Path:
    """Hidden, unique sibling of `path` whose name ends with `suffix`."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{suffix}")


def _remove(path: Path) -> None:
    """Remove a file or folder if it exists, ignoring errors (used for clean-up only)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass


def _failed(path: Path, tmp: Path, exc: BaseException) -> None:
    """Clean up after a failed write and raise the matching ImageIOError (or re-raise)."""
    _remove(tmp)
    if isinstance(exc, PromptsegError) or not isinstance(exc, Exception):
        raise exc  # already ours, or KeyboardInterrupt & co.
    raise ImageIOError(f"cannot write {path}: {one_line(exc)}") from exc


def atomic_file(path: Path, ext: str, write: Callable[[Path], None]) -> None:
    """Write a file through ``write(tmp)`` into a hidden sibling ending in ``ext``, fsync it, rename it to
    ``path``; on failure the sibling is removed and the error is one line (``ImageIOError``)."""
    # keep the extension: nibabel picks gzip compression from it
    tmp = _temp_name(path, ext)
    try:
        write(tmp)
        with open(tmp, "r+b") as f:  # make sure the bytes are on disk before the rename
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        _failed(path, tmp, exc)


def _atomic_folder(path: Path, write: Callable[[Path], None]) -> None:
    """Write a folder (zarr) under a temporary name, then swap it in place of `path`.

    Renaming a folder over another one is not possible, so an existing `path` is first renamed
    aside and deleted only once the new folder is in place (restored if that rename fails).
    """
    tmp = _temp_name(path, "")
    try:
        write(tmp)
        if path.exists() or path.is_symlink():
            old = _temp_name(path, ".old")
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        _failed(path, tmp, exc)


def _write_tiff(tmp: Path, labels: np.ndarray, meta: ImageMeta | None, path: Path) -> None:
    import tifffile

    metadata: dict[str, Any] = {"axes": "ZYX"[3 - labels.ndim:]}
    kwargs: dict[str, Any] = {}
    if meta is not None:
        dy, dx = (float(s) for s in meta.spacing[-2:])
        metadata["spacing"] = [float(s) for s in meta.spacing]  # read back by read_image
        if meta.unit:
            metadata["unit"] = meta.unit
        kwargs = {"resolution": (1.0 / dx, 1.0 / dy), "resolutionunit": "NONE"}
    tifffile.imwrite(tmp, labels, photometric="minisblack", compression="zlib",
                     metadata=metadata, **kwargs)


def _write_nifti(tmp: Path, labels: np.ndarray, meta: ImageMeta | None, path: Path) -> None:
    import nibabel as nib

    extra = meta.extra if meta is not None else {}
    if "nifti_header" in extra:  # back into the source's own (x, y, z) order and geometry
        nifti2 = extra.get("nifti_header_class") == "Nifti2Header"
        header_class = nib.Nifti2Header if nifti2 else nib.Nifti1Header
        header = header_class(binaryblock=extra["nifti_header"])
        shape = tuple(extra["nifti_shape"])
        if labels.shape != shape[:labels.ndim][::-1]:
            raise ImageIOError(f"cannot write {path}: labels of shape {labels.shape} do not match "
                               f"the source image, whose (z, y, x) shape is {shape[:3][::-1]}")
        header.set_data_dtype(labels.dtype)
        header["cal_min"] = header["cal_max"] = 0  # the source's display window means nothing here
        header.set_intent("label")
        image_class = nib.Nifti2Image if nifti2 else nib.Nifti1Image
        # affine=None: nibabel keeps the header's qform/sform fields and codes byte for byte
        img = image_class(labels.T.reshape(shape), None, header=header)
    else:
        affine = _nifti_affine(labels.ndim, meta)
        img = nib.Nifti1Image(labels.T, affine)
        img.set_qform(affine, code="aligned")
        img.set_sform(affine, code="aligned")
        img.header.set_intent("label")
        unit = _NIFTI_UNITS.get(meta.unit or "") if meta is not None else None
        if unit:
            img.header.set_xyzt_units(xyz=unit)
    nib.save(img, tmp)


def _nifti_affine(nd: int, meta: ImageMeta | None) -> np.ndarray:
    """4x4 NIfTI (x, y, z) voxel->world affine from a napari-order ImageMeta."""
    out = np.eye(4)
    if meta is not None and meta.affine is not None:
        rows = [nd - 1 - i for i in range(nd)] + [nd]  # napari order <-> NIfTI order
        idx = list(range(nd)) + [3]
        out[np.ix_(idx, idx)] = np.asarray(meta.affine, dtype=np.float64)[np.ix_(rows, rows)]
    elif meta is not None:
        out[:nd, :nd] = np.diag([float(s) for s in meta.spacing[::-1]])
    return out


def _write_ome_zarr(tmp: Path, labels: np.ndarray, meta: ImageMeta | None) -> None:
    import zarr

    with warnings.catch_warnings():  # ome-zarr 0.18 warns about its own deprecated Scaler
        warnings.simplefilter("ignore", DeprecationWarning)
        import ome_zarr.writer
        from ome_zarr.scale import Methods

    axes = ["z", "y", "x"][3 - labels.ndim:]
    spacing = meta.spacing if meta is not None else (1.0,) * labels.ndim
    unit = _OME_UNITS.get(meta.unit or "") if meta is not None else None
    group = zarr.open_group(tmp, mode="w")
    ome_zarr.writer.write_image(
        labels, group, scale_factors=[], method=Methods.NEAREST, axes=axes, name="labels",
        scale={a: float(s) for a, s in zip(axes, spacing)},
        axes_units={a: unit for a in axes} if unit else None,
    )
    # mark it as a label image so that OME-Zarr viewers (napari-ome-zarr) show it as labels
    ome_zarr.writer.add_metadata(group, {"image-label": {"version": "0.5"}})
