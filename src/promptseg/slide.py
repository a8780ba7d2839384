"""A synthetic whole slide: an H&E-like RGB image of any size, computed lazily tile by tile.

Pixels are a pure function of their full-resolution coordinates, so every pyramid level is computed
directly (never by reading level 0), a 20000 x 20000 slide costs no memory until a region is looked at,
and the exact label of every object is known. Objects (dark, purple, elliptic "glands") sit one per
cell of a ``cell``-pixel grid, wholly inside their cell, so they never touch; ``extra`` objects may be
placed anywhere (e.g. across a tile corner).
"""

from __future__ import annotations

import numpy as np

BACKGROUND = np.array([236.0, 204.0, 222.0], np.float32)
OBJECT = np.array([118.0, 58.0, 150.0], np.float32)


class SyntheticSlide:
    """A lazy synthetic slide.

    Parameters
    ----------
    shape : (H, W) full-resolution size in pixels.
    cell : grid cell side; one object per cell with probability ``density``.
    seed : random seed of the object layout.
    extra : more objects, rows of (row, col, radius_rows, radius_cols, angle_rad).
    chunk : dask chunk side of the levels.
    """

    def __init__(self, shape=(20000, 20000), *, cell=400, density=0.7, seed=0, extra=(), chunk=1024):
        self.shape, self.cell, self.chunk = (int(shape[0]), int(shape[1])), int(cell), int(chunk)
        rng = np.random.default_rng(seed)
        nr, nc = -(-self.shape[0] // cell), -(-self.shape[1] // cell)
        ry = rng.uniform(0.08, 0.3, (nr, nc)) * cell
        rx = rng.uniform(0.08, 0.3, (nr, nc)) * cell
        reach = np.maximum(ry, rx)
        cy = (np.arange(nr)[:, None] + 0.5) * cell + rng.uniform(-1, 1, (nr, nc)) * (cell / 2 - reach - 2)
        cx = (np.arange(nc)[None, :] + 0.5) * cell + rng.uniform(-1, 1, (nr, nc)) * (cell / 2 - reach - 2)
        keep = rng.random((nr, nc)) < density
        grid = np.stack([cy, cx, ry, rx, rng.uniform(0, np.pi, (nr, nc))], -1)[keep]
        #: (N, 5) float: row, col, radius_rows, radius_cols, angle — object i has label i + 1
        self.objects = np.concatenate([grid.reshape(-1, 5), np.asarray(extra, float).reshape(-1, 5)])
        inside = (self.objects[:, 0] < self.shape[0]) & (self.objects[:, 1] < self.shape[1])
        self.objects = self.objects[inside]

    def region(self, r0: int, r1: int, c0: int, c1: int, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 (h, w, 3) and labels int32 (h, w) of rows r0:r1:step, cols c0:c1:step (level 0 px)."""
        rows = np.arange(r0, r1, step, dtype=np.float32)[:, None] + (step - 1) / 2
        cols = np.arange(c0, c1, step, dtype=np.float32)[None, :] + (step - 1) / 2
        labels = np.zeros((rows.shape[0], cols.shape[1]), np.int32)
        o = self.objects
        reach = np.maximum(o[:, 2], o[:, 3])
        near = np.flatnonzero((o[:, 0] + reach >= r0) & (o[:, 0] - reach < r1) & (o[:, 1] + reach >= c0) & (o[:, 1] - reach < c1))
        shade = np.zeros(labels.shape, np.float32)
        for i in near:
            cy, cx, ry, rx, a = o[i]
            # only the rows and columns the object can reach
            a0, a1 = np.searchsorted(rows[:, 0], [cy - reach[i] - 1, cy + reach[i] + 1])
            b0, b1 = np.searchsorted(cols[0], [cx - reach[i] - 1, cx + reach[i] + 1])
            dy, dx = rows[a0:a1] - cy, cols[:, b0:b1] - cx
            d = np.sqrt(((np.cos(a) * dy + np.sin(a) * dx) / ry) ** 2 + ((-np.sin(a) * dy + np.cos(a) * dx) / rx) ** 2)
            labels[a0:a1, b0:b1][d < 1.0] = i + 1
            sub = shade[a0:a1, b0:b1]
            np.maximum(sub, np.clip((1.0 - d) * ry / 3.0, 0.0, 1.0), out=sub)  # a ~3 px soft rim
        # deterministic per-pixel noise and a slow stain variation, both functions of the coordinates
        ri, ci = rows.astype(np.int64), cols.astype(np.int64)
        noise = (((ri * 73856093) ^ (ci * 19349663)) % 31 - 15).astype(np.float32)
        stain = 8.0 * np.sin(rows / 900.0) * np.cos(cols / 700.0)
        rgb = BACKGROUND + (OBJECT - BACKGROUND) * shade[..., None] + (noise + stain)[..., None]
        return np.clip(rgb, 0, 255).astype(np.uint8), labels

    def levels(self, n: int | None = None) -> list:
        """The pyramid as lazy dask arrays, level k downsampled 2**k (nearest); down to <= 1024 px by default."""
        import dask.array as da

        if n is None:
            n = 1
            while max(self.shape) / 2 ** (n - 1) > 1024:
                n += 1
        out = []
        for k in range(n):
            f = 2**k
            shape = (-(-self.shape[0] // f), -(-self.shape[1] // f))
            chunks = tuple(_chunks(s, self.chunk) for s in shape) + ((3,),)

            def block(block_info=None, f=f):
                (a, b), (c, d), _ = block_info[None]["array-location"]
                return self.region(a * f, min(b * f, self.shape[0]), c * f, min(d * f, self.shape[1]), f)[0]

            out.append(da.map_blocks(block, dtype=np.uint8, chunks=chunks, meta=np.zeros((0, 0, 0), np.uint8)))
        return out

    def labels(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Exact labels (int32) of a full-resolution region."""
        return self.region(r0, r1, c0, c1)[1]


def _chunks(n: int, c: int) -> tuple[int, ...]:
    return (c,) * (n // c) + ((n % c,) if n % c else ())
