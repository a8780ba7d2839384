"""What a training step is drawn from: images with their objects, and how each episode starts.

:func:`draw` makes one training image — a generic scene (:mod:`.synthetic`), a CT-/MRI-like slice
(:mod:`.anatomy`), a zoom window around one object (:class:`Window`), a small image enlarged, or the
second of two neighbouring slices (:class:`Neighbour`) — and :func:`first_input` the first round's
``mask_input`` and, for a propagation pair, the first click. Every draw comes from the ``rng`` given,
and an option at 0 draws nothing, so older configs keep their random streams.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage as ndi

from .. import zoom
from ..evaluate import innermost, squiggle
from ..preprocess import Frame
from . import anatomy
from . import prompts as P
from .synthetic import SCENES, sample


def chance(rng: np.random.Generator, p: float) -> bool:
    """True with probability ``p``; draws nothing when ``p`` is 0 (older configs keep their random streams)."""
    return p > 0 and rng.random() < p


def draw(rng: np.random.Generator, size: int, cfg: dict):
    """One training image (h, w <= size) with at least one object of ``min_area`` pixels.

    A generic scene (:mod:`.synthetic`) or, with probability ``p_medical``, a CT-/MRI-like slice
    (:mod:`.anatomy`); with probability ``p_zoom`` it is then replaced by a zoom window around one of its
    objects, enlarged to ``size`` as the Session's zoom does (:mod:`promptseg.zoom`). ``extra_scenes``
    adds scene families of :mod:`.synthetic` that the held-out sets do not draw (thin rods), ``p_clean``
    its plain renderings (flat intensities and noise). With probability ``p_lowres`` the scene is drawn
    smaller (``lowres_scale`` of the side) and enlarged to ``size`` as the Session enlarges a small
    image; with probability ``p_propagate`` the draw is a propagation pair instead (:func:`_neighbour`).
    With ``min_visible`` > 0, objects without a visible outline are not prompted (:func:`visible_ids`).

    Returns image uint8 (h, w, 3), labels int32 (h, w), the ids to prompt, and the source: the
    :class:`Window` a zoom window was cut from, the :class:`Neighbour` slice of a propagation pair, or
    None for a whole scene. A window's or pair's ids repeat its one object: every episode is on it.
    """
    d = cfg["data"]
    if chance(rng, d["p_propagate"]):
        return _neighbour(rng, size, cfg)
    while True:
        shape = (size, size)
        if rng.random() < d["p_non_square"]:
            short = int(rng.integers(size // 2, size))
            shape = (short, size) if rng.random() < 0.5 else (size, short)
        small = chance(rng, d["p_lowres"])
        if small:
            f = rng.uniform(*d["lowres_scale"])
            shape = (max(32, int(shape[0] * f)), max(32, int(shape[1] * f)))
        if chance(rng, d["p_medical"]):
            image, labels = anatomy.sample(rng, shape)
        else:
            image, labels = sample(rng, shape, scenes=SCENES + tuple(d["extra_scenes"]), p_clean=d["p_clean"])
        if small:
            frame = Frame.for_shape(shape, size)
            image, labels = frame.resize(image), zoom.resize_labels(labels, frame.input)
        ids, counts = np.unique(labels, return_counts=True)
        ok = visible_ids(image, labels, ids[(ids > 0) & (counts >= d["min_area"])], d["min_visible"])
        if not len(ok):
            continue
        if chance(rng, d["p_zoom"]):
            k = int(rng.choice(ok))
            win = zoom.window(zoom.box_of(labels == k), labels.shape, size, expand=rng.uniform(*d["zoom_expand"]),
                              shift=rng.uniform(-0.1, 0.1, 2))
            if win is not None:
                r0, r1, c0, c1 = win
                frame = Frame.for_shape((r1 - r0, c1 - c0), size)
                lab = zoom.resize_labels(labels[r0:r1, c0:c1], frame.input)
                if (lab == k).sum() >= d["min_area"]:
                    img = frame.resize(np.ascontiguousarray(image[r0:r1, c0:c1]))
                    src = Window(frame.input[0] / (r1 - r0), image, labels, k, win)
                    return img, lab, np.full(cfg["train"]["objects_per_image"], k), src
        return image, labels, ok, None


def _neighbour(rng: np.random.Generator, size: int, cfg: dict):
    """Two neighbouring slices of a CT-/MRI-like volume, as :func:`promptseg.volume.propagate` meets
    them: the training image is the second slice, and its episodes (all on one object) start from the
    first slice's mask of the object (:class:`Neighbour`) — which may have ended on the second slice,
    an empty target that teaches the decoder to stop. With probability ``p_propagate_small`` the volume
    is drawn small (``lowres_scale`` of the side) and its slices enlarged. Returns what :func:`draw` returns."""
    d, n = cfg["data"], cfg["train"]["objects_per_image"]
    while True:
        modality = "ct" if rng.random() < 0.55 else "mri"
        side = size
        if chance(rng, d["p_propagate_small"]):  # a small volume, its slices enlarged as the Session enlarges them
            side = max(32, int(size * rng.uniform(*d["lowres_scale"])))
        raw, labels, _ = anatomy.volume(rng, (2, side, side), modality=modality, z_step=rng.uniform(*d["propagate_z_step"]))
        frame = Frame.for_shape((side, side), size)
        labels = np.stack([zoom.resize_labels(lab, frame.input) for lab in labels])  # unchanged at full size
        ids, counts = np.unique(labels[0], return_counts=True)
        ok = ids[(ids > 0) & (counts >= d["min_area"])]
        if len(ok):
            ends = ok[~np.isin(ok, labels[1])]  # objects that end here: rare among neighbours, so favoured
            k = int(rng.choice(ends if len(ends) and rng.random() < 0.5 else ok))
            image = frame.resize(anatomy.to_rgb(rng, raw[1], modality))
            if k in ends or len(visible_ids(image, labels[1], np.array([k]), d["min_visible"])):
                return image, labels[1], np.full(n, k), Neighbour(labels[0], k)


def visible_ids(image: np.ndarray, labels: np.ndarray, ids: np.ndarray, min_fraction: float) -> np.ndarray:
    """The ``ids`` whose outline can be seen in ``image`` (uint8 (h, w, 3)), ``labels`` int (h, w): on at
    least ``min_fraction`` of an object's boundary pixels, the local mean just inside (Gaussian-weighted
    over the object, sigma 3 px) and just outside (a 6 px ring) differ by more than the image's pixel
    noise (a robust standard deviation: 1.48 x the median absolute deviation from a 3x3 median, + 0.5
    grey levels). An object drawn with no visible edge (an organ
    of the same intensity as its neighbour, a lesion under the noise) is no target: a click there can
    only teach the decoder to invent an outline in a flat region. ``min_fraction`` 0 keeps every id."""
    if min_fraction <= 0 or not len(ids):
        return ids
    grey = image.astype(np.float32).mean(axis=-1)
    boxes = ndi.find_objects(labels)
    keep = []
    for k in ids:
        r, c = boxes[int(k) - 1]
        sl = (slice(max(r.start - 10, 0), r.stop + 10), slice(max(c.start - 10, 0), c.stop + 10))
        m, g = labels[sl] == k, grey[sl]
        ring = ndi.binary_dilation(m, iterations=6) & ~m
        inside, outside = (ndi.gaussian_filter(g * w, 3.0) / np.maximum(ndi.gaussian_filter(w.astype(np.float32), 3.0), 1e-3)
                           for w in (m, ring))
        edge = m & ~ndi.binary_erosion(m, border_value=1)
        noise = 1.4826 * np.median(np.abs(g - ndi.median_filter(g, 3))) + 0.5
        if (np.abs(inside - outside)[edge] > noise).mean() >= min_fraction:
            keep.append(k)
    return np.asarray(keep, dtype=ids.dtype)


class Neighbour(NamedTuple):
    """A propagation pair's first slice: its labels (h, w) and the object id, whose mask there (seen as a
    full-view prediction, :func:`.prompts.coarse_mask`) is the episode's ``mask_input`` and whose
    innermost pixel is its one positive click."""

    labels: np.ndarray
    k: int


class Window(NamedTuple):
    """Where a zoom-window training image came from: its magnification, the whole scene (image, labels),
    the object id and the window (r0, r1, c0, c1) in the scene."""

    magnification: float
    image: np.ndarray
    labels: np.ndarray
    k: int
    window: tuple


def first_input(rng: np.random.Generator, labels: np.ndarray, k: int, src, pr: dict, size: int, lowres: int, own=None):
    """The first round's mask_input of an episode on object ``k``, (1, 1, L, L) logits, or None; and the
    episode's given first click, (1, 2) (row, col), or None (then :class:`.episodes.Episode` draws one).

    On a zoom window (``src`` its :class:`Window`; the Session always gives one there), with probability
    ``p_prior``: the model's own full-view mask ``own`` (bool (h, w), see :func:`_own_priors`) with
    probability ``p_self_prior``, else a coarse mask (:func:`.prompts.coarse_mask`). On a whole scene,
    a coarse mask with probability ``p_prior_full`` (a mask to correct). On a propagation pair
    (:class:`Neighbour`) always the previous slice's coarse mask, and what ``propagate_carry`` says
    carries it: ``"click"``, its innermost pixel ((1, 2)); ``"squiggle"``, the stroke along its long
    axis that :func:`promptseg.volume.propagate` gives ((n, 2), :func:`promptseg.evaluate.squiggle`).
    ``own`` may be :data:`LATER` (a data worker has no model): the answer is then ``(LATER, None)``
    where the model's own mask is chosen, and the main process makes it.
    """
    first = None
    if isinstance(src, Neighbour):
        m = P.coarse_mask(rng, src.labels, src.k, 1.0)
        if pr["propagate_carry"] == "squiggle" and m.any():
            first = squiggle(m)
        else:
            first = np.asarray(innermost(m), float)[None]
    elif not chance(rng, pr["p_prior"] if src is not None else pr["p_prior_full"]):
        return None, None
    elif own is not None and (isinstance(own, str) or own.any()) and chance(rng, pr["p_self_prior"]):
        if isinstance(own, str):  # (LATER: drawn in a data worker, which has no model)
            return LATER, None
        m = own
    else:
        m = P.coarse_mask(rng, labels, k, src.magnification if src is not None else 1.0)
    return as_prior(m, size, lowres), first


LATER = "own"  # first_input's ``own`` in a data worker, and its answer there when the model's mask is to be used


def as_prior(mask: np.ndarray, size: int, lowres: int) -> torch.Tensor:
    """A full-view bool (h, w) mask as an episode's first ``mask_input``: (1, 1, L, L) logits."""
    return torch.from_numpy(Frame(mask.shape, mask.shape, size).mask_to_lowres(mask, lowres))[None]
