"""Shared fixtures: small random-initialised SAM models saved as official-format checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import promptseg as ps
from promptseg.models import registry
from promptseg.models.tiny import save_state_dict

torch.set_num_threads(2)


def make_checkpoint(path, seed: int, **arch) -> str:
    """Save a random-initialised small SAM (tiny arch with ``arch`` overrides) as a plain state dict."""
    from promptseg.models.build import build_sam

    torch.manual_seed(seed)
    save_state_dict(build_sam("tiny", **arch), path)
    return str(path)


def star_image(shape=(256, 256), centre=(128, 128), seed=0):
    """A five-pointed star (radius 30 +- 12 px) at grey 170 on 70 with noise 8: uint8 image, bool mask."""
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    angle = np.arctan2(rr - centre[0], cc - centre[1])
    star = np.hypot(rr - centre[0], cc - centre[1]) < 30 + 12 * np.cos(5 * angle)
    img = np.where(star, 170, 70) + np.random.default_rng(seed).normal(0, 8, star.shape)
    return np.clip(img, 0, 255).astype(np.uint8), star


@pytest.fixture(scope="session")
def small_sam(tmp_path_factory):
    """A registered small SAM ("test_small": tiny encoder *with* a global-attention block) and its file."""
    arch = dict(embed_dim=48, depth=2, num_heads=2, global_attn_indexes=(1,))
    path = make_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.pth", seed=3, **arch)
    spec = ps.ModelSpec("test_small", "tiny", "small.pth", arch_kwargs=arch, description="test model")
    registry.register_model(spec, overwrite=True)
    yield ps.load_model("test_small", checkpoint=path, device="cpu"), path
    registry.unregister_model("test_small")


@pytest.fixture(scope="session")
def default_model():
    return ps.load_model("default", device="cpu")


@pytest.fixture
def rgb_image():
    """A 300x500 RGB uint8 image with a few bright shapes on a textured background."""
    rng = np.random.default_rng(0)
    img = (rng.random((300, 500, 3)) * 60).astype(np.uint8)
    rr, cc = np.mgrid[:300, :500]
    img[(rr - 150) ** 2 + (cc - 200) ** 2 < 60**2] = (200, 80, 60)
    img[50:120, 350:470] = (40, 180, 220)
    return img
