"""Exception types of promptseg.

Every error a user can cause (bad file, bad prompt, wrong checkpoint, ...) is raised as a subclass of
:class:`PromptsegError` with a one-line message that names the problem. The CLI prints that line and
exits with status 2; the napari plugin shows it as a notification.
"""


class PromptsegError(Exception):
    """Base class of every error promptseg raises on purpose."""


class ModelError(PromptsegError):
    """A model could not be found, built or loaded."""


class UnknownModelError(ModelError, KeyError):
    """The model name is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(ModelError):
    """A checkpoint file is missing, unreadable, truncated, or does not fit the architecture."""


class HashMismatchError(ModelError):
    """A file's SHA256 differs from the one the registry expects."""


class DownloadError(ModelError):
    """A needed file could not be downloaded (no network, server down, no URL known)."""


class ImageError(PromptsegError, ValueError):
    """An image cannot be segmented as given (empty, NaN/inf, wrong number of dimensions, ...)."""


class PromptError(PromptsegError, ValueError):
    """A prompt is malformed or lies outside the image."""


class CacheError(PromptsegError):
    """An embedding cache is unusable: it belongs to another image/model/preprocessing, or is corrupt."""


class ImageIOError(PromptsegError, OSError):
    """An image or label file could not be read or written."""
