"""Large 2D images and whole slides: tile plans, lazy tiled embeddings, prompt routing and stitching.

A 2D image whose longest side exceeds twice the tile side (1024 px for SAM models, 512 px for smaller
encoders) is cut into overlapping tiles of equal size (the last row/column of tiles is shifted to end
at the border); each tile is one "slice" of the embedding store, so tiles are embedded **lazily**, when
a prompt (or a viewer) first needs them, and cached with a done flag and a pixel hash per tile.

A pyramid (a list of levels, level 0 = full resolution, as napari holds a multiscale image) may be
embedded at any ``level``; tiles are then cut from that level and prompts and masks stay in level-0
(full-resolution) pixel coordinates.

Prompting (:func:`decode_tiles`): the prompts go to every tile they touch (points inside it, the part
of a box that overlaps it); each tile's logits are upscaled to full resolution and blended with weights
that fall off towards inner tile edges, so masks are seamless. Where the blended mask reaches into the
core of a tile not yet used (the part of the image that tile owns), that tile is added, seeded with a
point inside the mask and the mask itself as ``mask_input``, until the object stops growing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

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
class TileLogits(NamedTuple):
    """What a tile keeps between prompts: its last low-res logits and the seed points it was grown from."""

    low: np.ndarray  # (1, L, L) float32
    seeds: tuple  # ((row, col), ...) full-resolution, positive


MAX_TILES = 64  # per prompt; an object larger than this many tiles is cut off


def decode_tiles(session, state, max_tiles: int = MAX_TILES):
    """Decode ``state``'s prompts on a tiled image; returns the new state (see the module docstring).

    ``state.logits`` is None or {tile: TileLogits}; the returned state's mask (``bits``/``extent``) is
    in full-resolution plane coordinates and its ``logits`` hold every tile that took part.
    """
    from dataclasses import replace

    from ._state import pack, points_of

    emb = session.embedder
    pts, flags = points_of(state)
    prev = dict(state.logits or {})
    active = set(prev)
    for r, c in pts:
        active.update(tiles_in(emb, r, r, c, c))
    if state.box is not None:
        b = state.box
        active.update(tiles_in(emb, min(b.r0, b.r1), max(b.r0, b.r1), min(b.c0, b.c1), max(b.c0, b.c1)))
    multimask = len(pts) == 1 and not state.scribbles and state.box is None and not prev
    seeds = {t: v.seeds for t, v in prev.items()}
    lows: dict[int, tuple[np.ndarray, float]] = {}
    pick = None
    if multimask:  # the three candidate masks: choose by the tile that owns the click, use that choice everywhere
        owner = _owner(emb, *pts[0])
        low, iou = _decode_one(session, owner, pts, flags, None, None, (), True)
        pick = int(np.argmax(iou))
        lows[owner] = (low[pick : pick + 1], float(iou[pick]))
    negatives, used = pts[~flags], {}
    while True:
        for t in sorted(active - set(lows)):
            mask_in = prev[t].low if t in prev else None
            r0, r1, c0, c1 = emb.extent(t)
            vetoed = any(r0 <= r < r1 and c0 <= c < c1 for r, c in negatives)  # the user said "not here"
            used[t] = () if vetoed else seeds.get(t, ())
            low, iou = _decode_one(session, t, pts, flags, state.box, mask_in, used[t], multimask, state.scribbles)
            k = pick if len(low) > 1 else 0
            lows[t] = (low[k : k + 1], float(iou[k]))
        mask, origin = _stitch(session, lows)
        grow = {} if len(lows) >= max_tiles else _spill(emb, mask, origin, set(lows))
        if not grow:
            break
        for t, seed in list(grow.items())[: max_tiles - len(lows)]:
            seeds[t] = (seed,)  # a point where the object continues; dropped once a negative click lands there
            prev[t] = TileLogits(_lowres_of(session, t, mask, origin), ())
            active.add(t)
    logits = {t: TileLogits(low, used.get(t, ())) for t, (low, _) in lows.items()}
    score = float(np.mean([s for _, s in lows.values()]))
    bits, extent = pack(mask, origin) if mask.any() else (None, None)
    return replace(state, logits=logits, score=score, bits=bits, extent=extent)


def mask_to_tiles(session, mask: np.ndarray, origin: tuple[int, int]) -> dict:
    """{tile: TileLogits} for a full-resolution bool ``mask`` placed at ``origin`` (row, col)."""
    h, w = mask.shape
    out = {}
    for t in tiles_in(session.embedder, origin[0], origin[0] + h - 1, origin[1], origin[1] + w - 1):
        out[t] = TileLogits(_lowres_of(session, t, mask, origin), ())
    return out


def tiles_in(emb: TiledEmbedder, r0, r1, c0, c1) -> list[int]:
    """Tiles whose full-resolution extent holds any of rows [r0, r1], cols [c0, c1] (full-resolution px)."""
    (sr, sc) = emb.scale
    return emb.plan.touching((r0 + 0.5) / sr - 0.5, (r1 + 0.5) / sr - 0.5, (c0 + 0.5) / sc - 0.5, (c1 + 0.5) / sc - 0.5)


def _owner(emb: TiledEmbedder, r: float, c: float) -> int:
    """The tile whose core holds full-resolution pixel (r, c)."""
    br, bc = emb.plan.bounds
    i = int(np.searchsorted(br, (r + 0.5) / emb.scale[0] - 0.5, side="right")) - 1
    j = int(np.searchsorted(bc, (c + 0.5) / emb.scale[1] - 0.5, side="right")) - 1
    return min(max(i, 0), emb.plan.grid[0] - 1) * emb.plan.grid[1] + min(max(j, 0), emb.plan.grid[1] - 1)


def _decode_one(session, t, pts, flags, box, mask_in, seeds, multimask, scribbles=()):
    """Run the decoder on tile ``t`` with the prompts that fall inside it (full-resolution inputs)."""
    from ._state import strokes_for

    emb = session.embedder
    r0, r1, c0, c1 = emb.extent(t)
    frame = emb.tile_frame(t)
    inside = (pts[:, 0] >= r0 - 0.5) & (pts[:, 0] <= r1 - 0.5) & (pts[:, 1] >= c0 - 0.5) & (pts[:, 1] <= c1 - 0.5)
    local = pts[inside] - (r0, c0)
    labels = flags[inside].astype(int)
    if seeds:
        local = np.concatenate([local, np.asarray(seeds, float) - (r0, c0)])
        labels = np.concatenate([labels, np.ones(len(seeds), int)])
    box_in = None
    if box is not None:
        lo = np.clip([min(box.r0, box.r1) - r0, min(box.c0, box.c1) - c0], -0.5, [r1 - r0 - 0.5, c1 - c0 - 0.5])
        hi = np.clip([max(box.r0, box.r1) - r0, max(box.c0, box.c1) - c0], -0.5, [r1 - r0 - 0.5, c1 - c0 - 0.5])
        if np.all(hi > lo):
            box_in = frame.box_to_input(lo[0], lo[1], hi[0], hi[1])
    xy = frame.to_input_xy(local) if len(local) else None
    strokes = strokes_for(session.model, frame, scribbles, (r0, c0))
    return session.model.decode(session._features(t), xy, labels if len(local) else None, box_in, mask_in,
                                multimask and len(local) == 1 and box_in is None and mask_in is None and not scribbles,
                                strokes)


def _weights(emb: TiledEmbedder, t: int) -> np.ndarray:
    """(h, w) blending weights of tile ``t``: 1 inside, falling linearly to ~0 over half the overlap
    towards edges shared with other tiles (edges on the image border keep weight 1). Tiles of the same
    size and position class (inner, edge, corner) share one array."""
    r0, r1, c0, c1 = emb.extent(t)
    (h, w) = emb.spatial
    key = (r1 - r0, c1 - c0, r0 > 0, r1 < h, c0 > 0, c1 < w)
    if key not in emb.weights:
        emb.weights[key] = _ramp(emb, *key)
    return emb.weights[key]


def _ramp(emb: TiledEmbedder, n_rows: int, n_cols: int, top: bool, bottom: bool, left: bool, right: bool) -> np.ndarray:
    ramp = max(emb.plan.overlap * min(emb.scale) / 2.0, 1.0)

    def axis(n, lo_inner, hi_inner):
        i = np.arange(n, dtype=np.float32) + 0.5
        d = np.minimum(i if lo_inner else np.inf, (n - i) if hi_inner else np.inf) * np.ones(n, np.float32)
        return np.clip(d / ramp, 1e-3, 1.0).astype(np.float32)

    return axis(n_rows, top, bottom)[:, None] * axis(n_cols, left, right)[None, :]


def _stitch(session, lows: dict) -> tuple[np.ndarray, tuple[int, int]]:
    """Blend each tile's full-resolution logits -> (bool mask over the tiles' union, its (row, col) origin)."""
    emb = session.embedder
    ext = {t: emb.extent(t) for t in lows}
    R0, R1 = min(e[0] for e in ext.values()), max(e[1] for e in ext.values())
    C0, C1 = min(e[2] for e in ext.values()), max(e[3] for e in ext.values())
    num = np.zeros((R1 - R0, C1 - C0), np.float32)
    den = np.zeros_like(num)
    for t, (low, _) in lows.items():
        r0, r1, c0, c1 = ext[t]
        frame = emb.tile_frame(t)
        full = session.model.upscale(low[0], frame.input, frame.original)
        w = _weights(emb, t)
        num[r0 - R0 : r1 - R0, c0 - C0 : c1 - C0] += full * w
        den[r0 - R0 : r1 - R0, c0 - C0 : c1 - C0] += w
    return (num > session.threshold * den) & (den > 0), (R0, C0)


def _spill(emb: TiledEmbedder, mask: np.ndarray, origin, used: set) -> dict:
    """Unused tiles whose core the mask reaches -> {tile: seed point (row, col) inside mask ∩ core}."""
    from .evaluate import innermost

    R0, C0 = origin
    out = {}
    for t in tiles_in(emb, R0, R0 + mask.shape[0] - 1, C0, C0 + mask.shape[1] - 1):
        if t in used:
            continue
        cr0, cr1, cc0, cc1 = emb.plan.core(t)
        (sr, sc) = emb.scale
        a0, a1 = max(round(cr0 * sr) - R0, 0), min(round(cr1 * sr) - R0, mask.shape[0])
        b0, b1 = max(round(cc0 * sc) - C0, 0), min(round(cc1 * sc) - C0, mask.shape[1])
        if a1 <= a0 or b1 <= b0:
            continue
        part = mask[a0:a1, b0:b1]
        if part.any():
            r, c = innermost(part)
            out[t] = (float(r + a0 + R0), float(c + b0 + C0))
    return out


def _lowres_of(session, t: int, mask: np.ndarray, origin) -> np.ndarray:
    """Low-res logits (1, L, L) of the part of ``mask`` (placed at ``origin``) inside tile ``t``."""
    emb = session.embedder
    r0, r1, c0, c1 = emb.extent(t)
    crop = np.zeros((r1 - r0, c1 - c0), bool)
    R0, C0 = origin
    a0, a1 = max(r0, R0), min(r1, R0 + mask.shape[0])
    b0, b1 = max(c0, C0), min(c1, C0 + mask.shape[1])
    if a1 > a0 and b1 > b0:
        crop[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = mask[a0 - R0 : a1 - R0, b0 - C0 : b1 - C0]
    return emb.tile_frame(t).mask_to_lowres(crop, session.model.lowres_size)
