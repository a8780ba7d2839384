"""The shipped default model's architecture and its placeholder weights.

Until the trained default lands, ``weights/promptseg_tiny.pt`` holds a *random-initialised* model of the
``tiny`` architecture (a 2-block windowed ViT encoder, 64 wide, with SAM's prompt encoder and mask
decoder), created reproducibly by :func:`make_placeholder`. It exercises every code path at CPU speed;
its masks carry no meaning. Regenerate with ``python -m promptseg.models.tiny weights/promptseg_tiny.pt``.
"""

from __future__ import annotations

import sys

import torch

from .build import build_sam


def make_placeholder(seed: int = 0):
    """A ``tiny`` Sam with weights drawn from the default initialisers under ``seed``."""
    torch.manual_seed(seed)
    return build_sam("tiny")


def save_state_dict(sam, path) -> None:
    """Save like the official checkpoints: a plain state dict, fp32, readable with weights_only=True."""
    torch.save({k: v.contiguous() for k, v in sam.state_dict().items()}, path)


if __name__ == "__main__":
    save_state_dict(make_placeholder(), sys.argv[1])
