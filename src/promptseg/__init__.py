"""promptseg: interactive, promptable segmentation of biomedical images.

Public API (coordinates are napari's: (row, col) in 2D, (z, row, col) in 3D, full-resolution pixels)::

    import promptseg as ps
    model = ps.load_model("default")
    store = ps.embed(image, model, cache="img.zarr")
    s = ps.Session(model, image, embeddings=store)
    p = s.add_point((120, 87))          # Prediction(mask, score, bbox)
    label_id = s.commit()               # s.labels
"""

from .embeddings import EmbeddingStore, embed
from .errors import (
    CacheError,
    CheckpointError,
    DownloadError,
    HashMismatchError,
    ImageError,
    ImageIOError,
    ModelError,
    PromptError,
    PromptsegError,
    UnknownModelError,
)
from .models import list_models, load_model, register_model
from .models.registry import ModelSpec
from .session import Prediction, Session

__version__ = "0.1.0"

__all__ = [
    "CacheError", "CheckpointError", "DownloadError", "EmbeddingStore", "HashMismatchError", "ImageError",
    "ImageIOError", "ModelError", "ModelSpec", "Prediction", "PromptError", "PromptsegError", "Session",
    "UnknownModelError", "embed", "list_models", "load_model", "register_model", "__version__",
]
