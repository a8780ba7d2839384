"""Simulated interactive episodes for training, one at a time or batched over many objects.

An :class:`Episode` holds one object's prompts as a user would build them: a first prompt (one click, a
box, or a squiggle given as its points and, for models with a native squiggle input, as strokes), then
correction clicks (or correcting squiggles) in the larger error region of the previous prediction.

:func:`decode_batch` runs SAM's mask decoder over E prompt sets on E (possibly repeated) image embeddings
in one call: segment-anything's ``MaskDecoder`` batches the prompt sets of *one* image (it repeats the
embedding per set), which on a GPU leaves a training step as hundreds of tiny kernels. Prompt sets of
different lengths are padded with the prompt encoder's "not a point" embedding, the token SAM itself
appends to point-only prompts.

:class:`StepData` draws a step's training images in DataLoader worker processes, seeded by (seed, step),
so the synthetic generator keeps a GPU busy and a run's data does not depend on the number of workers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..prompts import scribble_to_points, stroke_map
from . import prompts as P


class Episode:
    """One object's prompts during a simulated interactive episode.

    ``mask`` is the object's bool (h, w) mask in the (unpadded) training image; ``pr`` the config's
    ``[prompts]`` section; ``prior`` optional (1, 1, L, L) float logits given as the first round's
    ``mask_input`` (a coarse earlier mask, as a zoom window or a mask to correct starts with). The first
    prompt and the number of rounds are drawn from ``rng`` here, unless ``first`` gives the first prompt
    of a propagation step (``mask`` may then be empty): one positive click, (1, 2) (row, col), or a
    positive squiggle, (n, 2) with n > 1, sent as the Session sends one (its spread points and strokes).
    """

    def __init__(self, rng: np.random.Generator, mask: np.ndarray, pr: dict, prior: torch.Tensor | None = None,
                 first: np.ndarray | None = None):
        self.mask, self.pr = mask, pr
        u = rng.random()
        self.rc, self.flags, self.box, self.strokes = np.zeros((0, 2)), [], None, []
        if first is not None and len(first) > 1:
            path = np.asarray(first, float)
            self.rc, self.strokes = scribble_to_points(path), [(path, True)]
            self.flags = [1] * len(self.rc)
        elif first is not None:
            self.rc, self.flags = np.asarray(first, float).reshape(1, 2), [1]
        elif u < pr["p_click"]:
            self.rc, self.flags = P.first_click(rng, mask)[None], [1]
        elif u < pr["p_click"] + pr["p_box"]:
            self.box = P.box(rng, mask)
        else:
            path = P.squiggle_path(rng, mask)
            self.rc, self.strokes = P.spread(path, mask), [(path, True)]
            self.flags = [1] * len(self.rc)
        self.n_rounds = 1 + (int(rng.integers(1, pr["max_corrections"] + 1)) if rng.random() < pr["p_correct"] else 0)
        self.prev = prior  # (1, 1, L, L) low-resolution logits fed back, detached

    @property
    def multimask(self) -> bool:
        """A lone first click asks for three masks (SAM's ambiguity rule, as the Session does)."""
        return len(self.flags) == 1 and self.box is None and self.prev is None

    def embed_prompts(self, pe, size: int, lowres: int, dev) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse (1, T, C) and dense (1, C, g, g) prompt embeddings of the current prompts."""
        points = None
        if len(self.flags):
            points = (torch.as_tensor(P.to_xy(self.rc), dtype=torch.float, device=dev)[None],
                      torch.as_tensor(self.flags, dtype=torch.int, device=dev)[None])
        boxes = None if self.box is None else torch.as_tensor(self.box[[1, 0, 3, 2]], dtype=torch.float, device=dev)[None]
        prev = None if self.prev is None else self.prev.to(dev)
        sparse, dense = pe(points=points, boxes=boxes, masks=prev)
        if self.strokes and hasattr(pe, "stroke_downscaling"):  # the native squiggle input
            smap = stroke_map(self.strokes, lambda p: p * (lowres / size), lowres)
            dense = dense + pe.stroke_downscaling(torch.from_numpy(smap).to(dev))
        return sparse, dense

    def correct(self, rng: np.random.Generator, pred: np.ndarray) -> bool:
        """Add a correction for the predicted bool mask ``pred``; False when it is already right."""
        click = P.correction_click(rng, self.mask, pred)
        if click is None:
            return False
        if rng.random() < self.pr["p_squiggle_correct"]:  # a correcting squiggle in the error region instead
            positive = bool(click[1])
            region = (self.mask & ~pred) if positive else (pred & ~self.mask)
            path = P.squiggle_path(rng, region)
            extra = P.spread(path, region)
            self.strokes = self.strokes + [(path, positive)]
            self.rc = np.concatenate([self.rc, extra])
            self.flags = self.flags + [int(positive)] * len(extra)
            return True
        self.rc = np.concatenate([self.rc, click[0][None]])
        self.flags = self.flags + [int(click[1])]
        return True


def losses(logits: torch.Tensor, target: torch.Tensor, iou_pred: torch.Tensor, gamma: float = 2.0, clicks=None,
           size: int | None = None):
    """Per-mask focal (``gamma`` = 0: plain BCE), dice, IoU-head MSE and click term.

    logits (K, L, L), target (L, L) in 0..1 or (S, S) at the input size, iou_pred (K,); or batched over E
    episodes: logits (E, K, L, L), target (E, 1, L, L) or (E, 1, S, S), iou_pred (E, K). A full-size
    target is compared with the logits upsampled as the Session upsamples them (bilinear), so the loss
    and the IoU head's target see the boundary the user will see. ``clicks`` (unbatched only): (rc (N, 2)
    float (row, col) in the training image, flags (N,)), or None; ``size``: the input side those pixels
    are of (default: a full-size target's). Returns four tensors of iou_pred's shape and the actual IoU;
    the click term is the mean BCE of the logits at the clicked pixels against the clicks' signs (0 without
    clicks): a correction the mask ignores costs extra, however few pixels it covers.
    """
    if target.shape[-1] != logits.shape[-1]:
        up = F.interpolate(logits if logits.dim() == 4 else logits[None], size=tuple(target.shape[-2:]),
                           mode="bilinear", align_corners=False)
        logits = up if logits.dim() == 4 else up[0]
    click = logits.new_zeros(logits.shape[:-2])
    if clicks is not None and len(clicks[1]):
        n = logits.shape[-1]
        rc = torch.as_tensor(np.clip(np.floor(clicks[0] * n / (size or target.shape[-1])), 0, n - 1), dtype=torch.long)
        at = logits[:, rc[:, 0], rc[:, 1]]  # (K, N)
        want = torch.as_tensor(np.asarray(clicks[1], np.float32), device=logits.device).expand_as(at)
        click = F.binary_cross_entropy_with_logits(at, want, reduction="none").mean(dim=1)
    t = target.expand_as(logits)
    p = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    focal = (bce * (p - t).abs() ** gamma).mean(dim=(-2, -1)) if gamma else bce.mean(dim=(-2, -1))
    dice = 1 - (2 * (p * t).sum(dim=(-2, -1)) + 1) / (p.sum(dim=(-2, -1)) + t.sum(dim=(-2, -1)) + 1)
    with torch.no_grad():
        pb, tb = logits > 0, t > 0.5
        iou = (pb & tb).sum(dim=(-2, -1)) / ((pb | tb).sum(dim=(-2, -1)).clamp(min=1))
    return focal, dice, (iou_pred - iou.float()) ** 2, click, iou


def decode_batch(sam, emb: torch.Tensor, sparse: list[torch.Tensor], dense: torch.Tensor):
    """SAM's mask decoder over E prompt sets at once -> (low-res logits (E, 4, L, L), IoU (E, 4)).

    emb : (E, C, g, g) image embeddings, one per prompt set (rows may repeat an image).
    sparse : E tensors (1, T_e, C); shorter ones are padded with "not a point" tokens.
    dense : (E, C, g, g) dense prompt embeddings.
    All four masks are returned (mask 0: single-mask output, 1-3: the multimask outputs).
    """
    pe = sam.prompt_encoder
    t_max = max(s.shape[1] for s in sparse)
    pad = pe.not_a_point_embed.weight  # (1, C)
    tokens = torch.cat([torch.cat([s[0], pad.expand(t_max - s.shape[1], -1)]) for s in sparse])
    return decode_tokens(sam, emb, tokens.view(len(sparse), t_max, -1), dense)


def decode_tokens(sam, emb: torch.Tensor, tokens: torch.Tensor, dense: torch.Tensor):
    """SAM's mask decoder on E prompt sets given as equal-length token arrays (E, T, C) (sparse prompt
    embeddings, padded); emb and dense (E, C, g, g). Returns logits (E, 4, L, L) and IoU (E, 4)."""
    md, pe = sam.mask_decoder, sam.prompt_encoder
    out = torch.cat([md.iou_token.weight, md.mask_tokens.weight])[None].expand(len(tokens), -1, -1)
    tokens = torch.cat([out, tokens], dim=1)
    b, c, h, w = emb.shape
    pos = pe.get_dense_pe().expand(b, -1, -1, -1)
    hs, src = md.transformer(emb + dense, pos, tokens)
    up = md.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(md.output_hypernetworks_mlps)], dim=1)
    low = (hyper @ up.flatten(2)).view(b, -1, *up.shape[-2:])
    return low, md.iou_prediction_head(hs[:, 0])


class StepData(torch.utils.data.Dataset):
    """Item ``k``: step ``k``'s ``batch_size`` images, drawn with ``np.random.default_rng([seed, k, 1])``.

    ``draw(rng, size, cfg)`` makes one image (:func:`.draws.draw`); items are lists of its results, or
    with ``prompts_in_workers`` (that list, *:func:`prepare`'s items and episodes), drawn with ``[seed, k, 2]``.
    """

    def __init__(self, draw, cfg: dict, start: int):
        self.draw, self.cfg, self.start = draw, cfg, start

    def __len__(self) -> int:
        return self.cfg["train"]["steps"] - self.start

    def __getitem__(self, i: int):
        step = self.start + i
        return draw_step(np.random.default_rng([self.cfg["train"]["seed"], step, 1]), step, self.cfg, self.draw)


def draw_step(rng: np.random.Generator, step: int, cfg: dict, draw=None):
    """Step ``step``'s batch, its images drawn with ``rng`` by ``draw`` (default :func:`.draws.draw`): a
    list of its results, or with ``prompts_in_workers`` that list and :func:`prepare`'s items and
    episodes (drawn with ``[seed, step, 2]``). A :class:`StepData` item in a worker, or the main
    process's batch without data workers."""
    if draw is None:
        from .draws import draw

    t, size = cfg["train"], cfg["model"]["image_size"]
    batch = [draw(rng, size, cfg) for _ in range(t["batch_size"])]
    if t["prompts_in_workers"]:
        return batch, *prepare(np.random.default_rng([t["seed"], step, 2]), batch, cfg)
    return batch


def prepare(rng: np.random.Generator, batch: list, cfg: dict) -> tuple[list, list]:
    """A step's episodes, drawn where its images were (``prompts_in_workers``): for each image of
    ``batch`` (:func:`.draws.draw` results) ``objects_per_image`` of its objects, each with its first
    mask input and first prompt (:func:`.draws.first_input`) and its :class:`Episode`.

    Returns (items, episodes): items as :func:`.lockstep.run` takes them, (image index, bool mask, prior
    logits or None, first prompt or None), but with each prior a float32 array (1, 1, L, L) or, where the
    first input is to be the model's own mask, :data:`.draws.LATER`. The main process makes them tensors
    and the Episodes' ``prev`` (:func:`.trainer.step_loss`): many small tensors sent from a worker
    would each hold a file descriptor.
    """
    from .draws import LATER, Window, first_input

    t, pr, size = cfg["train"], cfg["prompts"], cfg["model"]["image_size"]
    items = []  # (drawn in the order step_loss draws them in the main process, then the Episodes)
    for b, (_, labels, ids, src) in enumerate(batch):
        own = LATER if isinstance(src, Window) and pr["p_self_prior"] > 0 else None
        for k in rng.choice(ids, size=min(len(ids), t["objects_per_image"]), replace=False):
            prior, first = first_input(rng, labels, k, src, pr, size, size // 4, own)
            items.append((b, labels == k, prior.numpy() if torch.is_tensor(prior) else prior, first))
    eps = [Episode(rng, mask, pr, None, first) for _, mask, _, first in items]
    return items, eps


def as_is(item):
    """DataLoader collate function that leaves a step's list of numpy draws as it is."""
    return item
