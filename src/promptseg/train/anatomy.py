"""CT- and MRI-like scenes with exact instance labels, as 2D slices or 3D volumes.

A body (abdomen or thorax) or a head is laid out as tissues — fat, muscle, organs, vessels, bone, lung,
bowel gas, brain, fluid — with instance labels for what annotators segment (the body outline, organs,
lesions of irregular shape and often low contrast, vertebrae, kidneys, lungs, lung nodules, the skull,
the brain, ventricles, tumours and their oedema). It is then rendered either in Hounsfield units (CT: a
value per tissue drawn from its usual range, texture, scanner blur, quantum noise; int16) or in
arbitrary MRI units (T1- or T2-like contrast or, SynthSeg-style, random contrast per tissue, a
multiplicative bias field, Rician noise; uint16). The raw image reaches the encoder through
promptseg's own preprocessing, as at inference (:func:`to_rgb`).

Geometry is in in-plane pixels; a volume's slices are ``z_step`` pixels apart (anisotropic voxels). A 2D
draw is the plane ``z = z0`` of a 3D layout, so organs are cut at every level and some are absent.
Labels: int32, 0 = background; an organ's label excludes the lesions inside it (each lesion has its own),
as the body's and the brain's exclude the organs and structures inside them.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..preprocess import CT_WINDOW, choose_intensity

# tissue codes of the layout (rendered per modality below)
AIR, FAT, MUSCLE, LIVER, SPLEEN, KIDNEY, VESSEL, BONE, MARROW, LUNG, HEART, GAS, FLUID, GM, WM, TUMOUR, EDEMA, \
    BOWEL = range(18)
LESION = 100  # lesion k has tissue code LESION + k (its own intensity)
_IN_PLANE = np.zeros((3, 3, 3), bool)  # erosions act within each slice (a volume's ends stay)
_IN_PLANE[1] = ndi.generate_binary_structure(2, 1)

# CT: (mean HU, spread between scans) per tissue
_HU = {AIR: (-1000, 5), FAT: (-100, 15), MUSCLE: (45, 8), LIVER: (60, 25), SPLEEN: (50, 20), KIDNEY: (80, 70),
       VESSEL: (120, 90), BONE: (700, 250), MARROW: (200, 80), LUNG: (-840, 40), HEART: (45, 15), GAS: (-950, 30),
       FLUID: (10, 8), GM: (38, 4), WM: (28, 4), TUMOUR: (45, 20), EDEMA: (18, 6), BOWEL: (35, 15)}
# MRI: (T1-like, T2-like) relative intensity per tissue
_MR = {AIR: (0.0, 0.0), FAT: (0.9, 0.7), MUSCLE: (0.35, 0.25), LIVER: (0.5, 0.3), SPLEEN: (0.4, 0.55),
       KIDNEY: (0.4, 0.6), VESSEL: (0.15, 0.1), BONE: (0.05, 0.05), MARROW: (0.7, 0.5), LUNG: (0.03, 0.03),
       HEART: (0.35, 0.3), GAS: (0.0, 0.0), FLUID: (0.1, 1.0), GM: (0.45, 0.55), WM: (0.65, 0.4),
       TUMOUR: (0.5, 0.75), EDEMA: (0.35, 0.85), BOWEL: (0.35, 0.45)}


def field(rng: np.random.Generator, shape: tuple[int, ...], scale) -> np.ndarray:
    """Zero-mean, unit-std smooth noise float32 of ``shape`` (2D or 3D), features ~``scale`` px per axis
    (a scalar, or per axis: the last ``len(shape)`` entries are used)."""
    scale = np.atleast_1d(np.asarray(scale, float))[-len(shape):]
    scale = np.broadcast_to(scale, (len(shape),))
    coarse = rng.standard_normal([max(2, int(np.ceil(n / s)) + 1) for n, s in zip(shape, scale)]).astype(np.float32)
    out = ndi.zoom(coarse, [n / c for n, c in zip(shape, coarse.shape)], order=1, grid_mode=True, mode="nearest")
    out = out[tuple(slice(0, n) for n in shape)]
    return (out - out.mean()) / (out.std() + 1e-6)


class Layout:
    """Tissue codes and instance labels of a (D, H, W) scene (D = 1 for a 2D slice), painted object by object.

    Later objects overwrite earlier ones; ``paint`` works in the bounding box of each object only.
    """

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int, int], z_step: float, z0: float):
        self.rng, self.shape, self.z_step = rng, shape, float(z_step)
        self.tissue = np.full(shape, AIR, np.int16)
        self.labels = np.zeros(shape, np.int32)
        self.z = (np.arange(shape[0]) - (shape[0] - 1) / 2) * z_step + z0  # slice positions in px
        self.n_lesions = 0

    def blob(self, centre, radii, rough: float = 0.05, within=None):
        """Mask of a perturbed ellipsoid in its bounding box: (slices, bool crop), or None if outside.

        centre, radii : (z, y, x) in pixels; ``within`` a bool (D, H, W) mask the blob is clipped to.
        """
        lo = [np.searchsorted(self.z, centre[0] - radii[0] * 1.3)] + [int(np.floor(c - r * 1.3)) for c, r in
                                                                      zip(centre[1:], radii[1:])]
        hi = [np.searchsorted(self.z, centre[0] + radii[0] * 1.3)] + [int(np.ceil(c + r * 1.3)) + 1 for c, r in
                                                                      zip(centre[1:], radii[1:])]
        box = tuple(slice(max(0, a), min(n, b)) for a, b, n in zip(lo, hi, self.shape))
        if any(s.start >= s.stop for s in box):
            return None
        zz = self.z[box[0]][:, None, None]
        yy = np.arange(box[1].start, box[1].stop)[None, :, None]
        xx = np.arange(box[2].start, box[2].stop)[None, None, :]
        d = ((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 + ((xx - centre[2]) / radii[2]) ** 2
        crop = tuple(s.stop - s.start for s in box)
        r = max(radii[1:])
        m = np.sqrt(d) <= 1.0 + rough * field(self.rng, crop, (max(1.0, 0.5 * r / self.z_step), 0.5 * r, 0.5 * r))
        if within is not None:
            m &= within[box]
        return (box, m) if m.any() else None

    def paint(self, obj, tissue: int, label: bool | None = True) -> np.ndarray | None:
        """Write a ``blob`` result as ``tissue`` with a new instance label (``label=True``), as background
        (``False``) or leaving the labels as they are (``None``); returns the full bool mask."""
        if obj is None:
            return None
        box, m = obj
        self.tissue[box][m] = tissue
        if label is not None:
            self.labels[box][m] = self.labels.max(initial=0) + 1 if label else 0
        full = np.zeros(self.shape, bool)
        full[box] = m
        return full

    def lesions(self, organ: np.ndarray | None, size: float, n: int) -> None:
        """``n`` irregular lesions inside ``organ`` (a bool mask), radii ~``size`` px, own tissue codes."""
        if organ is None or not organ.any():
            return
        pts = np.argwhere(ndi.binary_erosion(organ, _IN_PLANE, iterations=2) if organ.sum() > 200 else organ)
        for _ in range(n):
            if not len(pts):
                return
            zi, y, x = pts[self.rng.integers(len(pts))]
            r = size * np.exp(self.rng.normal(0, 0.45))
            radii = (r * self.rng.uniform(0.7, 1.3), r * self.rng.uniform(0.7, 1.3), r * self.rng.uniform(0.7, 1.3))
            self.n_lesions += 1
            self.paint(self.blob((self.z[zi], y, x), radii, self.rng.uniform(0.1, 0.35), within=organ),
                       LESION + self.n_lesions)


def _body(L: Layout, thorax: bool) -> None:
    """Abdomen (liver, spleen, kidneys, aorta, bowel, spine, lesions) or thorax (lungs, nodules, heart)."""
    rng = L.rng
    _, h, w = L.shape
    a = w * rng.uniform(0.28, 0.48)  # body half-width (px)
    b = min(a * rng.uniform(0.6, 0.85), h * 0.47)
    cy, cx = h / 2 + rng.normal(0, 0.03 * h), w / 2 + rng.normal(0, 0.03 * w)
    zr = 4 * a
    # the body outline is an object too (its label: what no organ inside takes): without it, a large
    # bright region on dark air was never a target, and a model learnt to segment only a part of one
    body = L.paint(L.blob((0, cy, cx), (zr, b, a), 0.02), FAT)
    if body is None:
        return
    inner = ndi.binary_erosion(body, _IN_PLANE, iterations=max(1, int(a * rng.uniform(0.03, 0.09))))
    L.tissue[inner] = MUSCLE
    sy = cy + 0.6 * b  # spine, posterior midline
    vert = L.paint(L.blob((0, sy, cx), (zr, 0.14 * b, 0.11 * a), 0.03, within=inner), BONE)
    if vert is not None:
        L.tissue[ndi.binary_erosion(vert, _IN_PLANE, iterations=2) & vert] = MARROW
    for side in (-1, 1):  # paraspinal muscles stay unlabelled tissue; kidneys or lungs on each side
        if thorax:
            L.paint(L.blob((rng.normal(0, 0.3 * zr), cy - 0.05 * b, cx + side * 0.45 * a),
                           (zr * 0.6, 0.7 * b, 0.38 * a), 0.05, within=inner), LUNG)
        elif rng.random() < 0.85:
            kid = L.paint(L.blob((rng.normal(0, 0.2 * a), sy - 0.1 * b, cx + side * 0.42 * a),
                                 (0.35 * a, 0.22 * b, 0.12 * a), 0.05, within=inner), KIDNEY)
            L.lesions(kid, 0.04 * a, int(rng.random() < 0.3))
    L.paint(L.blob((0, sy - 0.28 * b, cx + 0.1 * a), (zr, 0.09 * b, 0.07 * a), 0.0, within=inner), VESSEL)
    lungs = np.isin(L.tissue, [LUNG])
    if thorax:
        L.paint(L.blob((rng.normal(0, 0.2 * a), cy - 0.15 * b, cx + 0.08 * a), (0.45 * a, 0.35 * b, 0.3 * a), 0.05,
                       within=inner & ~lungs), HEART)
        for _ in range(int(rng.integers(8, 30))):  # vessels in the lungs: small bright dots, unlabelled
            pts = np.argwhere(lungs)
            if len(pts):
                zi, y, x = pts[rng.integers(len(pts))]
                r = rng.uniform(0.6, 2.5)
                L.paint(L.blob((L.z[zi], y, x), (3 * r, r, r), 0.1, within=lungs), VESSEL, label=None)
        L.lesions(lungs, 0.03 * a, int(rng.integers(0, 4)))  # nodules
        return
    liver = L.paint(L.blob((rng.normal(0, 0.3 * a), cy - 0.15 * b, cx - 0.38 * a), (1.0 * a, 0.55 * b, 0.42 * a),
                           rng.uniform(0.04, 0.12), within=inner), LIVER)
    spleen = L.paint(L.blob((rng.normal(0, 0.3 * a), cy + 0.1 * b, cx + 0.5 * a), (0.4 * a, 0.3 * b, 0.18 * a), 0.08,
                            within=inner & (L.tissue == MUSCLE)), SPLEEN)
    for _ in range(int(rng.integers(0, 7))):  # bowel loops, some with gas
        y, x = cy + rng.uniform(-0.3, 0.5) * b, cx + rng.uniform(-0.3, 0.5) * a
        r = a * rng.uniform(0.05, 0.12)
        loop = L.paint(L.blob((rng.normal(0, a), y, x), (2 * r, r, r * rng.uniform(0.7, 1.4)), 0.1,
                              within=inner & (L.tissue == MUSCLE)), BOWEL, label=rng.random() < 0.5)
        if loop is not None and rng.random() < 0.5:  # a gas pocket in the loop's upper part
            L.tissue[ndi.binary_erosion(loop, _IN_PLANE, iterations=2) & (np.arange(h)[:, None] < y)] = GAS
    L.lesions(liver, 0.08 * a, int(rng.integers(0, 5)))
    L.lesions(spleen, 0.05 * a, int(rng.random() < 0.3))


def _head(L: Layout) -> None:
    """Skull, brain (grey / white matter), ventricles, tumours with a core and oedema."""
    rng = L.rng
    _, h, w = L.shape
    a = min(w, h) * rng.uniform(0.3, 0.47)
    b = a * rng.uniform(1.05, 1.25)
    cy, cx = h / 2, w / 2
    zr = 0.9 * a
    scalp = L.paint(L.blob((0, cy, cx), (zr, min(b, h * 0.48), a), 0.01), FAT, label=False)
    if scalp is None:
        return
    skull = L.paint(L.blob((0, cy, cx), (zr * 0.95, min(b, h * 0.48) * 0.95, a * 0.95), 0.01), BONE)
    brain = L.paint(L.blob((0, cy, cx), (zr * 0.87, min(b, h * 0.48) * 0.86, a * 0.86), 0.02, within=skull), GM)
    if brain is None:
        return
    wm = ndi.binary_erosion(brain, _IN_PLANE, iterations=max(1, int(a * 0.06))) & (field(rng, L.shape, (3, a / 8, a / 8)) > -0.6)
    L.tissue[wm] = WM
    for side in (-1, 1):  # lateral ventricles
        L.paint(L.blob((0.1 * zr, cy - 0.05 * b, cx + side * 0.12 * a), (0.4 * zr, 0.35 * b, 0.07 * a), 0.15,
                       within=brain), FLUID)
    for _ in range(int(rng.integers(0, 3))):
        pts = np.argwhere(ndi.binary_erosion(brain, _IN_PLANE, iterations=3))
        if not len(pts):
            break
        zi, y, x = pts[rng.integers(len(pts))]
        r = a * rng.uniform(0.06, 0.25)
        c = (L.z[zi], y, x)
        if rng.random() < 0.7:
            L.paint(L.blob(c, (r * 1.8, r * 1.8, r * 1.8), 0.3, within=brain), EDEMA)
        L.n_lesions += 1
        L.paint(L.blob(c, (r, r, r), 0.25, within=brain), LESION + L.n_lesions)


def scene(rng: np.random.Generator, shape, kind: str | None = None, z_step: float = 1.0):
    """Lay out one scene: ``shape`` (H, W) for a slice or (D, H, W) for a volume.

    kind : "abdomen", "thorax", "head" or None (random). Returns (tissue int16, labels int32), both of
    ``shape``; lesion k has tissue ``LESION + k``.
    """
    shape = tuple(int(s) for s in shape)
    vol = (1,) + shape if len(shape) == 2 else shape
    kind = kind or str(rng.choice(["abdomen", "abdomen", "thorax", "head"]))
    z0 = rng.uniform(-0.5, 0.5) * min(vol[1:]) * 0.35 if len(shape) == 2 else 0.0
    L = Layout(rng, vol, z_step, z0)
    _head(L) if kind == "head" else _body(L, kind == "thorax")
    ids = np.union1d([0], L.labels)
    labels = np.searchsorted(ids, L.labels)  # ids 1..N (objects painted over entirely leave no gap)
    out = (L.tissue, labels.astype(np.int32))
    return (out[0][0], out[1][0]) if len(shape) == 2 else out


def render_ct(rng: np.random.Generator, tissue: np.ndarray, z_step: float = 1.0) -> np.ndarray:
    """Tissue codes -> int16 Hounsfield units with texture, scanner blur and quantum noise."""
    hu = np.zeros(tissue.shape, np.float32)
    for code in np.unique(tissue):
        if code >= LESION:  # a lesion: its organ's value (the most common tissue around it) +/- a contrast
            m = tissue == code
            ring = ndi.binary_dilation(m, iterations=2) & ~m
            around = np.bincount(np.clip(tissue[ring], 0, LESION - 1)).argmax() if ring.any() else LIVER
            base = hu[ring].mean() if ring.any() and around < LESION else _HU[LIVER][0]
            sign = -1 if rng.random() < 0.75 else 1
            hu[m] = base + sign * np.exp(rng.uniform(np.log(8), np.log(80)))
        else:
            mean, sd = _HU[int(code)]
            hu[tissue == code] = mean + rng.normal(0, sd)
    soft = (hu > -200) & (hu < 300)
    hu += soft * rng.uniform(0, 8) * field(rng, tissue.shape, (2, 4, 4))  # parenchyma texture
    sig = rng.uniform(0.4, 1.2)
    hu = ndi.gaussian_filter(hu, (sig / z_step, sig, sig)[-tissue.ndim:])
    noise = rng.standard_normal(tissue.shape).astype(np.float32)
    if rng.random() < 0.5:  # correlated noise, as reconstruction kernels give
        noise = ndi.gaussian_filter(noise, 0.7) * 2.0
    hu += rng.uniform(4, 30) * noise
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def render_mri(rng: np.random.Generator, tissue: np.ndarray, z_step: float = 1.0) -> np.ndarray:
    """Tissue codes -> uint16 MRI-like intensities (T1/T2-like or random contrast, bias field, Rician noise)."""
    seq = int(rng.random() < 0.5)
    random_contrast = rng.random() < 0.35
    img = np.zeros(tissue.shape, np.float32)
    for code in np.unique(tissue):
        m = tissue == code
        if code >= LESION:
            ring = ndi.binary_dilation(m, iterations=2) & ~m
            base = img[ring].mean() if ring.any() else 0.4
            img[m] = np.clip(base + rng.choice([-1, 1]) * rng.uniform(0.08, 0.45), 0.02, 1.2)
        elif random_contrast and code not in (AIR, GAS):
            img[m] = rng.uniform(0.05, 1.0)
        else:
            img[m] = _MR[int(code)][seq] * rng.uniform(0.8, 1.2)
    img += (img > 0.02) * rng.uniform(0, 0.05) * field(rng, tissue.shape, (2, 3, 3))
    img = ndi.gaussian_filter(img, (0.6 / z_step, 0.6, 0.6)[-tissue.ndim:])
    bias = np.exp(rng.uniform(0.05, 0.45) * field(rng, tissue.shape, [n * 0.6 for n in tissue.shape]))
    img *= bias
    s = rng.uniform(0.01, 0.06)
    img = np.sqrt((img + s * rng.standard_normal(img.shape)) ** 2 + (s * rng.standard_normal(img.shape)) ** 2)
    return np.clip(img * rng.uniform(500, 4000), 0, 65535).astype(np.uint16)


def to_rgb(rng: np.random.Generator, raw: np.ndarray, modality: str) -> np.ndarray:
    """A raw CT (HU) or MRI slice -> uint8 (H, W, 3) through promptseg's preprocessing, with the choices
    users make: CT with the soft-tissue window (``modality="ct"``), another window, or percentiles;
    MRI with ``modality="mri"`` or plain percentiles."""
    window = None
    if modality == "ct":
        u = rng.random()
        if u < 0.55:
            window = CT_WINDOW
        elif u < 0.8:
            centre, width = rng.uniform(-50, 150), rng.uniform(250, 700)
            window = (centre - width / 2, centre + width / 2)
        mode = None
    else:
        mode = "mri" if rng.random() < 0.7 else None
    return choose_intensity(raw, rgb=False, modality=mode, window=window).apply(raw)


def sample(rng: np.random.Generator, size=256) -> tuple[np.ndarray, np.ndarray]:
    """One 2D CT- or MRI-like training image: uint8 (H, W, 3) as the encoder sees it, and int32 labels."""
    shape = (size, size) if np.isscalar(size) else tuple(int(s) for s in size)
    tissue, labels = scene(rng, shape)
    modality = "ct" if rng.random() < 0.55 else "mri"
    raw = render_ct(rng, tissue) if modality == "ct" else render_mri(rng, tissue)
    return to_rgb(rng, raw, modality), labels


def volume(rng: np.random.Generator, shape=(32, 192, 192), kind: str | None = None, modality: str = "ct",
           z_step: float = 3.0):
    """A 3D scene: raw volume (int16 HU or uint16 MRI), int32 labels, spacing (z_step, 1, 1) in pixels."""
    tissue, labels = scene(rng, shape, kind, z_step)
    raw = render_ct(rng, tissue, z_step) if modality == "ct" else render_mri(rng, tissue, z_step)
    return raw, labels, (float(z_step), 1.0, 1.0)
