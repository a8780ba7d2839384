"""Builders of Segment Anything architectures on ``segment_anything.modeling``.

One small function per architecture and one table, as segment-anything's ``build_sam.py`` does, with the
sizes exposed so that tests can build a small model of the same family.
"""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from ..errors import ModelError

#: encoder sizes of the official SAM models and of promptseg's small models
ARCHS: dict[str, dict] = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
    # a cheap ViT for tests (random weights): windowed attention only (a global block over 4096 tokens
    # alone would cost ~0.5 s per 1024² image on 2 CPU threads)
    "tiny": dict(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=()),
    # the trained default: a small CNN encoder (promptseg.models.tiny.CNNEncoder, stride 16) and a
    # 128-wide SAM decoder; embed_dim/depth are the last stage's width and the number of residual blocks
    "cnn_small": dict(encoder="cnn", embed_dim=160, depth=6, num_heads=0, global_attn_indexes=(),
                      widths=(24, 48, 96, 160), blocks=(0, 1, 2, 3), prompt_embed_dim=128, decoder_mlp_dim=512),
}


def build_sam(
    arch: str = "vit_b",
    *,
    image_size: int = 1024,
    pixel_mean=(123.675, 116.28, 103.53),
    pixel_std=(58.395, 57.12, 57.375),
    **overrides,
) -> Sam:
    """Build an untrained :class:`segment_anything.modeling.Sam`.

    Parameters
    ----------
    arch : key of :data:`ARCHS` (``vit_b``, ``vit_l``, ``vit_h``, ``tiny``, ``cnn_small``).
    image_size : side of the square encoder input (the embedding grid is ``image_size // 16``).
    pixel_mean, pixel_std : normalisation registered as buffers of the model (0..255 scale).
    overrides : replace any entry of the architecture (``embed_dim``, ``depth``, ``num_heads``,
        ``global_attn_indexes``, ``window_size``, ``prompt_embed_dim``, ``decoder_mlp_dim``, ``strokes`` (a
        :class:`~promptseg.models.tiny.StrokeEncoder` for native squiggles), ``edges`` (an
        :class:`~promptseg.models.edges.EdgeRefiner` as ``sam.edge_refiner``); for the CNN encoder of
        ``cnn_small`` also ``widths`` and ``blocks``).

    Returns
    -------
    Sam in eval mode on the CPU, with the same parameter names as the official checkpoints.
    """
    if arch not in ARCHS:
        raise ModelError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    cfg = {**dict(window_size=14, prompt_embed_dim=256, decoder_mlp_dim=2048, strokes=False, edges=False), **ARCHS[arch]}
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ModelError(f"unknown architecture parameter(s) {sorted(unknown)} for {arch!r}")
    cfg.update(overrides)
    patch = 16
    embed = cfg["prompt_embed_dim"]
    grid = image_size // patch
    if cfg.get("encoder") == "cnn":
        from .tiny import CNNEncoder

        encoder = CNNEncoder(img_size=image_size, widths=tuple(cfg["widths"]), blocks=tuple(cfg["blocks"]), out_chans=embed)
    else:
        encoder = ImageEncoderViT(
            depth=cfg["depth"],
            embed_dim=cfg["embed_dim"],
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=cfg["num_heads"],
            patch_size=patch,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(cfg["global_attn_indexes"]),
            window_size=cfg["window_size"],
            out_chans=embed,
        )
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=embed,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=embed, mlp_dim=cfg["decoder_mlp_dim"], num_heads=8),
            transformer_dim=embed,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=list(pixel_mean),
        pixel_std=list(pixel_std),
    )
    if cfg["strokes"]:  # a native squiggle input (promptseg's own models; official SAM has none)
        from .tiny import StrokeEncoder

        sam.prompt_encoder.stroke_downscaling = StrokeEncoder(embed)
    if cfg["edges"]:  # a full-resolution edge refiner after the decoder (promptseg.models.edges)
        from .edges import EdgeRefiner

        sam.edge_refiner = EdgeRefiner()
    return sam.eval()


def guess_arch(state_dict: dict) -> str | None:
    """Which official architecture a state dict belongs to, from its patch-embedding width."""
    w = state_dict.get("image_encoder.patch_embed.proj.weight")
    if w is None:
        return None
    for name, cfg in ARCHS.items():
        n_blocks = sum(1 for k in state_dict if k.endswith(".attn.qkv.weight"))
        if w.shape[0] == cfg["embed_dim"] and n_blocks == cfg["depth"]:
            return name
    return None
