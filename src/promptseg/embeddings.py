"""Image embeddings: computing them (:func:`embed`) and keeping them (:class:`EmbeddingStore`).

A store is a zarr group holding one float16 chunk per slice (``features``: (n, C, g, g)) and one done
flag per slice (``done``: (n,) uint8, written *after* its features, so a run killed mid-slice only
recomputes that slice). Its attributes hold the signature — data hash, model fingerprint, preprocessing,
precision, format version — and reopening it for anything else is a :class:`CacheError`, never a silent
reuse. The group is created under a temporary name and renamed into place, so a half-created store never
appears under the final name.

A 2D image is a store of one slice; a volume (Z, H, W) is embedded slice by slice along ``axis``,
streaming: only ``batch_size`` slices are in memory at a time, and the input may be any array that
supports slicing (numpy, memmap, zarr, dask), so a volume larger than RAM embeds without being loaded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import zarr

from .errors import CacheError, ImageError, ModelError
from .preprocess import Frame, Intensity, check_finite, choose_intensity, spatial_shape

FORMAT_VERSION = 1
Progress = Callable[[int, int], None]  # (done, total)


class Embedder:
    """Binds an image, a model and a preprocessing; computes slice embeddings on request.

    Parameters
    ----------
    model : PromptModel.
    image : (H, W), (H, W, 3|4) or (Z, H, W) array-like (numpy, memmap, zarr, dask).
    axis : for a volume, the axis along which it is cut into 2D slices (default 0).
    modality, window, rgb : see :mod:`promptseg.preprocess`.
    """

    def __init__(self, model, image, *, axis: int | None = None, modality=None, window=None, rgb=None):
        self.model = model
        self.image = self.data = image  # ``data``: the array that is embedded (a pyramid level when tiled)
        self.spatial, self.rgb = spatial_shape(image, rgb)
        if len(self.spatial) == 2:
            if axis not in (None, 0):
                raise ImageError(f"axis={axis} given for a 2D image of shape {tuple(image.shape)}")
            self.axis = None
        else:
            axis = 0 if axis is None else int(axis)
            if not -3 <= axis < 3:
                raise ImageError(f"axis={axis} is out of range for a 3D image")
            self.axis = axis % 3
        self.intensity: Intensity = choose_intensity(image, rgb=self.rgb, modality=modality, window=window)
        plane = self.spatial if self.axis is None else tuple(s for i, s in enumerate(self.spatial) if i != self.axis)
        self.frame = Frame.for_shape(plane, model.input_size, model.spec.resize)
        self._data_hash: str | None = None

    @property
    def n_slices(self) -> int:
        return 1 if self.axis is None else self.spatial[self.axis]

    def raw_slice(self, i: int) -> np.ndarray:
        """Slice ``i`` as stored in the image: (H, W) or (H, W, C)."""
        if self.axis is None:
            return np.asarray(self.image)
        index = [slice(None)] * len(self.image.shape)
        index[self.axis] = i
        return np.asarray(self.image[tuple(index)])

    def data_hash(self) -> str:
        """blake2b of shape, dtype and every value, read slice by slice; also rejects NaN/inf."""
        if self._data_hash is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(repr((tuple(self.image.shape), str(np.dtype(self.image.dtype)))).encode())
            for i in range(self.n_slices):
                sl = self.raw_slice(i)
                check_finite(sl, "image" if self.axis is None else f"slice {i} of the image")
                h.update(np.ascontiguousarray(sl).tobytes())
            self._data_hash = h.hexdigest()
        return self._data_hash

    def signature(self) -> dict:
        """Everything the embeddings depend on; equal signatures mean reusable embeddings."""
        spec = self.model.spec
        return {
            "format": FORMAT_VERSION,
            "data": self.data_hash(),
            "shape": list(self.data.shape),
            "dtype": str(np.dtype(self.data.dtype)),
            "axis": self.axis,
            "model": self.model.fingerprint,
            "model_name": spec.name,
            "preprocessing": {**self.intensity.as_dict(), "resize": spec.resize, "input_size": self.model.input_size},
            "precision": "float16",
            "compute": self.model.precision,
        }

    def slice_hash(self, i: int) -> bytes | None:
        """Per-slice pixel hash kept next to the embedding (tiled images only; None here)."""
        return None

    def prepare(self, i: int) -> np.ndarray:
        """Slice ``i`` read, checked and preprocessed: the uint8 (h, w, 3) encoder input (thread-safe)."""
        sl = self.raw_slice(i)
        check_finite(sl)
        return self.frame.resize(self.intensity.apply(sl))

    def compute(self, indices) -> np.ndarray:
        """Embed slices ``indices`` in one encoder batch -> float16 (B, C, g, g) numpy array."""
        return encode_half(self.model, [self.prepare(i) for i in indices])


def encode_half(model, images: list[np.ndarray]) -> np.ndarray:
    """One encoder batch -> float16 (B, C, g, g) numpy array (cast on the device: half the transfer)."""
    import torch

    return model.encode(images).to(torch.float16).cpu().numpy()


class EmbeddingStore:
    """Slice embeddings of one image under one signature (see the module docstring).

    Use :func:`embed` or :meth:`open_or_create`; index with ``store.get(i)`` -> float16 (C, g, g).
    """

    def __init__(self, group: zarr.Group, path: Path | None = None):
        self.group = group
        self.path = path
        self.meta = dict(group.attrs["promptseg"])
        self.features = group["features"]
        self.done_flags = group["done"]
        self.hashes = group["hashes"] if "hashes" in group else None  # tiled images: blake2b per tile

    # -- creation ---------------------------------------------------------------------------
    @classmethod
    def open_or_create(cls, path, signature: dict, n: int, feature_shape, frame: Frame, *, overwrite=False) -> "EmbeddingStore":
        """Open the store at ``path`` (``None``: in memory) if its signature matches, else create it."""
        meta = {"signature": signature, "n": n, "frame": {"original": frame.original, "input": frame.input, "size": frame.size}}
        if path is None:
            group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
            cls._init_group(group, meta, n, feature_shape)
            return cls(group, None)
        path = Path(path)
        if path.exists() and not overwrite:
            store = cls.open(path)
            store.check(signature)
            return store
        if path.exists():  # overwrite replaces an embedding cache, never someone's folder or file
            cls.open(path)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            cls._init_group(zarr.open_group(str(tmp), mode="w"), meta, n, feature_shape)
            if path.exists():  # overwrite: swap the new, empty store in
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cls.open(path)

    @staticmethod
    def _init_group(group, meta, n, feature_shape):
        c, g1, g2 = feature_shape
        group.create_array("features", shape=(n, c, g1, g2), chunks=(1, c, g1, g2), dtype="float16", fill_value=0)
        group.create_array("done", shape=(n,), chunks=(1,), dtype="uint8", fill_value=0)
        if meta["signature"].get("tiling") is not None:
            group.create_array("hashes", shape=(n, 16), chunks=(1, 16), dtype="uint8", fill_value=0)
        group.attrs["promptseg"] = meta

    @classmethod
    def open(cls, path) -> "EmbeddingStore":
        """Open an existing store; :class:`CacheError` if it is not one."""
        path = Path(path)
        try:
            group = zarr.open_group(str(path), mode="r+")
            if "promptseg" not in group.attrs:
                raise KeyError("promptseg")
            return cls(group, path)
        except CacheError:
            raise
        except Exception as e:
            raise CacheError(f"{path} is not a promptseg embedding cache ({type(e).__name__}); delete it or choose another path") from e

    # -- access -----------------------------------------------------------------------------
    @property
    def signature(self) -> dict:
        return self.meta["signature"]

    @property
    def n_slices(self) -> int:
        return int(self.meta["n"])

    @property
    def frame(self) -> Frame:
        f = self.meta["frame"]
        return Frame(tuple(f["original"]), tuple(f["input"]), int(f["size"]))

    def check(self, signature: dict) -> None:
        """Raise :class:`CacheError` naming the first difference from ``signature``."""
        mine = self.signature
        where = self.path or "the embedding store"
        for key, what in (
            ("format", "another promptseg cache format"),
            ("shape", "another image (shape differs)"),
            ("dtype", "another image (dtype differs)"),
            ("axis", "another slicing axis"),  # before "data": the data hash is read along the axis
            ("tiling", "another tiling or pyramid level"),
            ("data", "another image (its pixels differ)"),
            ("model", f"another model ({mine.get('model_name')})"),
            ("preprocessing", "another preprocessing (intensity window or resize)"),
            ("precision", "another precision"),
            ("compute", "another compute precision (float32 / bfloat16)"),
        ):
            if mine.get(key, "float32" if key == "compute" else None) != signature.get(key):
                raise CacheError(f"{where} was made for {what}; use another cache path or overwrite=True")

    def is_done(self, i: int) -> bool:
        return bool(self.done_flags[i])

    def missing(self) -> list[int]:
        """Indices of slices not yet embedded."""
        return [int(i) for i in np.flatnonzero(self.done_flags[:] == 0)]

    def get(self, i: int) -> np.ndarray:
        """Embedding of slice ``i``: float16 (C, g, g)."""
        if not self.is_done(i):
            raise CacheError(f"slice {i} is not embedded yet")
        return self.features[i]

    def put(self, i: int, features: np.ndarray, pixel_hash: bytes | None = None) -> None:
        """Store slice ``i`` (features and pixel hash first, then the done flag)."""
        self.features[i] = features
        if self.hashes is not None and pixel_hash is not None:
            self.hashes[i] = np.frombuffer(pixel_hash, dtype=np.uint8)
        self.done_flags[i] = 1

    def hash_matches(self, i: int, pixel_hash: bytes | None) -> bool:
        """Whether slice ``i`` was embedded from pixels with this hash (True when none is kept)."""
        if self.hashes is None or pixel_hash is None:
            return True
        kept = np.asarray(self.hashes[i], dtype=np.uint8)
        return not kept.any() or kept.tobytes() == pixel_hash


def embed(
    image,
    model,
    *,
    axis: int | None = None,
    cache: str | os.PathLike | None = None,
    batch_size: int | None = None,
    progress: Progress | None = None,
    modality: str | None = None,
    window=None,
    rgb: bool | None = None,
    overwrite: bool = False,
    tile_shape="auto",
    overlap: int | None = None,
    level: int | None = None,
    lazy: bool = False,
) -> EmbeddingStore:
    """Compute (or resume, or reuse) the embeddings of a 2D image, a volume or a slide.

    Parameters
    ----------
    image : (H, W) grey, (H, W, 3|4) RGB(A), or (Z, H, W) volume; numpy or any lazily sliceable array;
        or a list of 2D pyramid levels (level 0 first).
    model : PromptModel from :func:`promptseg.load_model`.
    axis : slicing axis of a volume (default 0).
    cache : zarr folder to keep the embeddings in; ``None`` keeps them in memory.
    batch_size : slices per encoder call (default 1 on CPU, 8 on GPU).
    progress : called as ``progress(done, total)`` after each batch.
    modality, window, rgb : intensity handling, see :mod:`promptseg.preprocess`.
    overwrite : replace a cache made for something else instead of raising :class:`CacheError`.
    tile_shape, overlap, level : tiling of large 2D images and pyramids (:mod:`promptseg.tiling`):
        ``"auto"`` tiles a 2D image above a size threshold, ``None`` never, an int or pair always.
    lazy : only create (or open) the store; a :class:`~promptseg.Session` embeds the slices or tiles
        its prompts need, when they are first needed.

    Returns
    -------
    EmbeddingStore with every slice (tile) embedded, unless ``lazy``.
    """
    from .tiling import make_embedder

    embedder = make_embedder(model, image, axis=axis, modality=modality, window=window, rgb=rgb,
                             tile_shape=tile_shape, overlap=overlap, level=level)
    store = open_store(embedder, cache, overwrite=overwrite)
    if not lazy:
        fill(store, embedder, store.missing(), batch_size=batch_size, progress=progress)
    return store


def store_settings(store: EmbeddingStore, window, modality, axis, tile_shape, overlap, level) -> tuple:
    """The preprocessing and tiling a Session on ``store`` uses where its own arguments are None (or
    ``tile_shape="auto"``): ``(window, axis, tile_shape, overlap, level)`` as the store was made."""
    sig = store.signature
    pre = sig.get("preprocessing", {})
    if window is None and modality is None and pre.get("lo") is not None:
        window = (pre["lo"], pre["hi"])
    axis = sig.get("axis") if axis is None else axis
    tiling = sig.get("tiling")
    if tiling is not None:
        tile_shape, overlap, level = tiling["tile"], tiling["overlap"], tiling["level"]
    elif tile_shape == "auto":
        tile_shape = None
    return window, axis, tile_shape, overlap, level


def open_store(embedder: Embedder, cache=None, *, overwrite=False) -> EmbeddingStore:
    """The store for ``embedder``'s image and model at ``cache`` (created empty if absent)."""
    g = embedder.model.sam.prompt_encoder.image_embedding_size
    shape = (embedder.model.sam.prompt_encoder.embed_dim, g[0], g[1])
    return EmbeddingStore.open_or_create(cache, embedder.signature(), embedder.n_slices, shape, embedder.frame, overwrite=overwrite)


def fill(store: EmbeddingStore, embedder: Embedder, indices, *, batch_size=None, progress: Progress | None = None,
         overlap: bool | None = None) -> None:
    """Embed ``indices`` into ``store`` batch by batch (memory: a few batches).

    On a GPU, reading and preprocessing run ahead in background threads (two batches deep) and finished
    slices are written by background threads, so the encoder never waits for the disk on either side; on
    the CPU, whose cores the encoder already uses, the same steps run in turn (threads there cost ~15 %
    throughput on 2 cores); ``overlap`` forces either way. Each slice's done flag is written after its
    features. A batch that runs out of GPU memory is split in halves and retried, and the smaller batch
    size is kept for the rest of the run; a single slice that does not fit raises :class:`ModelError`.
    ``progress(done, total)`` follows the written slices.
    """
    indices = [i for i in indices if not store.is_done(i)]
    if batch_size is None:
        batch_size = 1 if embedder.model.device.type == "cpu" else 8
    total, start, queued, written = len(indices), 0, 0, 0
    inputs, writes = {}, []
    overlap = embedder.model.device.type != "cpu" if overlap is None else overlap
    with (ThreadPoolExecutor(min(4, os.cpu_count() or 1)) if overlap else _Inline()) as readers, \
            (ThreadPoolExecutor(2) if overlap else _Inline()) as writers:
        try:
            while start < total:
                while queued < min(start + 2 * batch_size, total):  # keep two batches in preparation
                    inputs[indices[queued]] = readers.submit(embedder.prepare, indices[queued])
                    queued += 1
                chunk = indices[start : start + batch_size]
                images = [inputs[i].result() for i in chunk]  # a reading error surfaces here, as raised
                try:
                    feats = encode_half(embedder.model, images)
                except _oom_errors() as e:
                    if len(chunk) == 1:
                        raise ModelError(f"out of {embedder.model.device.type.upper()} memory embedding one slice "
                                         f"with {embedder.model.name}; free memory, use a smaller model or "
                                         "device='cpu'") from e
                    _free_cache()
                    batch_size = max(1, len(chunk) // 2)
                    continue
                for i, f in zip(chunk, feats):
                    del inputs[i]
                    writes.append(writers.submit(store.put, i, f, embedder.slice_hash(i)))
                start += len(chunk)
                # wait for the writes at the end, or when they fall behind (their features are in memory)
                writes, finished = _settle(writes, wait=start == total or len(writes) > 4 * batch_size)
                written += finished
                if progress is not None and finished:
                    progress(written, total)
        finally:
            for f in inputs.values():
                f.cancel()


class _Inline:
    """An executor that runs each call at once, in the caller's thread (fill's CPU path)."""

    def submit(self, fn, *args) -> Future:
        f = Future()
        try:
            f.set_result(fn(*args))
        except Exception as e:  # kept for .result(), like a thread pool would
            f.set_exception(e)
        return f

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def _settle(writes: list, wait: bool = False) -> tuple[list, int]:
    """Re-raise a failed write -> (writes still pending, number finished); ``wait``: all of them."""
    pending = []
    for w in writes:
        if wait or w.done():
            w.result()
        else:
            pending.append(w)
    return pending, len(writes) - len(pending)


def _oom_errors() -> tuple:
    import torch

    return (torch.cuda.OutOfMemoryError,) if hasattr(torch.cuda, "OutOfMemoryError") else (RuntimeError,)


def _free_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
