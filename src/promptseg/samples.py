"""Sample images to try promptseg on, with no download.

Four small natural images come from the files scikit-image installs with itself; two are
synthetic and come with their exact ground truth masks:

* ``"ct_lesions"``: a CT-like abdominal volume with three low-contrast liver lesions,
* ``"large_2d"``: a 4096 x 4096 fluorescence-like image of many nuclei (a large-image test).

Both synthetic images are generated from a fixed seed, so every call returns the same pixels.
"""

from __future__ import annotations

import numpy as np

from promptseg.errors import ImageError
from promptseg.io.meta import ImageMeta

#: Sample name -> one-line description.
SAMPLES: dict[str, str] = {
    "coins": "Greek coins on a grey background, uint8 (303, 384) (scikit-image)",
    "cell": "Phase-contrast cell image, uint8 (660, 550) (scikit-image)",
    "ihc": "Immunohistochemistry (IHC) stained tissue, RGB uint8 (512, 512, 3) (scikit-image)",
    "camera": "Cameraman photograph, uint8 (512, 512) (scikit-image)",
    "ct_lesions": "Synthetic abdominal CT, int16 HU (48, 192, 192), spacing (2.5, 0.8, 0.8) mm, "
                  "liver with 3 low-contrast lesions (ground truth available)",
    "large_2d": "Synthetic fluorescence nuclei, uint16 (4096, 4096) (ground truth available)",
    "slide": "Synthetic H&E-like whole slide, RGB uint8 (20000, 20000, 3), 6 lazy pyramid levels "
             "(ground truth available)",
}

_SKIMAGE = {"coins": "coins", "cell": "cell", "ihc": "immunohistochemistry", "camera": "camera"}

CT_SHAPE = (48, 192, 192)
CT_SPACING = (2.5, 0.8, 0.8)  # mm, (z, y, x)
LARGE_SHAPE = (4096, 4096)
LARGE_SPACING = (0.325, 0.325)  # micrometres, a 20x objective
SLIDE_SHAPE, SLIDE_SEED = (20000, 20000), 2026


def load_sample(name: str) -> tuple[np.ndarray, ImageMeta]:
    """Load a sample image.

    Parameters
    ----------
    name : str
        One of :data:`SAMPLES`.

    Returns
    -------
    image : numpy.ndarray (a list of levels for ``"slide"``)
        napari order: ``(y, x)`` for grey, ``(y, x, 3)`` for ``"ihc"``, ``(z, y, x)`` int16
        Hounsfield units for ``"ct_lesions"``, ``(4096, 4096)`` uint16 for ``"large_2d"``; for
        ``"slide"`` a list of lazy dask arrays, the pyramid, level 0 ``(20000, 20000, 3)`` first.
    meta : ImageMeta
        Spacing (1.0 for the scikit-image photographs), axes and unit; ``source_format`` is
        ``"sample"``.

    Raises
    ------
    ImageError
        Unknown sample name (the message lists the known ones).
    """
    _check(name)
    extra = {"sample": name}
    if name == "ct_lesions":
        image, _ = _ct_lesions()
        affine = np.diag([*CT_SPACING, 1.0])
        return image, ImageMeta(spacing=CT_SPACING, axes="zyx", unit="mm", affine=affine,
                                source_format="sample", extra=extra)
    if name == "slide":
        from promptseg.slide import SyntheticSlide

        levels = SyntheticSlide(SLIDE_SHAPE, seed=SLIDE_SEED).levels()
        return levels, ImageMeta(spacing=(0.5, 0.5), axes="yxc", unit="micrometer", source_format="sample", extra=extra)
    if name == "large_2d":
        image, _ = _large_2d(with_labels=False)
        return image, ImageMeta(spacing=LARGE_SPACING, axes="yx", unit="micrometer",
                                source_format="sample", extra=extra)
    import skimage.data

    image = np.ascontiguousarray(getattr(skimage.data, _SKIMAGE[name])())
    axes = "yxc" if image.ndim == 3 else "yx"
    return image, ImageMeta(spacing=(1.0, 1.0), axes=axes, source_format="sample", extra=extra)


def sample_ground_truth(name: str) -> np.ndarray | None:
    """Exact label image of a synthetic sample, None for the natural images.

    Returns
    -------
    numpy.ndarray or None
        int32 labels with the image's shape: lesions 1..3 for ``"ct_lesions"`` (0 elsewhere),
        one label per nucleus for ``"large_2d"``.
    """
    _check(name)
    if name == "ct_lesions":
        return _ct_lesions()[1]
    if name == "large_2d":
        return _large_2d(with_labels=True)[1]
    if name == "slide":
        raise ImageError("the slide's labels are too large to return whole; use "
                         "promptseg.slide.SyntheticSlide(...).labels(r0, r1, c0, c1) for a region")
    return None


def _check(name: str) -> None:
    if name not in SAMPLES:
        raise ImageError(f"unknown sample {name!r}; available: {', '.join(SAMPLES)}")


def _blob(d: list[np.ndarray], radii: tuple[float, ...], rng: np.random.Generator,
          roughness: float) -> np.ndarray:
    """Mask of an ellipsoid with a wavy surface; `d` holds the offsets (mm) from its centre."""
    r = np.sqrt(sum((di / ri) ** 2 for di, ri in zip(d, radii)))
    theta = np.arctan2(d[-2], d[-1])
    phi = np.arctan2(d[0], np.hypot(d[-2], d[-1])) if len(d) == 3 else 0.0
    k1, k2 = rng.integers(2, 5, size=2)
    p1, p2 = rng.uniform(0, 2 * np.pi, size=2)
    wave = np.sin(k1 * theta + p1) * np.cos(phi) + 0.6 * np.sin(k2 * phi + p2 + theta)
    return r <= 1.0 + roughness * wave


def _ct_lesions() -> tuple[np.ndarray, np.ndarray]:
    """Synthetic abdominal CT: (image int16 HU, lesion labels int32), both (48, 192, 192)."""
    from scipy import ndimage

    rng = np.random.default_rng(20240611)
    # voxel centres in mm, shaped to broadcast: z (48, 1, 1), y (1, 192, 1), x (1, 1, 192)
    z, y, x = np.ogrid[0:CT_SHAPE[0], 0:CT_SHAPE[1], 0:CT_SHAPE[2]]
    z, y, x = ((c.astype(np.float32) + 0.5) * s for c, s in zip((z, y, x), CT_SPACING))
    cy, cx = 80.0, 76.8
    swell = 1.0 + 0.04 * np.sin(z / 120.0 * np.pi)  # the body is a bit wider mid-volume
    body_r = np.sqrt(((x - cx) / (68.0 * swell)) ** 2 + ((y - cy) / (52.0 * swell)) ** 2)
    body_r = np.broadcast_to(body_r, CT_SHAPE)
    hu = np.full(CT_SHAPE, -1000.0, dtype=np.float32)
    hu[body_r <= 1.0] = -90.0  # subcutaneous fat
    hu[body_r <= 0.92] = 40.0  # soft tissue
    spine = np.broadcast_to((y - 115.0) ** 2 + (x - cx) ** 2 <= 10.0**2, CT_SHAPE)
    hu[spine] = 450.0
    liver = _blob([z - 60.0, y - 70.0, x - 50.0], (45.0, 35.0, 32.0), rng, 0.05)
    hu[liver] = 60.0
    labels = np.zeros(CT_SHAPE, dtype=np.int32)
    lesions = [((50.0, 60.0, 45.0), (10.0, 9.0, 8.0), 20.0),
               ((75.0, 80.0, 58.0), (7.0, 6.0, 6.0), 30.0),
               ((40.0, 85.0, 40.0), (8.0, 7.0, 7.0), 25.0)]
    for label, (centre, radii, value) in enumerate(lesions, start=1):
        mask = _blob([z - centre[0], y - centre[1], x - centre[2]], radii, rng, 0.18) & liver
        labels[mask] = label
        hu[mask] = value
    hu = ndimage.gaussian_filter(hu, sigma=(0.4, 0.7, 0.7))  # scanner blur
    hu += rng.normal(0.0, 15.0, size=CT_SHAPE).astype(np.float32)  # quantum noise
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), labels


def _large_2d(with_labels: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Synthetic fluorescence nuclei: (image uint16, labels int32 or None), both (4096, 4096).

    Nuclei sit on a jittered 44-pixel grid with radii <= 11 px, so they never touch.
    """
    rng = np.random.default_rng(4096)
    h, w = LARGE_SHAPE
    step, jitter, rmax = 44, 10, 11
    yy, xx = np.mgrid[0:h, 0:w:64].astype(np.float32)  # smooth background, upsampled below
    bg = 120.0 + 60.0 * np.cos((yy / h - 0.5) * np.pi) * np.cos((xx / w - 0.5) * np.pi)
    image = np.repeat(bg, 64, axis=1)[:, :w].astype(np.float32)
    labels = np.zeros(LARGE_SHAPE, dtype=np.int32) if with_labels else None
    gy, gx = np.meshgrid(np.arange(step // 2, h - step // 2, step),
                         np.arange(step // 2, w - step // 2, step), indexing="ij")
    keep = rng.random(gy.shape) < 0.7
    n = int(keep.sum())
    cys = gy[keep] + rng.integers(-jitter, jitter + 1, n)
    cxs = gx[keep] + rng.integers(-jitter, jitter + 1, n)
    rys, rxs = rng.uniform(5.0, rmax, n), rng.uniform(5.0, rmax, n)
    angles, peaks = rng.uniform(0, np.pi, n), rng.uniform(600.0, 3000.0, n)
    oy, ox = np.mgrid[-rmax - 1:rmax + 2, -rmax - 1:rmax + 2].astype(np.float32)
    for i in range(n):
        c, s = np.cos(angles[i]), np.sin(angles[i])
        d = np.sqrt(((c * oy + s * ox) / rys[i]) ** 2 + ((-s * oy + c * ox) / rxs[i]) ** 2)
        top, left = cys[i] - rmax - 1, cxs[i] - rmax - 1
        sl = (slice(top, top + oy.shape[0]), slice(left, left + ox.shape[1]))
        # bright, slightly domed nucleus with a soft (about 1.5 px) rim
        image[sl] += peaks[i] * np.clip((1.0 - d) * 6.0, 0.0, 1.0) * (1.0 - 0.3 * d**2)
        if labels is not None:
            labels[sl][d < 1.0] = i + 1
    image += rng.standard_normal(LARGE_SHAPE, dtype=np.float32) * np.sqrt(image) * 2.0
    return np.clip(image, 0, 65535).astype(np.uint16), labels
