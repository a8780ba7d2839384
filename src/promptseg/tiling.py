"""Large 2D images and whole slides: tile plans and lazy tiled embeddings.

A 2D image whose longest side exceeds twice the tile side (1024 px for SAM models, 512 px for smaller
encoders) is cut into overlapping tiles of equal size (the last row/column of tiles is shifted to end
at the border); each tile is one "slice" of the embedding store, so tiles are embedded **lazily**, when
a prompt (or a viewer) first needs them, and cached with a done flag and a pixel hash per tile.

A pyramid (a list of levels, level 0 = full resolution, as napari holds a multiscale image) may be
embedded at any ``level``; tiles are then cut from that level and prompts and masks stay in level-0
(full-resolution) pixel coordinates.

Prompting a tiled image (routing prompts to tiles and stitching their masks) is in :mod:`.tiled_decode`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .embeddings import Embedder
from .errors import ImageError
from .preprocess import Frame, check_finite, choose_intensity, spatial_shape


@dataclass(frozen=True)
class TilePlan:
    """Overlapping tiles of equal size over an (H, W) plane; tile ``t`` is at grid (t // nc, t % nc)."""

    shape: tuple[int, int]
    tile: tuple[int, int]
    overlap: int

    def __post_init__(self):
        if min(self.tile) < 16 or not 0 <= self.overlap < min(self.tile) // 2 + 1:
            raise ImageError(f"tile shape {self.tile} with overlap {self.overlap}: tiles must be at least 16 px "
                             "and the overlap between 0 and half a tile")

    @cached_property
    def starts(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return tuple(_starts(n, min(t, n), self.overlap) for n, t in zip(self.shape, self.tile))

    @cached_property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per axis, the core boundaries: tile i owns [b[i], b[i+1]) (midpoints of the overlaps)."""
        out = []
        for n, t, st in zip(self.shape, self.tile, self.starts):
            t = min(t, n)
            mids = [(a + t + b) // 2 for a, b in zip(st[:-1], st[1:])]
            out.append(np.array([0, *mids, n]))
        return tuple(out)

    @property
    def grid(self) -> tuple[int, int]:
        return len(self.starts[0]), len(self.starts[1])

    @property
    def n_tiles(self) -> int:
        return self.grid[0] * self.grid[1]

    def region(self, t: int) -> tuple[int, int, int, int]:
        """(r0, r1, c0, c1) of tile ``t``, half-open, in plane pixels."""
        i, j = divmod(int(t), self.grid[1])
        th, tw = (min(a, b) for a, b in zip(self.tile, self.shape))
        return self.starts[0][i], self.starts[0][i] + th, self.starts[1][j], self.starts[1][j] + tw

    def core(self, t: int) -> tuple[int, int, int, int]:
        """(r0, r1, c0, c1): the pixels tile ``t`` owns; the cores partition the plane."""
        i, j = divmod(int(t), self.grid[1])
        br, bc = self.bounds
        return int(br[i]), int(br[i + 1]), int(bc[j]), int(bc[j + 1])

    def touching(self, r0: float, r1: float, c0: float, c1: float) -> list[int]:
        """Tiles whose region intersects rows [r0, r1] and columns [c0, c1] (inclusive, pixel units)."""
        th, tw = (min(a, b) for a, b in zip(self.tile, self.shape))
        rows = [i for i, s in enumerate(self.starts[0]) if s - 0.5 <= r1 and r0 <= s + th - 0.5]
        cols = [j for j, s in enumerate(self.starts[1]) if s - 0.5 <= c1 and c0 <= s + tw - 0.5]
        return [i * self.grid[1] + j for i in rows for j in cols]

    def as_dict(self) -> dict:
        return {"shape": list(self.shape), "tile": list(self.tile), "overlap": self.overlap}


def _starts(n: int, t: int, overlap: int) -> tuple[int, ...]:
    if n <= t:
        return (0,)
    step = t - overlap
    count = -(-(n - t) // step) + 1
    return tuple(min(i * step, n - t) for i in range(count))


def default_tile(model) -> int:
    """Tile side for a model: 1024 px for SAM-sized inputs, 512 px for smaller encoders."""
    return 1024 if model.input_size >= 1024 else 512


class TiledEmbedder(Embedder):
    """Embeds the tiles of one pyramid level of a 2D image; tile ``t`` is store slice ``t``.

    Parameters
    ----------
    model : PromptModel.
    image : (H, W) or (H, W, 3|4) array-like, or a list of such arrays (a pyramid, level 0 first).
    level : pyramid level to embed (0 = full resolution).
    tile_shape : tile side or (rows, cols) in pixels of that level (default :func:`default_tile`).
    overlap : pixels shared by neighbouring tiles (default a quarter of the tile).
    modality, window, rgb : see :mod:`promptseg.preprocess`.

    ``spatial`` is the full-resolution (level-0) shape; ``extent(t)`` is tile ``t`` in level-0 pixels.
    """

    def __init__(self, model, image, *, level: int | None = None, tile_shape=None, overlap=None, modality=None,
                 window=None, rgb=None):
        levels = list(image) if isinstance(image, (list, tuple)) else [image]
        level = _check_level(levels, level)
        self.model, self.image, self.level, self.data = model, image, level, levels[level]
        self.spatial, self.rgb = spatial_shape(levels[0], rgb)
        plane, _ = spatial_shape(self.data, self.rgb)
        if len(self.spatial) != 2 or len(plane) != 2:
            raise ImageError(f"tiling is for 2D images; this one has shape {tuple(levels[0].shape)}")
        self.axis = None
        self.scale = (self.spatial[0] / plane[0], self.spatial[1] / plane[1])
        side = default_tile(model) if tile_shape is None else tile_shape
        tile = (int(side), int(side)) if np.isscalar(side) else tuple(int(v) for v in side)
        overlap = min(tile) // 4 if overlap is None else int(overlap)
        self.plan = TilePlan(tuple(plane), tile, overlap)
        self.intensity = choose_intensity(self.data, rgb=self.rgb, modality=modality, window=window)
        self.frame = self.tile_frame(0)  # every tile has this input size; the last ones may differ in extent
        self._data_hash: str | None = None
        self._hashes: dict[int, bytes] = {}
        self.weights: dict[tuple, np.ndarray] = {}  # blending weights by tile class, see _weights

    @property
    def n_slices(self) -> int:
        return self.plan.n_tiles

    def raw_slice(self, t: int) -> np.ndarray:
        r0, r1, c0, c1 = self.plan.region(t)
        try:
            return np.asarray(self.data[r0:r1, c0:c1])
        except Exception as e:  # a corrupt or unreadable tile of the file: name it; other tiles stay usable
            raise ImageError(f"cannot read tile {t} (rows {r0}:{r1}, columns {c0}:{c1} of level {self.level}) "
                             f"of the image: {type(e).__name__}: {' '.join(str(e).split())[:200]}") from e

    def extent(self, t: int) -> tuple[int, int, int, int]:
        """Tile ``t`` in full-resolution pixels: (r0, r1, c0, c1), half-open."""
        r0, r1, c0, c1 = self.plan.region(t)
        (sr, sc), (h, w) = self.scale, self.spatial
        return round(r0 * sr), min(round(r1 * sr), h), round(c0 * sc), min(round(c1 * sc), w)

    def tile_frame(self, t: int) -> Frame:
        """Geometry between tile ``t``'s full-resolution extent and the encoder input."""
        r0, r1, c0, c1 = self.plan.region(t)
        base = Frame.for_shape((r1 - r0, c1 - c0), self.model.input_size, self.model.spec.resize)
        e = self.extent(t)
        return Frame((e[1] - e[0], e[3] - e[2]), base.input, base.size)

    def slice_hash(self, t: int) -> bytes:
        """blake2b of tile ``t``'s pixels (kept from the last time it was read)."""
        if t not in self._hashes:
            self._hashes[t] = _tile_hash(self.raw_slice(t))
        return self._hashes[t]

    def prepare(self, t: int) -> np.ndarray:
        sl = self.raw_slice(t)
        check_finite(sl, f"tile {t} of the image")
        self._hashes[t] = _tile_hash(sl)
        return self.frame.resize(self.intensity.apply(sl))

    def data_hash(self) -> str:
        """Shape, dtype and the pixels of the first and the middle tile (every tile is checked on use)."""
        if self._data_hash is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(repr((tuple(self.data.shape), str(np.dtype(self.data.dtype)))).encode())
            for t in sorted({0, self.plan.n_tiles // 2}):
                h.update(self.slice_hash(t))
            self._data_hash = h.hexdigest()
        return self._data_hash

    def signature(self) -> dict:
        sig = super().signature()
        sig["tiling"] = {**self.plan.as_dict(), "level": self.level, "full_shape": list(self.spatial)}
        return sig


def _tile_hash(arr: np.ndarray) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.digest()


def make_embedder(model, image, *, axis=None, level=None, tile_shape="auto", overlap=None, modality=None, window=None,
                  rgb=None) -> Embedder:
    """The embedder for an image: tiled for a pyramid, a chosen level or a large 2D image, else plain.

    ``tile_shape="auto"`` tiles 2D images whose longest side exceeds twice :func:`default_tile`;
    ``None`` never tiles (a pyramid is then embedded whole at ``level``); an int or pair forces tiles.
    """
    pyramid = isinstance(image, (list, tuple))
    base = image[0] if pyramid else image
    if pyramid and not len(image):
        raise ImageError("an empty list of pyramid levels is not an image")
    spatial, rgb_flag = spatial_shape(base, rgb)
    if len(spatial) == 3:
        if pyramid or level not in (None, 0):
            raise ImageError("pyramid levels are for 2D images; pass the volume itself")
        return Embedder(model, image, axis=axis, modality=modality, window=window, rgb=rgb)
    if axis not in (None, 0):
        raise ImageError(f"axis={axis} given for a 2D image of shape {tuple(base.shape)}")
    kw = dict(modality=modality, window=window, rgb=rgb_flag)
    levels = list(image) if pyramid else [image]
    lv = _check_level(levels, level)
    plane = spatial_shape(levels[lv], rgb_flag)[0]
    if tile_shape == "auto":
        tile_shape = default_tile(model) if max(plane) > 2 * default_tile(model) else None
    if tile_shape is None and not pyramid and not lv:
        return Embedder(model, image, **kw)
    if tile_shape is None:  # one tile holding the whole level
        tile_shape, overlap = plane, 0
    return TiledEmbedder(model, image, level=level, tile_shape=tile_shape, overlap=overlap, **kw)


def _check_level(levels: list, level) -> int:
    """The pyramid level to use (0 when None); ImageError when it does not exist."""
    level = 0 if level is None else int(level)
    if not 0 <= level < len(levels):
        raise ImageError(f"pyramid level {level} does not exist: the image has level(s) 0..{len(levels) - 1}")
    return level


# -- prompting across tiles -------------------------------------------------------------------------
