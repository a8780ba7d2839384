"""Finding, verifying, downloading and reading checkpoint files.

Order of precedence in :func:`resolve_checkpoint`: an explicit path; a file shipped with promptseg;
the cache directory (``$PROMPTSEG_CACHE``, else the user's cache dir); a download with pooch whose SHA256
is checked before the file is moved into the cache (pooch writes to a temporary name first, so a broken
download never leaves a file under the final name).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import CheckpointError, DownloadError, HashMismatchError
from .registry import ModelSpec


def cache_dir() -> Path:
    """Folder for downloaded checkpoints: ``$PROMPTSEG_CACHE`` or the platform's user cache dir."""
    env = os.environ.get("PROMPTSEG_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("promptseg"))


def weights_dir() -> Path:
    """Folder of the shipped weights: inside the wheel, or ``weights/`` of a source checkout."""
    packaged = Path(__file__).resolve().parents[1] / "_weights"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "weights"


def sha256sum(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(path: str | os.PathLike, sha256: str) -> None:
    """Raise :class:`HashMismatchError` unless the file's SHA256 equals ``sha256``."""
    got = sha256sum(path)
    if got != sha256.lower():
        raise HashMismatchError(f"{path}: SHA256 is {got[:12]}…, expected {sha256[:12]}…; the file is corrupt or another model")


def download(spec: ModelSpec, *, progress: bool = True, folder: Path | None = None) -> Path:
    """Download ``spec``'s file into the cache folder with a hash check; return its path.

    An existing file in the cache is re-verified (and re-downloaded if it does not match).
    """
    import pooch
    import requests

    folder = Path(folder) if folder is not None else cache_dir()
    if not spec.url:
        raise DownloadError(
            f"no download URL is known for {spec.name}: fetch {spec.filename} by hand and pass its path "
            f"(checkpoint=... or --checkpoint), or put it in {folder}"
        )
    known = f"sha256:{spec.sha256}" if spec.sha256 else None
    try:
        path = pooch.retrieve(spec.url, known_hash=known, fname=spec.filename, path=folder, progressbar=progress)
    except ValueError as e:  # pooch's wording for a hash mismatch
        if "hash" in str(e).lower():
            raise HashMismatchError(f"download of {spec.name} from {spec.url} does not match its SHA256 {spec.sha256[:12]}…; nothing was saved") from e
        raise DownloadError(f"could not download {spec.name} from {spec.url}: {e}") from e
    except (requests.exceptions.RequestException, OSError) as e:
        reason = type(e).__name__
        raise DownloadError(
            f"could not download {spec.name} from {spec.url} ({reason}: no network or server down); "
            f"put {spec.filename} in {folder} or pass its path"
        ) from e
    return Path(path)


def resolve_checkpoint(spec: ModelSpec, checkpoint: str | os.PathLike | None = None, *, allow_download: bool = True) -> Path:
    """Where to read ``spec``'s weights from (see the module docstring for the order)."""
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} does not exist")
        return path
    if spec.shipped:
        path = weights_dir() / spec.shipped
        if not path.is_file():
            raise CheckpointError(f"the shipped weights {path} are missing; reinstall promptseg")
        return path
    cached = cache_dir() / spec.filename
    if cached.is_file() and not allow_download:
        return cached
    if cached.is_file() and not spec.url:
        return cached
    if not allow_download:
        raise DownloadError(f"{spec.filename} is not in {cache_dir()} and downloading is off")
    return download(spec)


def read_state_dict(path: str | os.PathLike) -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Accepts an official Segment Anything file (a plain state dict) and the common wrappers
    ``{"model": state_dict}`` / ``{"state_dict": ...}``. A truncated or non-torch file gives
    :class:`CheckpointError`.
    """
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors...
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable torch checkpoint (truncated or corrupt?): {first}") from e
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    return obj
