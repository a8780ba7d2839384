"""Prompting a tiled image (:mod:`.tiling`): prompt routing, stitching, growing into new tiles.

The prompts go to every tile they touch (points inside it, the part of a box that overlaps it); each
tile's logits are upscaled to full resolution and blended with weights that fall off towards inner tile
edges, so masks are seamless. Where the blended mask reaches into the core of a tile not yet used (the
part of the image that tile owns), that tile is added, seeded with a point inside the mask and the mask
itself as ``mask_input``, until the object stops growing. Coordinates are level-0 (full-resolution)
pixels, (row, col).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .tiling import TiledEmbedder


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
