"""Embedding caches: reuse, refusal of foreign caches, resume after a crash or a kill, streaming, bad input.

Most tests use ``fast``: the shipped ``tiny`` architecture at a 256 px input (16x16 embedding grid), so
that volumes of dozens of slices embed in well under a second.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

import promptseg as ps
from promptseg.embeddings import EmbeddingStore
from promptseg.models import registry
from promptseg.preprocess import Frame

from conftest import make_checkpoint

SRC = str(Path(__file__).resolve().parents[1] / "src")
FAST_SPEC = dict(name="test_fast", arch="tiny", filename="fast.pth", input_size=256)


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    """(PromptModel, checkpoint path) of a tiny model with a 256 px input."""
    path = make_checkpoint(tmp_path_factory.mktemp("fast") / "fast.pth", seed=7, image_size=256)
    registry.register_model(ps.ModelSpec(**FAST_SPEC), overwrite=True)
    yield ps.load_model("test_fast", checkpoint=path, device="cpu"), path
    registry.unregister_model("test_fast")


@pytest.fixture
def count_encode(monkeypatch):
    """Wrap ``model.encode`` to count the images it embeds; optionally fail after ``fail_after`` calls."""

    def wrap(model, fail_after: int | None = None):
        calls = []
        real = model.encode

        def encode(images):
            if fail_after is not None and len(calls) >= fail_after:
                raise RuntimeError("encoder died")
            calls.append(len(images))
            return real(images)

        monkeypatch.setattr(model, "encode", encode)
        return calls

    return wrap


def _vol(n, h=64, w=64, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.integers(0, 60, (n, h, w), dtype=np.uint8)
    for z in range(n):  # a disc that moves with z, so slices differ in structure, not only noise
        rr, cc = np.mgrid[:h, :w]
        v[z][(rr - h // 2) ** 2 + (cc - w // 4 - z) ** 2 < (min(h, w) // 5) ** 2] = 200
    return v


def _listing(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in Path(folder).rglob("*")}


# -- reuse -------------------------------------------------------------------------------------------
def test_cache_is_written_and_reused_without_encoding(default_model, rgb_image, tmp_path, count_encode):
    path = tmp_path / "img.zarr"
    first = ps.embed(rgb_image, default_model, cache=path)
    assert (path / "zarr.json").is_file() and (path / "features").is_dir()
    assert first.n_slices == 1 and first.missing() == []
    feats = np.asarray(first.features[:])
    pe = default_model.sam.prompt_encoder
    assert feats.shape == (1, pe.embed_dim, *pe.image_embedding_size) and np.abs(feats).max() > 0

    calls = count_encode(default_model)
    again = ps.embed(rgb_image, default_model, cache=path)
    assert calls == [], "a matching cache must be reused, not recomputed"
    np.testing.assert_array_equal(np.asarray(again.features[:]), feats)
    assert again.frame == Frame.for_shape((300, 500), default_model.input_size)  # longest side to the input size
    # and the cache survives a fresh open from disk
    np.testing.assert_array_equal(EmbeddingStore.open(path).get(0), feats[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.zarr"], "no temporary store left behind"


# -- foreign caches ----------------------------------------------------------------------------------
def _variant(kind, img):
    """(image, embed kwargs, expected words in the error) for a cache made from ``img`` with axis 0."""
    if kind == "pixel":
        other = img.copy()
        other[1, 2, 3] ^= 1
        return other, {}, "pixels differ"
    if kind == "shape":
        return img[:, :-1], {}, "shape differs"
    if kind == "dtype":
        return img.astype(np.uint16), {"window": (0, 255)}, "dtype differs"
    if kind == "window":
        return img, {"window": (0, 100)}, "another preprocessing"
    if kind == "axis":
        return img, {"axis": 1}, "another slicing axis"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["pixel", "shape", "dtype", "window", "axis"])
def test_cache_of_another_image_or_preprocessing_is_refused(fast, tmp_path, kind):
    model, _ = fast
    img = _vol(4, 6, 24)  # axis 1 cuts it into 6 slices of 4 x 24
    path = tmp_path / "c.zarr"
    ps.embed(img, model, cache=path)
    before = np.asarray(EmbeddingStore.open(path).features[:])

    other, kwargs, words = _variant(kind, img)
    with pytest.raises(ps.CacheError) as exc:
        ps.embed(other, model, cache=path, **kwargs)
    msg = str(exc.value)
    assert str(path) in msg and words in msg and "overwrite=True" in msg
    # the refused cache is untouched ...
    np.testing.assert_array_equal(np.asarray(EmbeddingStore.open(path).features[:]), before)
    # ... until overwrite=True replaces it with the new one
    new = ps.embed(other, model, cache=path, overwrite=True, **kwargs)
    assert new.missing() == []
    reopened = ps.embed(other, model, cache=path, **kwargs)  # now matches the new image
    np.testing.assert_array_equal(np.asarray(reopened.features[:]), np.asarray(new.features[:]))
    with pytest.raises(ps.CacheError):
        ps.embed(img, model, cache=path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr"]


def test_cache_of_another_model_is_refused(default_model, small_sam, tmp_path):
    small, _ = small_sam
    img = _vol(1, 40, 56)[0]
    path = tmp_path / "c.zarr"
    ps.embed(img, default_model, cache=path)
    with pytest.raises(ps.CacheError) as exc:
        ps.embed(img, small, cache=path)
    assert f"another model ({default_model.name})" in str(exc.value) and str(path) in str(exc.value)
    store = ps.embed(img, small, cache=path, overwrite=True)
    assert store.signature["model"] == small.fingerprint
    assert store.signature["model_name"] == "test_small"
    with pytest.raises(ps.CacheError, match=r"another model \(test_small\)"):
        ps.embed(img, default_model, cache=path)


@pytest.mark.parametrize("what", ["folder", "zarr_group", "file"])
def test_path_that_is_not_a_cache_is_refused_and_kept_even_with_overwrite(fast, tmp_path, what):
    model, _ = fast
    path = tmp_path / "thing"
    if what == "folder":
        path.mkdir()
        (path / "notes.txt").write_text("mine")
    elif what == "zarr_group":
        zarr.open_group(str(path), mode="w").create_array("a", shape=(3,), dtype="uint8")
    else:
        path.write_text("mine")
    before = _listing(tmp_path)
    for overwrite in (False, True):  # overwrite=True replaces caches only, never someone's files
        with pytest.raises(ps.CacheError, match="is not a promptseg embedding cache") as exc:
            ps.embed(_vol(1, 32, 32)[0], model, cache=path, overwrite=overwrite)
        assert str(path) in str(exc.value)
        assert _listing(tmp_path) == before
    if what != "zarr_group":
        assert (path.read_text() if what == "file" else (path / "notes.txt").read_text()) == "mine"


# -- resume ------------------------------------------------------------------------------------------
def test_resume_after_encoder_failure_encodes_only_missing_slices(fast, tmp_path, count_encode, monkeypatch):
    model, _ = fast
    vol = _vol(6)
    reference = np.asarray(ps.embed(vol, model).features[:])  # uninterrupted, in memory

    path = tmp_path / "v.zarr"
    calls = count_encode(model, fail_after=3)
    with pytest.raises(RuntimeError, match="encoder died"):
        ps.embed(vol, model, cache=path, batch_size=1)
    assert calls == [1, 1, 1]
    store = EmbeddingStore.open(path)
    np.testing.assert_array_equal(store.done_flags[:], [1, 1, 1, 0, 0, 0])
    assert store.missing() == [3, 4, 5]
    np.testing.assert_array_equal(np.asarray(store.features[:3]), reference[:3])
    with pytest.raises(ps.CacheError, match="slice 4 is not embedded yet"):
        store.get(4)

    monkeypatch.undo()
    calls = count_encode(model)
    progress = []
    store = ps.embed(vol, model, cache=path, batch_size=1, progress=lambda d, t: progress.append((d, t)))
    assert calls == [1, 1, 1], "only the three missing slices may be encoded"
    done = [d for d, _ in progress]  # written slices: rising to 3 (writes finish in the background)
    assert done == sorted(set(done)) and done[-1] == 3 and {t for _, t in progress} == {3}
    assert store.missing() == []
    np.testing.assert_array_equal(np.asarray(store.features[:]), reference)


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np, torch
    torch.set_num_threads(2)
    import promptseg as ps
    from promptseg.models import registry
    ckpt, volume, cache = sys.argv[1:4]
    registry.register_model(ps.ModelSpec(name="test_fast", arch="tiny", filename="fast.pth", input_size=256))
    model = ps.load_model("test_fast", checkpoint=ckpt, device="cpu")
    encode = model.encode
    def slow(images):
        time.sleep(0.3)
        return encode(images)
    model.encode = slow
    ps.embed(np.load(volume, mmap_mode="r"), model, cache=cache, batch_size=1)
    print("finished")
    """
)


def test_resume_after_sigkill(fast, tmp_path, count_encode):
    model, ckpt = fast
    n = 12
    vol = _vol(n, seed=5)
    np.save(tmp_path / "vol.npy", vol)
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT)
    path = tmp_path / "v.zarr"
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen(
        [sys.executable, str(script), ckpt, str(tmp_path / "vol.npy"), str(path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 45
        while True:
            assert proc.poll() is None, f"embedding process ended early: {proc.communicate()}"
            assert time.monotonic() < deadline, "the subprocess embedded nothing in time"
            if (path / "zarr.json").is_file() and zarr.open_group(str(path), mode="r")["done"][:].sum() >= 2:
                break
            time.sleep(0.03)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    store = EmbeddingStore.open(path)
    done = int(store.done_flags[:].sum())
    assert 2 <= done < n, done
    calls = count_encode(model)
    store = ps.embed(np.load(tmp_path / "vol.npy", mmap_mode="r"), model, cache=path)
    assert len(calls) == n - done, "slices finished before the kill must not be encoded again"
    assert store.missing() == []
    reference = np.asarray(ps.embed(vol, model).features[:])
    np.testing.assert_allclose(np.asarray(store.features[:], np.float32), reference.astype(np.float32), rtol=1e-2, atol=1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.py", "v.zarr", "vol.npy"]


# -- streaming ---------------------------------------------------------------------------------------
def test_memmap_volume_is_streamed(fast, tmp_path):
    model, _ = fast
    h = w = 256
    vol = np.lib.format.open_memmap(tmp_path / "vol.npy", mode="w+", dtype=np.uint16, shape=(64, h, w))
    vol[:] = np.random.default_rng(1).integers(0, 4000, vol.shape, dtype=np.uint16)
    vol.flush()
    del vol
    mm = np.load(tmp_path / "vol.npy", mmap_mode="r")
    window = (0, 4000)  # a fixed window: no percentile sample (that one is bounded by its own budget)

    ps.embed(mm[:2], model, window=window)  # warm-up: imports, first-call allocations
    peak16 = _peak_embed(mm[:16], model, tmp_path / "a.zarr", window)
    peak64 = _peak_embed(mm, model, tmp_path / "b.zarr", window)
    slice_bytes = h * w * 2
    grown = 48 * slice_bytes  # what loading 48 more slices would cost
    assert peak64 < 1.5 * peak16 + 512 * 1024, (peak16, peak64)
    assert peak64 - peak16 < grown / 4, (peak16, peak64, grown)
    assert peak64 < mm.nbytes / 4, (peak64, mm.nbytes)


def _peak_embed(image, model, cache, window) -> int:
    tracemalloc.start()
    try:
        store = ps.embed(image, model, cache=cache, window=window)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert store.missing() == []
    return peak


class _Recorder:
    """An array-like over a zarr array that records every read."""

    def __init__(self, arr):
        self.arr = arr
        self.shape = arr.shape
        self.dtype = arr.dtype
        self.ndim = arr.ndim
        self.reads = []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.arr[key]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole volume was loaded")


def test_zarr_volume_is_read_slice_by_slice(fast, tmp_path):
    model, _ = fast
    vol = _vol(8, 48, 40)
    z = zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=vol.shape, chunks=(1, 48, 40), dtype="uint8")
    z[:] = vol
    rec = _Recorder(zarr.open_array(str(tmp_path / "in.zarr"), mode="r"))
    store = ps.embed(rec, model)
    assert rec.reads, "the zarr array was never read"
    for key in rec.reads:
        assert isinstance(key, tuple) and isinstance(key[0], (int, np.integer)), f"read {key!r} is not one slice"
    reference = np.asarray(ps.embed(vol, model).features[:])
    np.testing.assert_array_equal(np.asarray(store.features[:]), reference)
    # and a plain zarr.Array (no wrapper) gives the same embeddings
    direct = ps.embed(zarr.open_array(str(tmp_path / "in.zarr"), mode="r"), model)
    np.testing.assert_array_equal(np.asarray(direct.features[:]), reference)


# -- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("window", [None, (0.0, 1.0)])
def test_nan_or_inf_is_an_image_error_and_leaves_no_cache(fast, tmp_path, bad, window):
    model, _ = fast
    img = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    img[2, 5, 7] = bad
    path = tmp_path / "c.zarr"
    with pytest.raises(ps.ImageError, match="NaN or infinite"):
        ps.embed(img, model, cache=path, window=window)
    with pytest.raises(ps.ImageError, match="NaN or infinite"):
        ps.embed(img[2], model, cache=path, window=window)
    assert list(tmp_path.iterdir()) == [], "a failed embed must leave nothing on disk"


@pytest.mark.parametrize(
    "shape, rgb, words",
    [
        ((0, 10), None, "empty"),
        ((1, 1), None, "too small"),
        ((1, 50), None, "too small"),
        ((4, 0, 8), None, "empty"),
        ((2, 3, 16, 16), None, "spatial dimensions"),
        ((2, 16, 16, 5), None, "spatial dimensions"),
        ((5, 5, 2), True, "not RGB"),
        ((8,), None, "spatial dimensions"),
    ],
)
def test_unusable_shapes_are_image_errors(fast, tmp_path, shape, rgb, words):
    model, _ = fast
    path = tmp_path / "c.zarr"
    with pytest.raises(ps.ImageError, match=words) as exc:
        ps.embed(np.zeros(shape, np.uint8), model, cache=path, rgb=rgb)
    assert str(shape).replace(" ", "") in str(exc.value).replace(" ", "")
    assert not path.exists()


def test_axis_out_of_range_is_an_image_error(fast):
    model, _ = fast
    with pytest.raises(ps.ImageError, match="axis=3"):
        ps.embed(_vol(3, 16, 16), model, axis=3)
    with pytest.raises(ps.ImageError, match="axis=1 given for a 2D image"):
        ps.embed(_vol(1, 16, 16)[0], model, axis=1)


# -- storage format ----------------------------------------------------------------------------------
def test_features_are_float16_one_chunk_per_slice(fast, tmp_path):
    model, _ = fast
    vol = _vol(3, 40, 50)
    path = tmp_path / "c.zarr"
    store = ps.embed(vol, model, cache=path)
    assert store.features.dtype == np.float16
    assert store.features.shape == (3, 256, 16, 16)
    assert store.features.chunks == (1, 256, 16, 16)
    assert store.features.chunks[0] == 1
    chunk_files = [p for p in (path / "features").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(chunk_files) == 3, chunk_files
    # each stored slice is the fp16 encoder output for that slice, as SamPredictor would compute it
    frame = Frame.for_shape((40, 50), 256)
    rgb = np.repeat(vol[1][..., None], 3, axis=-1)
    resized = np.array(Image.fromarray(rgb).resize(frame.input[::-1], Image.BILINEAR))
    expected = model.encode([resized])[0].numpy().astype(np.float16)
    got = store.get(1)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, expected)


def test_out_of_gpu_memory_splits_the_batch(small_sam, monkeypatch):
    """A batch that does not fit is halved and retried; a single slice that does not fit is a clear error."""
    import torch

    model, _ = small_sam
    vol = np.random.default_rng(0).integers(0, 255, (6, 32, 32), dtype=np.uint8)
    real = model.encode
    sizes = []

    def encode(images):
        sizes.append(len(images))
        if len(images) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(images)

    monkeypatch.setattr(model, "encode", encode)
    store = ps.embed(vol, model, batch_size=6)
    assert store.missing() == [] and sizes == [6, 3, 1, 1, 1, 1, 1, 1]  # 6 -> 3 -> 1, kept for the rest
    reference = ps.embed(vol, model, batch_size=1)
    assert all(np.array_equal(store.get(i), reference.get(i)) for i in range(6))

    def never(images):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(model, "encode", never)
    with pytest.raises(ps.ModelError, match="out of CPU memory embedding one slice"):
        ps.embed(vol, model, batch_size=4)


@pytest.mark.parametrize("batch", [1, 3])
def test_overlapped_fill_gives_the_same_cache_and_keeps_what_was_done(fast, tmp_path, batch):
    """The GPU path (reader and writer threads) forced on the CPU: same bytes; a bad slice stops it cleanly."""
    from promptseg.embeddings import Embedder, fill, open_store

    model, _ = fast
    vol = _vol(7)
    reference = np.asarray(ps.embed(vol, model, batch_size=batch).features[:])
    emb = Embedder(model, vol)
    store = open_store(emb, tmp_path / "a.zarr")
    seen = []
    fill(store, emb, list(range(7)), batch_size=batch, overlap=True, progress=lambda d, t: seen.append(d))
    np.testing.assert_array_equal(np.asarray(store.features[:]), reference)
    assert store.missing() == [] and seen[-1] == 7 and seen == sorted(seen)

    real = emb.raw_slice

    def raw_slice(i):  # slice 5 cannot be read (e.g. a damaged file)
        if i == 5:
            raise ps.ImageError("cannot read slice 5 of the image")
        return real(i)

    emb.raw_slice = raw_slice
    store = open_store(emb, tmp_path / "b.zarr")
    with pytest.raises(ps.ImageError, match="slice 5"):
        fill(store, emb, list(range(7)), batch_size=batch, overlap=True)
    done = list(np.flatnonzero(store.done_flags[:]))
    assert done == list(range(len(done))) and 3 <= len(done) <= 5, done  # the batches before slice 5's
    np.testing.assert_array_equal(np.asarray(store.features[: len(done)]), reference[: len(done)])
