"""Models: the registry (torch-free), builders, checkpoint handling and :func:`load_model`."""

from __future__ import annotations

import os

from ..errors import CheckpointError, ModelError
from .registry import ModelSpec, get_spec, list_models, register_model, unregister_model

__all__ = ["ModelSpec", "PromptModel", "get_spec", "list_models", "load_model", "register_model", "unregister_model", "resolve_device", "resolve_precision"]


def __getattr__(name):  # PromptModel needs torch: import it only when asked for
    if name == "PromptModel":
        from .model import PromptModel

        return PromptModel
    raise AttributeError(name)


def resolve_device(device: str | None = "auto"):
    """``"auto"`` -> cuda if available, else mps, else cpu; a named device must exist."""
    import torch

    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelError(f"unknown device {device!r} (use auto, cpu, cuda, cuda:N or mps)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for, but CUDA is not available here; use device='cpu' or 'auto'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError("device 'mps' asked for, but MPS is not available here")
    return dev


def resolve_precision(dev, precision: str | None = "auto") -> str:
    """``"auto"`` -> bfloat16 on a CUDA GPU that supports it, else float32; an explicit bfloat16 must be
    supported by the device (CUDA with bf16, or a CPU with AVX512-BF16 / AMX)."""
    import torch

    if precision in (None, "auto"):
        return "bfloat16" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if precision in ("float32", "fp32"):
        return "float32"
    if precision not in ("bfloat16", "bf16"):
        raise ModelError(f"unknown precision {precision!r} (use auto, float32 or bfloat16)")
    if dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ModelError(f"precision 'bfloat16' asked for, but {torch.cuda.get_device_name(dev)} does not support it; "
                         "use precision='float32' or 'auto'")
    if dev.type == "cpu" and not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        raise ModelError("precision 'bfloat16' asked for, but this CPU has no bf16 arithmetic (AVX512-BF16 or AMX) "
                         "and would be slower; use precision='float32' or 'auto'")
    if dev.type == "mps":
        raise ModelError("precision 'bfloat16' is not supported on MPS here; use precision='float32' or 'auto'")
    return "bfloat16"


def load_model(
    name: str = "default",
    checkpoint: str | os.PathLike | None = None,
    device: str = "auto",
    *,
    precision: str = "auto",
    fast: bool = True,
    allow_download: bool = True,
):
    """Build a registered model and load its weights.

    Parameters
    ----------
    name : registry name or alias (``default``, ``sam_vit_b``, ``sam_vit_l``, ``sam_vit_h``,
        ``medsam_vit_b``, ...; see :func:`list_models`).
    checkpoint : a local file; wins over the shipped file, the cache and the download. Official
        Segment Anything ``.pth`` files load unchanged.
    device : ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    precision : encoder arithmetic: ``"auto"`` (bfloat16 on a CUDA GPU that has it, else float32),
        ``"float32"``, or ``"bfloat16"`` (also on CPUs with AVX512-BF16/AMX). Embeddings computed in
        another precision are a different cache (the store's signature says which).
    fast : the fused attention and decoder paths of :mod:`promptseg.models.fast` (same weights and
        math; ``False`` runs segment-anything's modules as they are).
    allow_download : fetch a missing official file from its URL (hash-checked) into the cache folder.

    Returns
    -------
    PromptModel

    Raises
    ------
    UnknownModelError, CheckpointError (missing, truncated, wrong architecture), HashMismatchError,
    DownloadError, ModelError (device not available, bf16 not supported there).
    """
    from .build import build_sam, guess_arch
    from .checkpoints import read_state_dict, resolve_checkpoint
    from .model import PromptModel

    spec = get_spec(name)
    dev = resolve_device(device)
    precision = resolve_precision(dev, precision)
    path = resolve_checkpoint(spec, checkpoint, allow_download=allow_download)
    state = read_state_dict(path)
    sam = build_sam(spec.arch, image_size=spec.input_size, pixel_mean=spec.pixel_mean, pixel_std=spec.pixel_std, **spec.arch_kwargs)
    if hasattr(sam, "edge_refiner"):
        if any(k.startswith("edge_refiner.") for k in state):
            try:  # (refiners come in several sizes)
                sam.edge_refiner = type(sam.edge_refiner).sized_for(state)
            except (KeyError, IndexError, AttributeError) as err:
                raise CheckpointError(f"{path}: its edge refiner is incomplete or malformed ({type(err).__name__}: {err})") from None
        else:
            del sam.edge_refiner  # a checkpoint saved before its edge refiner was trained: it runs without one
    own = sam.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        other = guess_arch(state)
        hint = f" (it looks like a {other} checkpoint)" if other and other != spec.arch else ""
        detail = (f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} wrongly shaped tensors, e.g. "
                  f"{(missing + unexpected + wrong)[0]}")
        raise CheckpointError(f"{path} does not fit model {spec.name} (architecture {spec.arch}){hint}: {detail}")
    sam.load_state_dict(state)
    return PromptModel(sam=sam.to(dev).eval(), spec=spec, device=dev, checkpoint=path, precision=precision, fast=fast)
