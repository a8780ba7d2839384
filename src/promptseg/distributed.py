"""Embedding many images (or the slices of big volumes) on Dask: local threads or a cluster.

The client prepares one embedding store per image (the signature needs the image's hash) and splits the
missing slices into tasks of ``chunk`` slices. A task opens its image lazily, loads the model once per
worker process (cached), embeds its slices and writes them into the same zarr store as a local run would
(one chunk per slice, written atomically, done flag after the chunk). Slices already done are skipped,
so a task that is re-run after its worker died recomputes only what was not finished, and a cluster
run and a local run on the same device, precision and number of torch threads give byte-identical
embeddings (CPU convolutions may round differently with another thread count; dask starts its worker
processes with one thread).

Point it at a cluster with ``scheduler="tcp://host:8786"`` (a ``dask.distributed`` scheduler whose
workers can read the images and write the output folder, e.g. a shared file system); each GPU machine
runs ``dask worker tcp://host:8786 --nthreads 1`` with its own ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import functools
from pathlib import Path

from .embeddings import EmbeddingStore, fill, open_store
from .tiling import make_embedder


@functools.lru_cache(maxsize=4)
def _model(name: str, checkpoint: str | None, device: str):
    """The model, loaded once per worker process (and per name/checkpoint/device)."""
    from .models import load_model

    return load_model(name, checkpoint=checkpoint, device=device)


def _load(source):
    """An image source: a file path (read lazily; a pyramidal TIFF as its list of levels) or an array."""
    if isinstance(source, (str, Path)):
        from .io import read_image_or_pyramid

        return read_image_or_pyramid(source, lazy=True)[0]
    return source


def embed_task(source, store_path: str, indices: list[int], model_key: tuple, axis, batch_size) -> int:
    """Worker side: embed ``indices`` of ``source`` into the store at ``store_path``; returns slices done."""
    model = _model(*model_key)
    store = EmbeddingStore.open(store_path)
    pre = store.signature["preprocessing"]
    window = None if pre["lo"] is None else (pre["lo"], pre["hi"])
    tiling = store.signature.get("tiling") or {}
    embedder = make_embedder(model, _load(source), axis=axis, window=window, rgb=pre["rgb"],
                             tile_shape=tiling.get("tile"), overlap=tiling.get("overlap"), level=tiling.get("level"))
    todo = [i for i in indices if not store.is_done(i)]
    fill(store, embedder, todo, batch_size=batch_size)
    return len(todo)


def embed_many(sources, out_dir, *, model: str = "default", checkpoint=None, device: str = "cpu", axis=None,
               modality=None, window=None, chunk: int = 8, batch_size: int | None = 1, scheduler=None, progress=None,
               tile_shape="auto", overlap=None, level=None):
    """Embed many images (or the tiles of slides) into ``out_dir/<name>.zarr`` stores with Dask.

    Parameters
    ----------
    sources : list of image paths, or of ``(name, array)`` pairs.
    out_dir : folder for the stores.
    model, checkpoint, device : what each worker loads (once per process).
    axis, modality, window : as for :func:`promptseg.embed` (the same for every image).
    chunk : slices (or tiles) per task: a volume or a slide is split across workers in chunks of this many.
    batch_size : slices per encoder call inside a task.
    scheduler : None (local threads), "threads", "processes", "synchronous", a ``dask.distributed``
        address such as ``"tcp://10.0.0.1:8786"``, or a ``Client``.
    progress : called as ``progress(done_tasks, total_tasks)``.
    tile_shape, overlap, level : tiling of large 2D images and slides, as for :func:`promptseg.embed`.

    Returns
    -------
    list of store paths, in the order of ``sources``.
    """
    import dask

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = (model, None if checkpoint is None else str(checkpoint), device)
    local = _model(*key)
    tasks, paths, names = [], [], set()
    for src in sources:
        name, image = (Path(src).name.split(".")[0], _load(src)) if isinstance(src, (str, Path)) else src
        if name in names:
            from .errors import PromptsegError

            raise PromptsegError(f"two images would share the store {name}.zarr; rename one of them")
        names.add(name)
        embedder = make_embedder(local, image, axis=axis, modality=modality, window=window, tile_shape=tile_shape,
                                 overlap=overlap, level=level)
        store = open_store(embedder, out_dir / f"{name}.zarr")
        paths.append(store.path)
        missing = store.missing()
        payload = src if isinstance(src, (str, Path)) else image
        for start in range(0, len(missing), chunk):
            tasks.append(dask.delayed(embed_task)(payload, str(store.path), missing[start : start + chunk], key, axis, batch_size))
    if not tasks:
        return paths
    client = _client(scheduler)
    if client is None:
        kind = scheduler if scheduler in ("threads", "processes", "synchronous") else "threads"
        results = dask.compute(*tasks, scheduler=kind)
        if progress is not None:
            progress(len(results), len(tasks))
    else:
        from dask.distributed import as_completed

        futures = client.compute(tasks)
        for n, _ in enumerate(as_completed(futures), start=1):
            if progress is not None:
                progress(n, len(tasks))
    return paths


def _client(scheduler):
    """A ``dask.distributed.Client`` for an address or client, else None (local scheduler)."""
    if scheduler is None or scheduler in ("threads", "processes", "synchronous"):
        return None
    from dask.distributed import Client

    return scheduler if isinstance(scheduler, Client) else Client(scheduler)
