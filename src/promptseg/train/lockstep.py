"""A training step's interactive episodes simulated on the model's device, all of them at once.

``batched_episodes`` runs the decoder batched, but keeps each episode's prompts, loss and correction on
the host: per round one prompt-encoder call, one loss and one copy of the fed-back mask per episode, and a
distance transform on the CPU per correction. On a GPU those bound a step
(``benchmarks/train_step_cost.py``). With ``device_episodes`` the first prompts are still drawn on the host
by :class:`.episodes.Episode` (the same draws), and everything after them is tensors on the device:

* prompts are padded token arrays, (E, T, 2) SAM (x, y) input pixels and (E, T) labels (-1 "not a
  point", 0 / 1 negative / positive click, 2 / 3 box corners), embedded as SAM's prompt encoder embeds them
  (:func:`embed_tokens`), padded as ``decode_batch`` pads: a prompt without a box keeps at least one "not
  a point" token, as SAM's prompt encoder gives it;
* the loss of all episodes of a round is one batched call of :func:`.episodes.losses`;
* a correction goes to the larger error region, at a pixel drawn with weight distance², where distance is
  the chessboard distance to the region's outside (iterated 3 × 3 erosion, image borders outside) and the
  host uses the Euclidean one;
* a correcting squiggle is :func:`.prompts.squiggle_path`'s random walk run for all episodes together, sent
  as the points :func:`.prompts.spread` keeps, and drawn into the stroke map in straight segments.

There is no click term (``click_weight``) here.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..prompts import stroke_map
from . import prompts as P
from .episodes import Episode, decode_tokens, losses

MAX_SPREAD = 8  # points sent per squiggle (spread's max_points)
WALK = 11  # the most steps of a squiggle's random walk (squiggle_path: 3 to 11)


def embed_tokens(pe, xy: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sparse prompt embeddings (E, T, C) of tokens at SAM (x, y) input pixels ``xy`` (E, T, 2) with
    ``labels`` (E, T) long in -1..3, the sum SAM's ``PromptEncoder`` forms for points and box corners."""
    coords = pe.pe_layer.forward_with_coords(xy + 0.5, pe.input_image_size)
    table = torch.cat([pe.not_a_point_embed.weight] + [e.weight for e in pe.point_embeddings])  # (5, C)
    return torch.where((labels < 0)[..., None], 0.0, coords) + table[labels + 1]


def chessboard(region: torch.Tensor, check_every: int = 8) -> torch.Tensor:
    """bool (N, H, W) -> float (N, H, W): each pixel's chessboard distance to the nearest pixel outside
    its region (image borders outside; 0 outside): the number of 3 × 3 erosions it survives, plus one."""
    n, h, w = region.shape
    x = region
    dist = x.float()
    pad = torch.zeros(n, h + 2, w + 2, dtype=torch.bool, device=region.device)
    for i in range(max(h, w)):
        pad[:, 1:-1, 1:-1] = x  # the 3 x 3 erosion, as two 1 x 3 ones on bools (borders outside)
        v = pad[:, :-2] & pad[:, 1:-1] & pad[:, 2:]
        x = v[:, :, :-2] & v[:, :, 1:-1] & v[:, :, 2:]
        dist += x
        if i % check_every == check_every - 1 and not bool(x.any()):
            break
    return dist


class Lockstep:
    """The episodes of one step as tensors on the device ``dev``.

    ``eps``: the host-drawn :class:`Episode` of each; ``image``: long (E,) its row of the step's
    embeddings; ``size``: S, the input side; ``lowres``: L. Masks are placed at the top left of the padded
    S × S input as the image is.
    """

    def __init__(self, eps: list[Episode], image: torch.Tensor, size: int, lowres: int, max_corrections: int, dev):
        e = len(eps)
        self.size, self.lowres, self.image = size, lowres, image
        self.gt = torch.zeros(e, size, size, dtype=torch.bool)
        self.valid = torch.zeros(e, size, size, dtype=torch.bool)
        tokens = [self._first_tokens(ep) for ep in eps]
        cap = max(len(t) for t in tokens) + 1 + max_corrections * MAX_SPREAD
        self.xy = torch.zeros(e, cap, 2)
        self.labels = torch.full((e, cap), -1, dtype=torch.long)
        self.count = torch.tensor([len(t) for t in tokens])
        self.prev = torch.zeros(e, 1, lowres, lowres)
        self.has_prev = torch.tensor([ep.prev is not None for ep in eps])
        self.has_box = torch.tensor([ep.box is not None for ep in eps])
        self.strokes = torch.zeros(e, 2, lowres, lowres)
        for i, (ep, tok) in enumerate(zip(eps, tokens)):
            h, w = ep.mask.shape
            self.gt[i, :h, :w] = torch.from_numpy(ep.mask)
            self.valid[i, :h, :w] = True
            if len(tok):
                self.xy[i, : len(tok)] = torch.as_tensor(tok[:, :2])
                self.labels[i, : len(tok)] = torch.as_tensor(tok[:, 2]).long()
            if ep.prev is not None:
                self.prev[i] = ep.prev[0].float()
            if ep.strokes:
                self.strokes[i] = torch.from_numpy(stroke_map(ep.strokes, lambda p: p * (lowres / size), lowres)[0])
        self.has_stroke = self.strokes.flatten(1).any(dim=1)
        self.multimask = torch.tensor([ep.multimask for ep in eps])
        self.n_rounds = torch.tensor([ep.n_rounds for ep in eps])
        for name in ("image", "gt", "valid", "xy", "labels", "count", "prev", "has_prev", "has_box", "strokes", "has_stroke",
                     "multimask", "n_rounds"):
            setattr(self, name, getattr(self, name).to(dev))

    @staticmethod
    def _first_tokens(ep: Episode) -> np.ndarray:
        """An episode's first prompt as rows (x, y, label): its points, then its box's two corners."""
        rows = [np.column_stack([P.to_xy(ep.rc), np.asarray(ep.flags, float)])] if len(ep.flags) else []
        if ep.box is not None:  # (r0, c0, r1, c1) -> corners (x0, y0), (x1, y1)
            r0, c0, r1, c1 = ep.box
            rows.append(np.array([[c0, r0, 2.0], [c1, r1, 3.0]]))
        return np.concatenate(rows) if rows else np.zeros((0, 3))

    def prompts(self, pe, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse (A, T, C) and dense (A, C, g, g) prompt embeddings of the episodes ``a`` (long (A,))."""
        t = int((self.count[a] + (~self.has_box[a]).long()).max())  # SAM pads a prompt without a box
        sparse = embed_tokens(pe, self.xy[a, :t], self.labels[a, :t])
        g = pe.image_embedding_size
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(len(a), -1, *g)
        has = self.has_prev[a]
        if bool(has.any()):
            dense = torch.where(has[:, None, None, None], pe.mask_downscaling(self.prev[a]), dense)
        has = self.has_stroke[a]
        if hasattr(pe, "stroke_downscaling") and bool(has.any()):
            dense = dense + has[:, None, None, None] * pe.stroke_downscaling(self.strokes[a])
        return sparse, dense

    def feed_back(self, a: torch.Tensor, low: torch.Tensor, iou_pred: torch.Tensor) -> torch.Tensor:
        """Keep the mask a Session feeds back (a first click's best by predicted IoU) for the episodes
        ``a``; returns their predicted bool masks (A, S, S), False outside the image."""
        pick = torch.where(self.multimask[a], 1 + iou_pred[:, 1:].argmax(dim=1), 0)
        self.prev[a] = low[torch.arange(len(a), device=low.device), pick][:, None].detach()
        self.has_prev[a] = True
        self.multimask[a] = False
        up = F.interpolate(self.prev[a], size=(self.size, self.size), mode="bilinear", align_corners=False)[:, 0]
        return (up > 0) & self.valid[a]

    def correct(self, a: torch.Tensor, pred: torch.Tensor, p_squiggle: float, gen: torch.Generator) -> torch.Tensor:
        """Add a correction click (or, with probability ``p_squiggle``, a correcting squiggle) in the larger
        error region of ``pred`` (A, S, S) to the episodes ``a``; returns bool (A,): False where the mask is
        already right (nothing added)."""
        gt = self.gt[a]
        missed, extra = gt & ~pred, pred & ~gt
        n_missed, n_extra = missed.sum(dim=(1, 2)), extra.sum(dim=(1, 2))
        wrong = (n_missed + n_extra) > 0
        if not bool(wrong.any()):
            return wrong
        a, positive = a[wrong], (n_missed >= n_extra)[wrong]
        region = torch.where(positive[:, None, None], missed[wrong], extra[wrong])
        dist = chessboard(region)
        idx = torch.multinomial((dist**2).flatten(1), 1, generator=gen)[:, 0]
        rc = torch.stack([idx // self.size, idx % self.size], dim=1).float()
        squig = torch.rand(len(a), generator=gen, device=rc.device) < p_squiggle
        if bool((~squig).any()):
            self._append(a[~squig], rc[~squig].flip(1), positive[~squig].long())
        if bool(squig.any()):
            self._squiggle(a[squig], region[squig], dist[squig], rc[squig], positive[squig], gen)
        return wrong

    def _append(self, a: torch.Tensor, xy: torch.Tensor, label: torch.Tensor) -> None:
        """One more token for each of the (distinct) episodes ``a``."""
        self.xy[a, self.count[a]] = xy
        self.labels[a, self.count[a]] = label
        self.count[a] += 1

    def _squiggle(self, a, region, dist, start, positive, gen) -> None:
        """A correcting squiggle per episode ``a``: a random walk in its ``region`` (Q, S, S) from ``start``
        (Q, 2) (row, col), as :func:`.prompts.squiggle_path`; its points as :func:`.prompts.spread` sends
        them, and its strokes into the stroke map."""
        q, dev, s = len(a), start.device, self.size
        step = (2 * dist.flatten(1).amax(dim=1) / 8).clamp(min=1.5)
        path = torch.zeros(q, WALK + 1, 2, device=dev)
        path[:, 0] = start
        n = torch.ones(q, dtype=torch.long, device=dev)
        pos, rows = start.clone(), torch.arange(q, device=dev)
        heading = torch.rand(q, generator=gen, device=dev) * 2 * math.pi
        steps = torch.randint(3, WALK + 1, (q,), generator=gen, device=dev)
        for k in range(WALK):
            placed = torch.zeros(q, dtype=torch.bool, device=dev)
            for _try in range(6):
                trying = (k < steps) & ~placed
                heading = torch.where(trying, heading + 0.8 * torch.randn(q, generator=gen, device=dev), heading)
                nxt = pos + step[:, None] * torch.stack([heading.sin(), heading.cos()], dim=1)
                r, c = nxt.round().long().unbind(1)
                inside = (r >= 0) & (r < s) & (c >= 0) & (c < s)
                ok = trying & inside & region[rows, r.clamp(0, s - 1), c.clamp(0, s - 1)]
                pos = torch.where(ok[:, None], nxt, pos)
                path[rows[ok], n[ok]] = nxt[ok]
                n, placed = n + ok.long(), placed | ok
        points, keep = _spread(path, n, torch.clamp(step, min=4.0), region)
        label = positive.long()
        for j in range(MAX_SPREAD):
            sel = keep[:, j]
            if bool(sel.any()):
                self._append(a[sel], points[sel, j].flip(1), label[sel])
        self._draw(a, path, n, positive)

    def _draw(self, a, path, n, positive) -> None:
        """Draw each walk's polyline (Q, WALK + 1, 2) (row, col) of ``n`` vertices into the stroke map
        (channel 0 positive, 1 negative), vertices rounded in the low-res frame as ``stroke_map`` does."""
        low = self.lowres
        p = (path * (low / self.size)).round()
        seg = torch.arange(WALK, device=p.device)
        b = torch.where((seg[None] < n[:, None] - 1)[..., None], p[:, 1:], p[:, :-1])  # past the end: a dot
        t = torch.linspace(0, 1, 2 * low + 1, device=p.device)
        pts = (p[:, :-1, None] + (b - p[:, :-1])[:, :, None] * t[None, None, :, None]).round().long()  # (Q, W, K, 2)
        use = ((seg[None] < n[:, None] - 1) | (seg[None] == 0))[:, :, None].expand_as(pts[..., 0])
        use = use & (pts >= 0).all(-1) & (pts < low).all(-1)
        q = torch.arange(len(a), device=p.device)[:, None, None].expand_as(use)
        ch = (~positive).long()[:, None, None].expand_as(use)
        self.strokes[a[q[use]], ch[use], pts[..., 0][use], pts[..., 1][use]] = 1.0
        self.has_stroke[a] = True


def _spread(path: torch.Tensor, n: torch.Tensor, spacing: torch.Tensor, region: torch.Tensor):
    """:func:`.prompts.spread` for Q polylines at once: points evenly spaced by arc length, one per
    ``spacing`` (Q,), 2 to MAX_SPREAD of them, kept where they fall in ``region`` (Q, S, S); a walk that
    never moved, or whose points all fall outside, sends its start. Returns (Q, MAX_SPREAD, 2) (row, col)
    and bool (Q, MAX_SPREAD)."""
    q, dev, s = len(path), path.device, region.shape[-1]
    live = torch.arange(WALK, device=dev)[None] < (n[:, None] - 1)
    arc = torch.cat([torch.zeros(q, 1, device=dev), ((path[:, 1:] - path[:, :-1]).norm(dim=2) * live).cumsum(1)], 1)
    length = arc[:, -1]
    k = (length / spacing).round().long().add(1).clamp(2, MAX_SPREAD)
    k = torch.where(length > 0, k, 1)
    j = torch.arange(MAX_SPREAD, device=dev)[None]
    want = length[:, None] * j / (k[:, None] - 1).clamp(min=1)
    i = torch.searchsorted(arc.contiguous(), want.contiguous(), right=True) - 1
    i = torch.minimum(i.clamp(min=0), (n - 2).clamp(min=0)[:, None])  # the segment each point falls on
    a0, a1 = arc.gather(1, i), arc.gather(1, i + 1)
    frac = ((want - a0) / (a1 - a0).clamp(min=1e-9)).clamp(0, 1)[..., None]
    rows = torch.arange(q, device=dev)[:, None]
    pts = path[rows, i] + frac * (path[rows, i + 1] - path[rows, i])
    r, c = pts.round().long().clamp(0, s - 1).unbind(-1)
    keep = (j < k[:, None]) & region[rows.expand_as(r), r, c]
    none = ~keep.any(dim=1)
    pts[none, 0], keep[none, 0] = path[none, 0], True
    return pts, keep


def run(sam, emb: torch.Tensor, items: list, rng: np.random.Generator, cfg: dict, gen: torch.Generator, eps=None):
    """All episodes of a step (``items`` as for ``trainer._episodes_batched``: image row, bool mask, prior
    logits or None, first prompt or None; ``eps`` their Episodes when already drawn) on the device;
    returns the summed loss terms (tensors), the final masks' IoUs (list of float) and the number of
    episodes."""
    t, pr = cfg["train"], cfg["prompts"]
    if t["click_weight"] > 0:
        raise ValueError("click_weight is not supported with device_episodes; use batched_episodes")
    size = sam.image_encoder.img_size
    lowres = 4 * sam.prompt_encoder.image_embedding_size[0]
    dev, pe = emb.device, sam.prompt_encoder
    if eps is None:
        eps = [Episode(rng, mask, pr, prior, first) for _, mask, prior, first in items]
    st = Lockstep(eps, torch.as_tensor([it[0] for it in items]), size, lowres, pr["max_corrections"], dev)
    full = t["fullres_loss"]
    target = st.gt.float() if full else F.avg_pool2d(st.gt.float()[:, None], size // lowres)[:, 0]
    total = dict(focal=0.0, dice=0.0, iou=0.0, click=0.0)
    ious = []
    active, r = torch.arange(len(eps), device=dev), 0
    while len(active):
        sparse, dense = st.prompts(pe, active)
        low, iou_pred = decode_tokens(sam, emb[st.image[active]], sparse, dense)
        multi = st.multimask[active]
        k = 4 if bool(multi.any()) else 1  # without a lone first click only mask 0 is scored (a quarter the work)
        focal, dice, err, _, iou = losses(low[:, :k], target[active][:, None], iou_pred[:, :k], t["focal_gamma"])
        rows = torch.arange(len(active), device=dev)
        if k == 4:  # a lone first click: the best of masks 1-3 (by the loss); the others: mask 0
            score = (t["focal_weight"] * focal + dice).detach()
            score = torch.where(torch.cat([multi[:, None], ~multi[:, None].expand(-1, 3)], 1), math.inf, score)
            best, mse = score.argmin(dim=1), torch.where(multi, err[:, 1:].mean(dim=1), err[:, 0])
        else:
            best, mse = torch.zeros_like(rows), err[:, 0]
        w = 1.0 / st.n_rounds[active].float()
        total["focal"] = total["focal"] + (focal[rows, best] * w).sum()
        total["dice"] = total["dice"] + (dice[rows, best] * w).sum()
        total["iou"] = total["iou"] + (mse * w).sum()
        ious.append(iou[rows, best])
        go_on = r + 1 < st.n_rounds[active]
        if not bool(go_on.any()):
            break
        pred = st.feed_back(active[go_on], low[go_on], iou_pred[go_on])
        still = st.correct(active[go_on], pred, pr["p_squiggle_correct"], gen)
        active, r = active[go_on][still], r + 1
    return total, torch.cat(ious).float().tolist(), len(eps)
