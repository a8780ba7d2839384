"""The model registry: a torch-free table of the models promptseg knows.

Each entry says which architecture to build, where the official file comes from, its SHA256, its
licence and how images must be brought to the encoder (input size, resize rule, normalisation). Nothing
here imports torch, so ``promptseg models list`` and the napari widget can show the table cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import UnknownModelError

#: ImageNet statistics on the 0..255 scale, as Segment Anything normalises its input.
SAM_MEAN = (123.675, 116.28, 103.53)
SAM_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry.

    Attributes
    ----------
    name : registry name (``sam_vit_b``, ...).
    arch : architecture key understood by :func:`promptseg.models.build.build_sam` (``vit_b``, ``vit_l``,
        ``vit_h``, ``tiny``).
    filename : file name in the cache directory.
    url : where the official file is downloaded from; ``None`` when it must be fetched by hand.
    sha256 : expected SHA256 of that file; ``None`` when not published.
    licence : licence of the weights.
    input_size : side of the square encoder input in pixels (1024 for SAM).
    resize : ``"longest"`` (SAM: scale the longest side to ``input_size`` and pad bottom/right) or
        ``"square"`` (MedSAM: stretch to ``input_size`` x ``input_size``).
    pixel_mean, pixel_std : per-channel normalisation on the 0..255 scale.
    shipped : path relative to the package's weights folder when the file ships with promptseg.
    description : one line for ``promptseg models list``.
    arch_kwargs : extra architecture parameters (for small custom models).
    zoom : whether a Session zooms into small objects by default (:mod:`promptseg.zoom`): for models
        trained on zoom windows whose encoder is cheap enough to run again on a click.
    """

    name: str
    arch: str
    filename: str
    url: str | None = None
    sha256: str | None = None
    licence: str = ""
    input_size: int = 1024
    resize: str = "longest"
    pixel_mean: tuple[float, float, float] = SAM_MEAN
    pixel_std: tuple[float, float, float] = SAM_STD
    shipped: str | None = None
    description: str = ""
    arch_kwargs: dict = field(default_factory=dict, compare=False, hash=False)
    zoom: bool = False


_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"

_REGISTRY: dict[str, ModelSpec] = {}
_ALIASES: dict[str, str] = {"default": "promptseg_cnn_s"}


def register_model(spec: ModelSpec, *, overwrite: bool = False) -> ModelSpec:
    """Add a model to the registry (your own fine-tuned checkpoint, a mirror, ...)."""
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(f"a model named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_model(name: str) -> None:
    """Remove a model added with :func:`register_model`."""
    _REGISTRY.pop(name, None)


def get_spec(name: str) -> ModelSpec:
    """Look up a model by name or alias; raise :class:`UnknownModelError` naming the known ones."""
    key = _ALIASES.get(name, name)
    try:
        return _REGISTRY[key]
    except KeyError:
        known = ", ".join(list_models())
        raise UnknownModelError(f"unknown model {name!r}; known models: {known}") from None


def list_models() -> list[str]:
    """Names of all registered models and aliases, aliases first."""
    return list(_ALIASES) + sorted(_REGISTRY)


def with_url(name: str, url: str, sha256: str | None = None) -> ModelSpec:
    """A copy of a spec pointing at another download location (a mirror or a local server)."""
    spec = get_spec(name)
    return replace(spec, url=url, sha256=sha256 if sha256 is not None else spec.sha256)


for _spec in (
    ModelSpec(
        "sam_vit_b", "vit_b", "sam_vit_b_01ec64.pth", _SAM_URL + "sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", "Apache-2.0",
        description="Segment Anything ViT-B (91M parameters, 375 MB)",
    ),
    ModelSpec(
        "sam_vit_l", "vit_l", "sam_vit_l_0b3195.pth", _SAM_URL + "sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", "Apache-2.0",
        description="Segment Anything ViT-L (308M parameters, 1.2 GB)",
    ),
    ModelSpec(
        "sam_vit_h", "vit_h", "sam_vit_h_4b8939.pth", _SAM_URL + "sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", "Apache-2.0",
        description="Segment Anything ViT-H (636M parameters, 2.4 GB)",
    ),
    # MedSAM publishes no stable direct URL or hash: the file is fetched by hand and passed as a path.
    ModelSpec(
        "medsam_vit_b", "vit_b", "medsam_vit_b.pth", None, None, "Apache-2.0",
        resize="square", pixel_mean=(0.0, 0.0, 0.0), pixel_std=(255.0, 255.0, 255.0),
        description="MedSAM ViT-B (SAM fine-tuned on 1.5M medical image-mask pairs; download by hand)",
    ),
    ModelSpec(
        "promptseg_cnn_s", "cnn_small", "promptseg_cnn_s.pt", None, None, "Apache-2.0", input_size=256,
        shipped="promptseg_cnn_s.pt", arch_kwargs={"strokes": True, "edges": True}, zoom=True,
        description="shipped default: small CNN encoder + SAM decoder with a native squiggle input and an edge "
                    "refiner, trained by promptseg on synthetic data",
    ),
):
    register_model(_spec)
