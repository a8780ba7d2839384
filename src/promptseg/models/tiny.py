"""Small architectures of promptseg's own models.

:class:`CNNEncoder` is the image encoder of the shipped default (``cnn_small`` in
:data:`promptseg.models.build.ARCHS`, trained by ``promptseg train``); the ``tiny`` ViT architecture is
used, with random weights, by the tests.
"""

from __future__ import annotations

import torch
from torch import nn


def save_state_dict(sam, path) -> None:
    """Save like the official checkpoints: a plain state dict, fp32, readable with weights_only=True."""
    torch.save({k: v.contiguous() for k, v in sam.state_dict().items()}, path)


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch // 4), ch)


class _ConvNormAct(nn.Sequential):
    """3x3 (or k x k) convolution, GroupNorm, GELU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, k: int = 3, dilation: int = 1):
        pad = dilation * (k // 2)
        super().__init__(nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, bias=False), _norm(cout), nn.GELU())


class _ResBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and a residual connection (optionally dilated)."""

    def __init__(self, ch: int, dilation: int = 1):
        super().__init__()
        self.conv1 = _ConvNormAct(ch, ch, dilation=dilation)
        self.conv2 = nn.Conv2d(ch, ch, 3, 1, dilation, dilation=dilation, bias=False)
        self.norm2 = _norm(ch)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.norm2(self.conv2(self.conv1(x))))


class CNNEncoder(nn.Module):
    """A small convolutional image encoder with SAM's interface (stride 16).

    Four strided stages (/2, /4, /8, /16) of residual 3x3 blocks with GroupNorm; the /16 stage ends with
    dilated blocks for context; the /8 features are pooled and fused into the /16 ones; a neck maps to
    ``out_chans`` channels, as SAM's ViT neck does.

    Parameters
    ----------
    img_size : side of the square, padded input (multiple of 16).
    widths : channels of the four stages.
    blocks : residual blocks per stage (after the strided convolution).
    out_chans : channels of the embedding (the prompt encoder's ``embed_dim``).

    Input: float (B, 3, img_size, img_size), normalised. Output: float (B, out_chans, g, g),
    g = img_size // 16.
    """

    def __init__(self, img_size: int = 1024, widths=(24, 48, 96, 160), blocks=(0, 1, 2, 3), out_chans: int = 256):
        super().__init__()
        self.img_size = img_size
        stages, cin = [], 3
        for i, (w, n) in enumerate(zip(widths, blocks)):
            layers = [_ConvNormAct(cin, w, stride=2)]
            last = i == len(widths) - 1
            layers += [_ResBlock(w, dilation=(1 + j) if last else 1) for j in range(n)]
            stages.append(nn.Sequential(*layers))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.fuse = nn.Conv2d(widths[-2], widths[-1], 1, bias=False)
        self.neck = nn.Sequential(
            nn.Conv2d(widths[-1], out_chans, 1, bias=False), _norm(out_chans), nn.GELU(),
            nn.Conv2d(out_chans, out_chans, 3, 1, 1, bias=False), _norm(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        x = x + self.fuse(nn.functional.avg_pool2d(feats[-2], 2))
        return self.neck(x)


class StrokeEncoder(nn.Module):
    """Squiggles as a dense prompt: a stroke map (B, 2, L, L) -> (B, embed_dim, L/4, L/4).

    Channel 0 holds the positive strokes, channel 1 the negative ones, drawn in the frame of the
    low-resolution logits (see :func:`promptseg.prompts.stroke_map`). Built like the prompt encoder's
    ``mask_downscaling`` plus a 3x3 layer for context; its output is added to the dense prompt
    embedding. The last layer starts at zero, so adding the encoder to a trained model changes nothing
    until it is trained.
    """

    def __init__(self, embed_dim: int):
        super().__init__()
        from segment_anything.modeling.common import LayerNorm2d

        self.layers = nn.Sequential(
            nn.Conv2d(2, 16, 2, 2), LayerNorm2d(16), nn.GELU(),
            nn.Conv2d(16, 32, 2, 2), LayerNorm2d(32), nn.GELU(),
            nn.Conv2d(32, 32, 3, 1, 1), nn.GELU(),
            nn.Conv2d(32, embed_dim, 1),
        )
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, strokes: torch.Tensor) -> torch.Tensor:
        return self.layers(strokes)
