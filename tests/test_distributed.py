"""Embedding many images on Dask: local threads and a 2-worker LocalCluster, byte-identical to a local
run; finished slices are never recomputed; a killed worker's slices are redone."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import tifffile

import promptseg as ps
from promptseg.distributed import embed_many


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    a = (rng.random((40, 50)) * 255).astype(np.uint8)
    b = (rng.random((9, 32, 32)) * 4000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", a)
    tifffile.imwrite(tmp_path / "b.tif", b, photometric="minisblack")
    return [tmp_path / "a.tif", tmp_path / "b.tif"], {"a": a, "b": b}


def _same_as_local(paths, arrays, model, threads=None):
    """Compare with a local run; CPU convolutions can round differently with another thread count, so
    the reference uses the workers' (dask starts its worker processes with 1 thread)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        _compare(paths, arrays, model)
    finally:
        torch.set_num_threads(before)


def _compare(paths, arrays, model):
    for path in paths:
        name = path.name.split(".")[0]
        local = ps.embed(arrays[name], model, batch_size=1)
        store = ps.EmbeddingStore.open(path)
        assert store.missing() == []
        for i in range(store.n_slices):
            assert np.array_equal(store.get(i), local.get(i)), (name, i)  # byte-identical


def test_local_threads(images, tmp_path, default_model):
    files, arrays = images
    seen = []
    paths = embed_many(files, tmp_path / "out", chunk=4, progress=lambda d, t: seen.append((d, t)))
    assert [p.name for p in paths] == ["a.zarr", "b.zarr"] and seen[-1] == (4, 4)  # 1 + ceil(9 / 4) tasks
    _same_as_local(paths, arrays, default_model)
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("c/*") if p.is_file()}
    assert embed_many(files, tmp_path / "out") == paths  # all done: nothing recomputed, nothing rewritten
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())


def test_duplicate_names_are_refused(images, tmp_path):
    files, _ = images
    with pytest.raises(ps.PromptsegError, match="share the store"):
        embed_many([files[0], files[0]], tmp_path / "out")


def test_local_cluster_of_two_workers_survives_a_killed_worker(images, tmp_path, default_model):
    distributed = pytest.importorskip("dask.distributed")
    files, arrays = images
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        pids = list(client.run(os.getpid).values())
        done = []

        def progress(d, t):
            done.append(d)
            if d == 2:  # some tasks finished: kill one worker; its unfinished task goes to the other
                os.kill(pids[0], signal.SIGKILL)

        start = time.time()
        paths = embed_many(files, tmp_path / "out", chunk=1, scheduler=client, progress=progress)
        assert time.time() - start < 240
    assert done[-1] == 10  # 1 + 9 tasks
    _same_as_local(paths, arrays, default_model, threads=1)


def test_tiles_of_a_pyramidal_slide_on_dask(tmp_path, default_model):
    from promptseg.slide import SyntheticSlide

    full = SyntheticSlide((1400, 1300), seed=3).region(0, 1400, 0, 1300)[0]
    path = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(full, subifds=1, tile=(256, 256), photometric="rgb")
        tw.write(full[::2, ::2], subfiletype=1, tile=(256, 256), photometric="rgb")
    (out,) = embed_many([path], tmp_path / "out", tile_shape=256, overlap=64, level=1, chunk=3)
    store = ps.EmbeddingStore.open(out)
    tiling = store.signature["tiling"]
    assert tiling["level"] == 1 and tiling["tile"] == [256, 256] and store.n_slices == 16 and not store.missing()
    local = ps.embed([full, full[::2, ::2]], default_model, tile_shape=256, overlap=64, level=1)
    for t in range(store.n_slices):
        assert np.array_equal(store.get(t), local.get(t)), t  # byte-identical to a local run
