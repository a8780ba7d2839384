"""How an image reaches the encoder, and the geometry between image pixels and the encoder input.

Every image is brought to what Segment Anything was trained on, an 8-bit RGB picture:

* uint8 grey or RGB(A): used as is (grey is repeated into 3 channels, alpha dropped) — the exact path of
  ``SamPredictor.set_image``.
* anything else (uint16, int16, float): a fixed intensity window ``(lo, hi)`` is mapped linearly to
  0..255 and rounded. The window is chosen once per image or volume (never per slice, so that slices of
  a volume stay comparable):

  - ``modality="ct"``: Hounsfield units, soft-tissue window (-160, 240) HU unless ``window=`` is given;
  - ``modality="mri"`` or none: the 0.5 and 99.5 percentiles (MRI: of the non-zero voxels), estimated
    from a strided subsample of at most ~4 M values so that a volume larger than RAM is never loaded.

Then the picture is resized with PIL's bilinear filter, longest side to the input size (SAM) or to a
square (MedSAM), and padded bottom/right by the model's own ``preprocess``.

Coordinates: napari's ``(row, col)`` in pixels of the full-resolution image; SAM's ``(x, y)`` in the
resized input frame. :class:`Frame` is the one place that converts between them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from .errors import ImageError

CT_WINDOW = (-160.0, 240.0)
_SAMPLE_BUDGET = 4_000_000


@dataclass(frozen=True)
class Intensity:
    """A linear map of raw values to 0..255 uint8; ``lo is None`` means "uint8 already"."""

    lo: float | None = None
    hi: float | None = None
    rgb: bool = False

    def as_dict(self) -> dict:
        return asdict(self)

    def apply(self, arr: np.ndarray) -> np.ndarray:
        """Raw slice (H, W) or (H, W, C) -> uint8 RGB (H, W, 3)."""
        a = np.asarray(arr)
        if self.rgb:
            a = a[..., :3]
        if self.lo is not None:
            scale = 255.0 / max(self.hi - self.lo, 1e-12)
            a = np.clip((a.astype(np.float32) - np.float32(self.lo)) * np.float32(scale), 0, 255)
            a = np.rint(a).astype(np.uint8)
        if not self.rgb:
            a = np.repeat(a[..., None], 3, axis=-1)
        return np.ascontiguousarray(a, dtype=np.uint8)


def spatial_shape(image, rgb: bool | None = None) -> tuple[tuple[int, ...], bool]:
    """Split an image's shape into its spatial part and an RGB flag.

    ``rgb=None`` guesses as napari does: a last axis of length 3 or 4 is colour. 2D grey (H, W), 2D RGB
    (H, W, 3|4) and 3D grey (Z, H, W) are accepted; anything else raises :class:`ImageError`.
    """
    shape = tuple(int(s) for s in image.shape)
    if rgb is None:
        rgb = len(shape) in (3, 4) and shape[-1] in (3, 4)
    spatial = shape[:-1] if rgb else shape
    if rgb and shape[-1] not in (3, 4):
        raise ImageError(f"image of shape {shape} is not RGB: its last axis has {shape[-1]} channels, not 3 or 4")
    if len(spatial) not in (2, 3):
        kind = "channels or time points" if len(spatial) > 3 else "dimensions"
        raise ImageError(
            f"image of shape {shape} has {len(spatial)} spatial dimensions; promptseg segments 2D or 3D "
            f"images (pick one of the extra {kind} first)"
        )
    if min(spatial) == 0:
        raise ImageError(f"image of shape {shape} is empty")
    if min(spatial[-2:]) < 2:
        raise ImageError(f"image of shape {shape} is too small to segment: each side must be at least 2 pixels")
    return spatial, bool(rgb)


def _subsample(image, budget: int = _SAMPLE_BUDGET) -> np.ndarray:
    """A strided sample of at most ~budget values, read without loading the whole array."""
    n = int(np.prod(image.shape))
    step = max(1, int(np.ceil((n / budget) ** (1.0 / image.ndim))))
    return np.asarray(image[(slice(None, None, step),) * image.ndim])


def choose_intensity(image, *, rgb: bool, modality: str | None = None, window=None) -> Intensity:
    """Pick the intensity map for an image or volume (see the module docstring)."""
    if modality not in (None, "ct", "mri", "auto", "microscopy", "pathology"):
        raise ImageError(f"unknown modality {modality!r}; use ct, mri, microscopy, pathology or leave it unset")
    dtype = np.dtype(image.dtype)
    if dtype.kind not in "uifb":
        raise ImageError(f"image dtype {dtype} is not a number type")
    if window is not None:
        lo, hi = (float(v) for v in window)
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise ImageError(f"intensity window {window!r} must be two finite numbers with lo < hi")
        return Intensity(lo, hi, rgb)
    if dtype == np.uint8 and modality != "ct":
        return Intensity(None, None, rgb)
    if modality == "ct":
        return Intensity(*CT_WINDOW, rgb)
    sample = _subsample(image).astype(np.float64, copy=False)
    if not np.all(np.isfinite(sample)):
        raise ImageError("image contains NaN or infinite values; replace them (e.g. np.nan_to_num) first")
    if modality == "mri" and np.any(sample != 0):
        sample = sample[sample != 0]
    lo, hi = np.percentile(sample, [0.5, 99.5])
    if hi <= lo:  # a flat image: any window that maps it to mid-grey
        lo, hi = float(lo) - 1.0, float(lo) + 1.0
    return Intensity(float(lo), float(hi), rgb)


def check_finite(arr: np.ndarray, where: str = "image") -> None:
    """Raise :class:`ImageError` if a float array holds NaN or inf."""
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ImageError(f"{where} contains NaN or infinite values; replace them (e.g. np.nan_to_num) first")


@dataclass(frozen=True)
class Frame:
    """Geometry between a full-resolution slice (H, W) and the encoder input.

    ``original`` = (H, W); ``input`` = (h, w), the resized size before padding; ``size`` = the padded
    square side the encoder sees.
    """

    original: tuple[int, int]
    input: tuple[int, int]
    size: int

    @classmethod
    def for_shape(cls, hw: tuple[int, int], size: int, resize: str = "longest") -> "Frame":
        h, w = (int(v) for v in hw)
        if resize == "square":
            return cls((h, w), (size, size), size)
        scale = size / max(h, w)
        return cls((h, w), (int(h * scale + 0.5), int(w * scale + 0.5)), size)

    @property
    def scale_rc(self) -> tuple[float, float]:
        return self.input[0] / self.original[0], self.input[1] / self.original[1]

    def to_input_xy(self, rc: np.ndarray) -> np.ndarray:
        """(N, 2) napari (row, col) pixels -> (N, 2) SAM (x, y) in the input frame."""
        rc = np.asarray(rc, dtype=np.float64).reshape(-1, 2)
        sr, sc = self.scale_rc
        return np.stack([rc[:, 1] * sc, rc[:, 0] * sr], axis=1)

    def box_to_input(self, r0: float, c0: float, r1: float, c1: float) -> np.ndarray:
        """Box corners in (row, col) -> SAM (x0, y0, x1, y1) in the input frame, corners ordered."""
        (x0, y0), (x1, y1) = self.to_input_xy([[min(r0, r1), min(c0, c1)], [max(r0, r1), max(c0, c1)]])
        return np.array([x0, y0, x1, y1])

    def resize(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) -> uint8 (h, w, 3) with PIL bilinear, as ``ResizeLongestSide.apply_image``."""
        h, w = self.input
        if (h, w) == tuple(rgb.shape[:2]):
            return rgb
        return np.array(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))

    def mask_to_lowres(self, mask: np.ndarray, lowres: int, scale: float = 8.0) -> np.ndarray:
        """Binary full-resolution mask (H, W) -> low-res logits (1, L, L) usable as ``mask_input``.

        The mask is resized into the input frame, padded like the image, box-averaged down to L x L and
        mapped to logits in [-scale, scale] (0.5 -> 0).
        """
        h, w = self.input
        m = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).resize((w, h), Image.BILINEAR)
        full = np.zeros((self.size, self.size), np.float32)
        full[:h, :w] = np.asarray(m, np.float32) / 255.0
        k = self.size // lowres
        low = full.reshape(lowres, k, lowres, k).mean(axis=(1, 3))
        return ((low - 0.5) * 2.0 * scale)[None].astype(np.float32)
