"""Large 2D images and whole slides: tile plans, lazy tiled embedding, routing, stitching, levels, errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import promptseg as ps
from promptseg.errors import CacheError, ImageError
from promptseg.io import read_image
from promptseg.slide import SyntheticSlide
from promptseg.tiling import TiledEmbedder, TilePlan, make_embedder


def dice(a, b):
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def done_tiles(store):
    return store.n_slices - len(store.missing())


@pytest.mark.parametrize("shape, tile, overlap", [((1000, 700), (256, 256), 64), ((4096, 4096), (512, 512), 128),
                                                  ((300, 5000), (512, 512), 100), ((513, 512), (512, 512), 0)])
def test_tile_plan_covers_and_cores_partition(shape, tile, overlap):
    plan = TilePlan(shape, tile, overlap)
    cover = np.zeros(shape, int)
    owner = np.zeros(shape, int)
    for t in range(plan.n_tiles):
        r0, r1, c0, c1 = plan.region(t)
        assert (r1 - r0, c1 - c0) == tuple(min(a, b) for a, b in zip(tile, shape))  # all tiles the same size
        assert r0 >= 0 and c0 >= 0 and r1 <= shape[0] and c1 <= shape[1]
        cover[r0:r1, c0:c1] += 1
        q0, q1, p0, p1 = plan.core(t)
        assert r0 <= q0 <= q1 <= r1 and c0 <= p0 <= p1 <= c1  # a core lies inside its tile
        owner[q0:q1, p0:p1] += 1
    assert cover.min() >= 1
    assert (owner == 1).all()  # every pixel belongs to exactly one core
    for r, c in [(5, 5), (shape[0] - 1, shape[1] // 2), (shape[0] // 2, shape[1] - 1)]:
        hits = plan.touching(r, r, c, c)
        expect = [t for t in range(plan.n_tiles) if plan.region(t)[0] <= r < plan.region(t)[1]
                  and plan.region(t)[2] <= c < plan.region(t)[3]]
        assert hits == expect and hits


def test_bad_tiles_and_levels():
    with pytest.raises(ImageError, match="overlap"):
        TilePlan((100, 100), (64, 64), 60)
    model = ps.load_model("default")
    levels = SyntheticSlide((2048, 2048)).levels(3)
    with pytest.raises(ImageError, match="level 5 does not exist.*0..2"):
        ps.Session(model, levels, level=5)
    with pytest.raises(ImageError, match="level"):
        make_embedder(model, np.zeros((4, 64, 64), np.uint8), level=1)


@pytest.fixture(scope="module")
def model():
    return ps.load_model("default")


def test_click_on_a_20000_slide_embeds_only_the_tiles_it_needs(model, tmp_path):
    slide = SyntheticSlide((20000, 20000), seed=5)
    levels = slide.levels()
    store = ps.embed(levels, model, cache=tmp_path / "slide.zarr", lazy=True)
    assert store.n_slices == 52 * 52 and done_tiles(store) == 0
    s = ps.Session(model, levels, embeddings=store)
    assert s.tiled and s.shape == (20000, 20000)
    emb = s.embedder
    # an object that sits inside the core of one tile, away from every overlap
    for i, (r, c, ry, rx, _) in enumerate(slide.objects):
        reach = max(ry, rx) + 10
        ts = emb.plan.touching(r - reach, r + reach, c - reach, c + reach)
        if len(ts) == 1 and 1000 < min(r, c):
            break
    p = s.add_point((r, c))
    assert done_tiles(store) == 1 and s.store.is_done(ts[0])  # one tile embedded for one click
    box = (slice(int(r) - 250, int(r) + 250), slice(int(c) - 250, int(c) + 250))
    assert dice(s.mask[box], slide.labels(box[0].start, box[0].stop, box[1].start, box[1].stop) == i + 1) > 0.9
    assert p.bbox[0].start >= box[0].start and p.bbox[1].stop <= box[1].stop  # the repaint box is the object's
    label = s.commit()
    assert s.labels[int(r), int(c)] == label and s.labels[box].sum() == label * (s.labels[box] == label).sum()

    # a click on an object in the overlap of four tiles goes to all four, and to no other
    for j, (r4, c4, *_) in enumerate(slide.objects):
        ts4 = emb.plan.touching(r4, r4, c4, c4)  # the object's centre lies in four tiles
        if len(ts4) == 4 and ts[0] not in ts4 and 1000 < min(r4, c4):
            break
    assert len(ts4) == 4 and ts[0] not in ts4  # the slide has such an object
    s.add_point((r4, c4))
    assert done_tiles(store) == 5 and all(s.store.is_done(t) for t in ts4)
    box4 = (slice(int(r4) - 250, int(r4) + 250), slice(int(c4) - 250, int(c4) + 250))
    assert dice(s.mask[box4], slide.labels(box4[0].start, box4[0].stop, box4[1].start, box4[1].stop) == j + 1) > 0.85
    # reopening the cache reuses the embedded tiles
    again = ps.Session(model, levels, embeddings=ps.embed(levels, model, cache=tmp_path / "slide.zarr", lazy=True))
    again.add_point((r, c))
    assert done_tiles(again.store) == 5


@pytest.mark.parametrize("radii", [(90, 70, 0.5), (60, 60, 0.0), (150, 100, 1.0)])
def test_object_across_a_tile_corner_is_segmented_whole(model, radii):
    # tiles of 512 with overlap 128 start every 384 px: four tile cores meet at (448, 448)
    corner, middle = (448.0, 448.0), (2200.0, 2200.0)
    slide = SyntheticSlide((4096, 4096), density=0, extra=[(*corner, *radii), (*middle, *radii)])
    image = slide.levels(1)[0].compute()
    s = ps.Session(model, image)
    assert s.tiled and s.embedder.plan.tile == (512, 512)
    masks = []
    for r, c in (corner, middle):
        s.add_point((r, c))
        used = set(s._states[0].logits)
        assert len(used) == (4 if (r, c) == corner else 1)
        masks.append(np.asarray(s.mask[int(r) - 300 : int(r) + 300, int(c) - 300 : int(c) + 300]).copy())
        s.reset()
    truth = slide.labels(148, 748, 148, 748) > 0
    assert dice(masks[0], masks[1]) >= 0.95
    assert dice(masks[0], truth) >= 0.9


def test_embedding_at_a_coarser_level_gives_full_resolution_masks(model):
    slide = SyntheticSlide((4096, 4096), density=0, extra=[(1500, 1500, 300, 200, 0.3)])
    levels = slide.levels(3)
    s = ps.Session(model, levels, level=2)
    assert isinstance(s.embedder, TiledEmbedder) and s.embedder.scale == (4.0, 4.0)
    s.add_point((1500, 1500))
    assert s.mask.shape == (4096, 4096)
    assert dice(np.asarray(s.mask), slide.labels(0, 4096, 0, 4096) > 0) > 0.9
    # undo and redo restore the slide-sized mask from its packed box
    before = np.asarray(s.mask).copy()
    s.undo()
    assert not s.mask.any()
    s.redo()
    np.testing.assert_array_equal(s.mask, before)


def test_box_and_set_mask_on_a_tiled_image(model):
    slide = SyntheticSlide((3000, 3000), density=0, extra=[(900, 1200, 120, 80, 0.2)])
    image = slide.levels(1)[0].compute()
    truth = slide.labels(0, 3000, 0, 3000) > 0
    s = ps.Session(model, image)
    s.add_box((760, 1060), (1040, 1340))
    assert dice(np.asarray(s.mask), truth) > 0.9
    s.reset()
    s.set_mask(truth)
    assert set(s._states[0].logits) and dice(np.asarray(s.mask), truth) == 1.0
    s.add_point((900, 1200))  # refined from the mask's per-tile logits
    assert dice(np.asarray(s.mask), truth) > 0.9


def test_tiled_cache_refuses_other_pixels(model, tmp_path):
    slide = SyntheticSlide((2600, 2600), seed=1)
    image = np.array(slide.levels(1)[0])
    store = ps.embed(image, model, cache=tmp_path / "c.zarr", lazy=True)
    s = ps.Session(model, image, embeddings=store)
    s.add_point(tuple(slide.objects[3][:2]))
    t = next(i for i in range(store.n_slices) if store.is_done(i))
    changed = image.copy()
    r0, r1, c0, c1 = s.embedder.extent(t)
    changed[r0 + 5 : r0 + 9, c0 + 5 : c0 + 9] = 0  # another image that differs inside that tile only
    if t in (0, store.n_slices // 2):
        pytest.skip("the changed tile is one of the signature's probe tiles")
    other = ps.Session(model, changed, embeddings=ps.embed(changed, model, cache=tmp_path / "c.zarr", lazy=True))
    with pytest.raises(CacheError, match=f"tile {t}"):
        other.add_point(tuple(slide.objects[3][:2]))
    with pytest.raises(CacheError, match="tiling"):
        ps.embed(image, model, cache=tmp_path / "c.zarr", tile_shape=256, lazy=True)


def test_corrupt_tile_is_named_and_spares_the_others(model, tmp_path):
    slide = SyntheticSlide((2048, 2048), density=0, extra=[(300, 300, 60, 50, 0.0), (1700, 1700, 60, 50, 0.0)])
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, np.array(slide.levels(1)[0]), tile=(256, 256), compression="zlib", photometric="rgb")
    with tifffile.TiffFile(path) as tif:  # overwrite the file's tile under (1700, 1700) with garbage
        page = tif.pages[0]
        k = (1700 // 256) * (2048 // 256) + 1700 // 256
        off, count = page.dataoffsets[k], page.databytecounts[k]
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(b"\x07" * count)
    image, _ = read_image(path, lazy=True)
    store = ps.embed(image, model, cache=tmp_path / "e.zarr", lazy=True)
    s = ps.Session(model, image, embeddings=store)
    s.add_point((300, 300))  # a healthy region works
    good = {t for t in range(store.n_slices) if store.is_done(t)}
    with pytest.raises(ImageError, match=r"cannot read tile \d+ .*of the image"):
        s.add_point((1700, 1700))
    assert {t for t in range(store.n_slices) if store.is_done(t)} >= good  # nothing else lost or marked done
    assert s.mask[300, 300] and not s.mask[1700, 1700]


def test_edit_a_committed_object_on_a_tiled_image(model):
    slide = SyntheticSlide((3000, 3000), density=0, extra=[(900, 1200, 120, 80, 0.2)])
    image = slide.levels(1)[0].compute()
    s = ps.Session(model, image)
    s.add_point((900, 1200))
    label = s.commit()
    assert s.objects[-1]["bbox"][0][0] <= 900 < s.objects[-1]["bbox"][0][1]
    s.edit(label)
    s.add_point((900, 1200 + 60), positive=False)  # cut a piece off
    assert s.commit() == label
    assert s.labels[900, 1200] == label and (s.labels == label).sum() < (slide.labels(0, 3000, 0, 3000) > 0).sum()
