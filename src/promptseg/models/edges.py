"""Edge refinement: a small network that redraws a mask's boundary at the image's own pixels.

The mask decoder paints on a grid of ``input_size / 4`` cells (64 on the shipped default), so on a 256
px image each logit cell is 4 px wide and, upsampled, the boundary is smooth but off by a pixel or two;
clicks in such 1-2 px error slivers are ones the decoder cannot draw. :class:`EdgeRefiner` takes the
predicted mask, the image and the clicks at full resolution and returns new logits there. It is local
(each output pixel sees about 34 px around it in the shipped model), so it moves boundaries and
answers clicks near them; where and what the object is stays the decoder's call. A click it leaves on
the wrong side is then honoured by :func:`honour`. Models that have one (``PromptModel.has_edges``)
run it after every prompt through the Session (:mod:`promptseg.edges`); official SAM checkpoints have
none.

Inputs (:func:`edge_inputs`): the RGB crop standardised per channel over the crop, the mask as +1/-1,
two maps of the positive and negative clicks (Gaussians of 2 px) and the box prompt, if any (without
it, a small low-contrast object prompted by a box alone lost to the image's contrast). The network adds to them, per pixel,
how much closer the colour is to the mask's mean inside than to its mean outside, within 9 and 21 px
(:func:`region_terms`, the data term of the Chan-Vese active contour), which a network this small
could not compute itself.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CLICK_SIGMA = 2.0  # px, the click maps' Gaussians
REGION_SIZES = (9, 21)  # px, the windows of the region terms
MARGIN = 24  # px around the mask's box that the refiner sees and may change


def region_terms(image: torch.Tensor, mask: torch.Tensor, sizes=REGION_SIZES) -> torch.Tensor:
    """Per pixel, (|x - mean outside|^2 - |x - mean inside|^2) / (|mean inside - mean outside|^2 + 0.05),
    squared norms over the colour channels, the means over a window of each size, clipped to +-3; 0 where
    the window is (almost) all inside or all outside.

    image : float (B, 3, H, W), standardised; mask : float (B, 1, H, W) in {0, 1}.
    Returns float (B, len(sizes), H, W).
    """
    out = []
    for k in sizes:
        def pool(t):  # a k x k box mean over the pixels inside the crop, as a row pass and a column pass
            t = F.avg_pool2d(t, (k, 1), 1, (k // 2, 0), count_include_pad=False)
            return F.avg_pool2d(t, (1, k), 1, (0, k // 2), count_include_pad=False)

        frac = pool(mask)
        mu_in = pool(image * mask) / frac.clamp_min(1e-3)
        mu_out = pool(image * (1 - mask)) / (1 - frac).clamp_min(1e-3)
        closer = ((image - mu_out) ** 2 - (image - mu_in) ** 2).sum(1, keepdim=True)
        contrast = ((mu_in - mu_out) ** 2).sum(1, keepdim=True)
        term = (closer / (contrast + 0.05)).clamp(-3, 3)
        out.append(torch.where((frac > 0.02) & (frac < 0.98), term, torch.zeros_like(term)))
    return torch.cat(out, 1)


class EdgeRefiner(nn.Module):
    """(B, 7, H, W) from :func:`edge_inputs` -> refined logits (B, 1, H, W), any H, W.

    Two 3x3 layers of ``width`` channels at full resolution, ``depth`` dilated residual layers (dilation
    1, 2, 4, ...) of ``inner`` channels at half resolution, one 3x3 layer on both. The output is
    ``4 * mask`` plus a learned correction whose last layer starts at zero, so an untrained refiner
    returns the mask it was given.
    """

    def __init__(self, width: int = 16, inner: int = 32, depth: int = 3):
        super().__init__()
        self.inp = nn.Conv2d(7 + len(REGION_SIZES), width, 3, 1, 1)
        self.inp2 = nn.Conv2d(width, width, 3, 1, 1)
        self.down = nn.Conv2d(width, inner, 3, 2, 1)
        self.mid = nn.ModuleList([nn.Conv2d(inner, inner, 3, 1, 2**i, dilation=2**i) for i in range(depth)])
        self.up = nn.Conv2d(width + inner, width, 3, 1, 1)
        self.out = nn.Conv2d(width, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @classmethod
    def sized_for(cls, state: dict, prefix: str = "edge_refiner.") -> "EdgeRefiner":
        """An (untrained) refiner of the size of the weights ``state`` holds under ``prefix``."""
        depth = len({k.split(".")[2] for k in state if k.startswith(prefix + "mid.")})
        return cls(state[prefix + "inp.weight"].shape[0], state[prefix + "down.weight"].shape[0], depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sign, a, b = self.features(x)
        return self.top(sign, a, b)

    def features(self, x: torch.Tensor):
        """What :meth:`top` reads: the mask channel (B, 1, H, W), the full-resolution features (B, width,
        H, W) and the half-resolution ones brought back to full resolution (B, inner, H, W)."""
        sign = x[:, 3:4]
        x = torch.cat([x, region_terms(x[:, :3], (sign > 0).float())], 1)
        a = F.gelu(self.inp(x))
        a = a + F.gelu(self.inp2(a))
        b = F.gelu(self.down(a))
        for layer in self.mid:
            b = b + F.gelu(layer(b))
        return sign, a, F.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False)

    def top(self, sign: torch.Tensor, a: torch.Tensor, b: torch.Tensor, mod=None) -> torch.Tensor:
        """Logits (B, 1, H, W) from :meth:`features`; ``mod``: a scale and a shift per channel of ``a``
        and of ``b``, ((width,), (width,), (inner,), (inner,)) (see :func:`honour`)."""
        if mod is not None:
            a = a * (1 + mod[0][:, None, None]) + mod[1][:, None, None]
            b = b * (1 + mod[2][:, None, None]) + mod[3][:, None, None]
        return 4 * sign + self.out(F.gelu(self.up(torch.cat([a, b], 1))))


def honour(refiner: EdgeRefiner, x: torch.Tensor, rc: np.ndarray, positive: np.ndarray, steps: int = 30,
           lr: float = 0.05, decay: float = 1e-3, keep: float = 1.0, margin: float = 1.0,
           window: int = 24) -> torch.Tensor:
    """The refiner's logits (1, 1, H, W) for ``x``, made to give every clicked pixel its click's label.

    When the plain pass labels a click's pixel wrong (the refiner, like the decoder, sometimes ignores a
    click in a sliver it does not see as an edge), a scale and a shift per channel of the two feature
    maps its last layers read (:meth:`EdgeRefiner.top`) are fitted, at most ``steps`` Adam steps of rate
    ``lr``, until every click's logit is on its side by ``margin``; only those last layers run again.
    As in feature backpropagating refinement (f-BRS), the network's weights stay fixed, so what flips
    with a click is what the network sees as alike to it. The loss: softplus(1 - y * logit) at the
    clicks, ``decay`` times the squared parameters, and ``keep`` times the summed squared change of the
    probabilities / 100, so that the rest of the mask stays put. The fit runs on the clicks' box with
    ``window`` px around it (0: the whole crop), the found scales and shifts then on the whole crop. No
    click wrong: the plain pass, unchanged; a click not won within ``steps``: the last step's scales
    and shifts are used all the same.

    x : (1, 7, H, W) from :func:`edge_inputs`; rc : (N, 2) int (row, col) inside the crop; positive : (N,) bool.
    """
    with torch.inference_mode(False), torch.no_grad():  # (the caller may be in inference mode)
        sign, a, b = refiner.features(x)
        out = refiner.top(sign, a, b)
        r, c = torch.as_tensor(rc[:, 0]), torch.as_tensor(rc[:, 1])
        y = torch.as_tensor(np.where(positive, 1.0, -1.0), dtype=out.dtype, device=out.device)
        if bool((y * out[0, 0, r, c] > 0).all()):
            return out
        full = (sign, a, b)
        if window:
            r0, c0 = max(0, int(r.min()) - window), max(0, int(c.min()) - window)
            r1, c1 = int(r.max()) + window + 1, int(c.max()) + window + 1
            sign, a, b = (t[..., r0:r1, c0:c1] for t in full)
            r, c = r - r0, c - c0
        p0 = torch.sigmoid(refiner.top(sign, a, b))
        mod = [torch.zeros(n, device=out.device, requires_grad=True) for n in (a.shape[1],) * 2 + (b.shape[1],) * 2]
        opt = torch.optim.Adam(mod, lr=lr)
        for _ in range(steps):
            with torch.enable_grad():
                new = refiner.top(sign, a, b, mod)
                v = new[0, 0, r, c]
                if bool((y * v > margin).all()):
                    break
                loss = (F.softplus(1.0 - y * v).mean() + decay * sum((m**2).sum() for m in mod)
                        + keep * ((torch.sigmoid(new) - p0) ** 2).sum() / 100)
                opt.zero_grad()
                loss.backward(inputs=mod)
            opt.step()
        return refiner.top(*full, mod)


def edge_inputs(rgb: np.ndarray, mask: np.ndarray, points_rc=None, positive=None, box=None) -> torch.Tensor:
    """The refiner's input for one crop.

    Parameters
    ----------
    rgb : uint8 (h, w, 3) (or (h, w)), the crop as the encoder sees it before resizing.
    mask : bool (h, w), the predicted mask in the crop.
    points_rc : (N, 2) float (row, col) clicks in the crop's frame (outside it: ignored), or None.
    positive : (N,) bool.
    box : (r0, c0, r1, c1) inclusive corners of the box prompt in the crop's frame, or None.

    Returns
    -------
    float32 tensor (1, 7, h, w): 3 standardised colour channels, mask as +1/-1, positive and negative
    click maps, and the box (+1 inside, -1 outside; 0 everywhere without one).
    """
    im = torch.as_tensor(np.asarray(rgb), dtype=torch.float32)
    im = (im[..., None].expand(*im.shape, 3) if im.ndim == 2 else im[..., :3]).permute(2, 0, 1)
    mean = im.mean(dim=(1, 2), keepdim=True)
    std = im.std(dim=(1, 2), keepdim=True, unbiased=False) + 8.0  # (+8 grey levels: flat crops stay calm)
    h, w = mask.shape
    sign = torch.as_tensor(np.asarray(mask, np.float32)) * 2 - 1
    maps = torch.zeros(2, h, w)
    if points_rc is not None and len(points_rc):
        rc = torch.as_tensor(np.asarray(points_rc, np.float32).reshape(-1, 2))
        pos = torch.as_tensor(np.asarray(positive, bool).reshape(-1))
        rows, cols = torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32)
        for ch, which in ((0, pos), (1, ~pos)):
            for r, c in rc[which].tolist():
                r0, r1 = max(0, int(r) - 8), min(h, int(r) + 9)
                c0, c1 = max(0, int(c) - 8), min(w, int(c) + 9)
                if r0 < r1 and c0 < c1:
                    g = torch.exp(-((rows[r0:r1, None] - r) ** 2 + (cols[None, c0:c1] - c) ** 2) / (2 * CLICK_SIGMA**2))
                    maps[ch, r0:r1, c0:c1] = torch.maximum(maps[ch, r0:r1, c0:c1], g)
    inside = torch.zeros(1, h, w)
    if box is not None:
        r0, c0, r1, c1 = (int(round(float(v))) for v in box)
        inside -= 1
        inside[:, max(0, r0):max(0, r1 + 1), max(0, c0):max(0, c1 + 1)] = 1
    return torch.cat([(im - mean) / std, sign[None], maps, inside])[None]
