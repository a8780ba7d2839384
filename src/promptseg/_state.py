"""The per-slice state of a Session's current object, and small helpers for masks and boxes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .prompts import Box


@dataclass(frozen=True)
class SliceState:
    """Immutable state of the current object on one slice (an undo step swaps these)."""

    points: tuple = ()
    box: Box | None = None
    scribbles: tuple = ()  # ((stroke as tuple of (row, col)), positive) pairs
    logits: np.ndarray | None = None  # (1, L, L) float32, fed back as mask_input
    score: float = 0.0
    bits: np.ndarray | None = None  # np.packbits of the slice mask; None = empty
    extent: tuple | None = None  # (r0, r1, c0, c1) half-open bounds of the mask, None = empty

    @property
    def empty(self) -> bool:
        return self.bits is None and not self.has_prompts

    @property
    def has_prompts(self) -> bool:
        return bool(self.points or self.scribbles) or self.box is not None


EMPTY = SliceState()


def insert_axis(box2: tuple, axis: int, item) -> tuple:
    parts = list(box2)
    parts.insert(axis, item)
    return tuple(parts)


def pack(mask: np.ndarray):
    """bool (H, W) -> (packed bits, (r0, r1, c0, c1) half-open extent)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return np.packbits(mask), (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)


def unpack(bits: np.ndarray, shape) -> np.ndarray:
    n = int(np.prod(shape))
    return np.unpackbits(bits, count=n).view(bool).reshape(shape)
