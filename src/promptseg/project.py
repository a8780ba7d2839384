"""The autosave folder of an annotation: committed labels and the records of their objects.

A project is a folder ``<name>.promptseg`` holding

* ``project.json``: ``{"format": 1, "shape": [...], "image": {"path": ..., "name": ...},
  "objects": [{"id": int, "prompts": {...}, "time": iso str, ...}, ...]}``, rewritten atomically
  (temporary file, fsync, ``os.replace``) after every change, and
* ``labels.zarr``: the committed labels, int32, shape = the image's spatial shape in napari order
  (``(z, y, x)`` or ``(y, x)``), chunks ``(1, 512, 512)`` (3D) or ``(1024, 1024)`` (2D), 0 =
  background. zarr 3's ``LocalStore`` writes each chunk to a temporary file and renames it, so a
  chunk on disk is always either the old or the new one.

:meth:`Project.save_commit` writes the labels first and the record second, so after a crash or a
kill every object listed in ``project.json`` is in the labels (the labels may hold one object more
than the list: the one being committed when the process died). This module imports neither napari
nor Qt.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from promptseg._state import lazy_zeros
from promptseg.errors import CacheError

FORMAT = 1
SUFFIX = ".promptseg"
_JSON, _LABELS = "project.json", "labels.zarr"


class ProjectError(CacheError):
    """A project folder cannot be created, opened or written, or belongs to another image."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _jsonable(obj: Any) -> Any:
    """``json`` fallback for numpy scalars/arrays and paths found in object records."""
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk; best effort (not possible on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _write_json(path: Path, data: dict) -> None:
    """Write `data` to `path` atomically: temporary sibling, fsync, ``os.replace``.

    On any failure the temporary file is removed and `path` is left as it was.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, default=_jsonable)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    full = (1, 512, 512) if len(shape) == 3 else (1024, 1024)
    return tuple(min(c, s) for c, s in zip(full, shape))


class Project:
    """An annotation's autosave folder (see the module docstring for the layout).

    Use :meth:`for_image` (create or reopen) or :meth:`open` rather than the constructor.

    Attributes
    ----------
    path : pathlib.Path
        The ``.promptseg`` folder.
    shape : tuple of int
        Spatial shape of the image, napari order: ``(z, y, x)`` or ``(y, x)``.
    objects : list of dict
        One record per committed object, in commit order: ``{"id": int, "prompts": {...},
        "time": ISO-8601 str, ...}`` (JSON types only).
    image : dict
        ``{"path": str or None, "name": str or None}``: where the image came from.
    """

    def __init__(self, path: Path, meta: dict, labels: Any):
        self.path = Path(path)
        self.shape = tuple(int(s) for s in meta["shape"])
        self.objects: list[dict] = list(meta.get("objects", []))
        self.image: dict = dict(meta.get("image", {"path": None, "name": None}))
        self._labels = labels  # the zarr array

    def __repr__(self) -> str:
        return f"Project({str(self.path)!r}, shape={self.shape}, objects={len(self.objects)})"

    @classmethod
    def for_image(cls, image_path: str | os.PathLike | None = None, *, shape: tuple[int, ...],
                  name: str | None = None, root: str | os.PathLike | None = None) -> Project:
        """Open the project of an image, creating it if it does not exist yet.

        Parameters
        ----------
        image_path : str or path-like, optional
            The image file (or OME-Zarr folder). Its project is the sibling folder
            ``<file name>.promptseg``, e.g. ``ct.nii.gz`` -> ``ct.nii.gz.promptseg``.
        shape : tuple of int
            Spatial shape of the image in napari order, ``(z, y, x)`` or ``(y, x)`` (no channel
            axis for RGB images).
        name : str, optional
            For an image without a file (a sample, an in-memory array): the project is
            ``root / f"{name}.promptseg"``. Ignored for the folder name when `image_path` is given.
        root : str or path-like, optional
            Folder of path-less projects; default ``promptseg.models.checkpoints.cache_dir() /
            "projects"``.

        Raises
        ------
        ProjectError
            Neither `image_path` nor `name`; a bad `shape`; the folder belongs to an image of
            another shape; the folder cannot be created or read.
        """
        shape = tuple(int(s) for s in shape)
        if len(shape) not in (2, 3) or min(shape) < 1:
            raise ProjectError(f"a project needs a 2D or 3D spatial shape, got {shape}")
        if image_path is not None:
            image_path = Path(image_path).expanduser().absolute()
            folder = image_path.with_name(image_path.name + SUFFIX)
            info = {"path": str(image_path), "name": name or image_path.name}
        else:
            if not name or any(sep in name for sep in ("/", "\\", os.sep)) or name in (".", ".."):
                raise ProjectError(f"an image without a path needs a plain project name, got "
                                   f"{name!r}")
            if root is None:
                from promptseg.models.checkpoints import cache_dir

                root = cache_dir() / "projects"
            folder = Path(root).expanduser().absolute() / f"{name}{SUFFIX}"
            info = {"path": None, "name": name}
        if not (folder / _JSON).is_file():
            cls._create(folder, shape, info)
        project = cls.open(folder)
        if project.shape != shape:
            raise ProjectError(f"project {folder} belongs to an image of shape {project.shape}, "
                               f"not {shape}; move or delete it to start again")
        return project

    @classmethod
    def _create(cls, folder: Path, shape: tuple[int, ...], info: dict) -> None:
        """Build a new project in a temporary sibling folder and rename it to `folder`."""
        import zarr
        from zarr.codecs import ZstdCodec

        tmp = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}.tmp")
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            zarr.create_array(store=tmp / _LABELS, shape=shape, chunks=_chunks(shape),
                              dtype="int32", fill_value=0, compressors=ZstdCodec(level=3))
            _write_json(tmp / _JSON, {"format": FORMAT, "shape": list(shape), "image": info,
                                      "objects": []})
            try:
                os.replace(tmp, folder)
            except OSError:
                if not (folder / _JSON).is_file():  # not a lost race with another process
                    raise
            _fsync_dir(folder.parent)
        except OSError as exc:
            raise ProjectError(f"cannot create project {folder}: {exc.strerror or exc}") from exc
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def open(cls, path: str | os.PathLike) -> Project:
        """Open an existing project folder.

        Raises
        ------
        ProjectError
            `path` is not a readable promptseg project folder of this format.
        """
        import zarr

        path = Path(path).expanduser()
        if not (path / _JSON).is_file():
            raise ProjectError(f"{path} is not a promptseg project folder (no {_JSON})")
        try:
            meta = json.loads((path / _JSON).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ProjectError(f"cannot read {path / _JSON}: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or "shape" not in meta:
            raise ProjectError(f"{path / _JSON} is not a promptseg project file of format {FORMAT}")
        try:
            labels = zarr.open_array(path / _LABELS, mode="r+")
        except Exception as exc:
            raise ProjectError(f"cannot open the labels of project {path}: {exc}") from exc
        if tuple(labels.shape) != tuple(meta["shape"]):
            raise ProjectError(f"labels of project {path} have shape {tuple(labels.shape)}, "
                               f"its {_JSON} says {tuple(meta['shape'])}")
        return cls(path, meta, labels)

    def load_labels(self) -> np.ndarray:
        """The committed labels: int32, shape `shape` (all zeros in a new project).

        Read chunk by chunk into a lazily allocated array, and only chunks holding objects are
        copied, so the labels of a whole slide take memory only where something was annotated.
        """
        out = lazy_zeros(self.shape, np.int32)
        if self._labels.nchunks_initialized == 0:
            return out
        grid = [range(0, s, c) for s, c in zip(self.shape, self._labels.chunks)]
        for corner in np.ndindex(*[len(g) for g in grid]):
            region = tuple(slice(g[i], g[i] + c) for g, i, c in zip(grid, corner, self._labels.chunks))
            chunk = np.asarray(self._labels[region], dtype=np.int32)
            if chunk.any():
                out[region] = chunk
        return out

    def save_labels(self, labels: Any, bbox: tuple[slice, ...] | None = None) -> None:
        """Write `labels` (inside `bbox` only, when given) to ``labels.zarr``.

        Parameters
        ----------
        labels : array_like
            Integer labels of shape `shape` (napari order); cast to int32.
        bbox : tuple of slice, optional
            Region that changed (e.g. ``Prediction.bbox``), one slice per axis (missing trailing
            axes are whole). It is widened to whole chunks, and only those chunks are rewritten.
        """
        if tuple(labels.shape) != self.shape:
            raise ProjectError(f"labels of shape {tuple(labels.shape)} do not fit project "
                               f"{self.path} of shape {self.shape}")
        region = self._chunk_region(bbox)
        if region is None:
            return
        data = np.asarray(labels[region], dtype=np.int32)
        try:
            self._labels[region] = data
        except OSError as exc:
            raise ProjectError(f"cannot write the labels of project {self.path}: {exc}") from exc

    def save_commit(self, labels: Any, bbox: tuple[slice, ...] | None, record: dict) -> None:
        """Save a committed object: its labels first, then its record in ``project.json``.

        Parameters
        ----------
        labels : array_like
            The whole label image after the commit, shape `shape`, integer.
        bbox : tuple of slice or None
            Region the commit changed (None: the whole image), see :meth:`save_labels`.
        record : dict
            ``{"id": int, "prompts": {...}, ...}`` with JSON values (numpy scalars and arrays are
            converted). ``"time"`` (UTC, ISO 8601) is added when missing. A record with the id of
            an existing one replaces it.

        Raises
        ------
        ProjectError
            The record has no integer ``"id"`` or is not JSON serialisable, the labels do not fit,
            or a write failed (``project.json`` is then unchanged).
        """
        record = dict(record)
        if not isinstance(record.get("id"), (int, np.integer)) or isinstance(record["id"], bool):
            raise ProjectError(f"an object record needs an integer 'id', got {record.get('id')!r}")
        record["id"] = int(record["id"])
        record.setdefault("time", _now())
        objects = [o for o in self.objects if o.get("id") != record["id"]] + [record]
        try:  # refuse a bad record before anything is written
            json.dumps(record, default=_jsonable)
        except (TypeError, ValueError) as exc:
            raise ProjectError(f"object record {record['id']} cannot be saved: {exc}") from exc
        self.save_labels(labels, bbox)
        self._write_objects(objects)

    def remove_object(self, label_id: int) -> None:
        """Drop the record(s) of `label_id` (a no-op when there is none); labels are untouched."""
        objects = [o for o in self.objects if o.get("id") != int(label_id)]
        if len(objects) != len(self.objects):
            self._write_objects(objects)

    def embeddings_path(self, model_name: str) -> Path:
        """Where the embedding cache of `model_name` lives: ``path / f"embeddings-{model}.zarr"``.

        Only the path; :func:`promptseg.embed` creates the store.
        """
        if not model_name or any(sep in model_name for sep in ("/", "\\", os.sep)):
            raise ProjectError(f"bad model name for an embedding cache: {model_name!r}")
        return self.path / f"embeddings-{model_name}.zarr"

    def _write_objects(self, objects: list[dict]) -> None:
        data = {"format": FORMAT, "shape": list(self.shape), "image": self.image,
                "objects": objects}
        try:
            _write_json(self.path / _JSON, data)
        except (OSError, TypeError, ValueError) as exc:
            raise ProjectError(f"cannot write {self.path / _JSON}: {exc}") from exc
        self.objects = json.loads(json.dumps(objects, default=_jsonable))

    def _chunk_region(self, bbox: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
        """`bbox` widened to whole chunks and clipped to the shape; None if it is empty."""
        if bbox is None:
            return tuple(slice(0, s) for s in self.shape)
        bbox = tuple(bbox)
        if len(bbox) > len(self.shape) or not all(isinstance(b, slice) for b in bbox):
            raise ProjectError(f"bbox must be a tuple of at most {len(self.shape)} slices, "
                               f"got {bbox!r}")
        bbox = bbox + (slice(None),) * (len(self.shape) - len(bbox))
        region = []
        for b, size, chunk in zip(bbox, self.shape, self._labels.chunks):
            start, stop, step = b.indices(size)
            if step != 1:
                raise ProjectError(f"bbox slices must have step 1, got {b!r}")
            if stop <= start:
                return None
            region.append(slice(start // chunk * chunk,
                                min(math.ceil(stop / chunk) * chunk, size)))
        return tuple(region)
