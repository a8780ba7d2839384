"""Reading images and writing labels: formats, spacing, axis order, atomic writes, errors."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
import tifffile
import zarr

from promptseg.errors import ImageError, ImageIOError, PromptsegError
from promptseg.io import SUPPORTED_READ, SUPPORTED_WRITE, ImageMeta, read_image, write_labels

RNG = np.random.default_rng(0)


def _labels(shape, dtype=np.int32):
    return RNG.integers(0, 5, size=shape).astype(dtype)


# --------------------------------------------------------------------------------------- TIFF


@pytest.mark.parametrize(
    ("shape", "spacing", "axes", "dtype"),
    [((40, 50), (0.5, 0.25), "yx", np.int32), ((6, 40, 50), (2.0, 0.5, 0.25), "zyx", np.uint16)],
)
def test_tiff_labels_roundtrip_with_spacing(tmp_path, shape, spacing, axes, dtype):
    labels = _labels(shape, dtype)
    meta = ImageMeta(spacing=spacing, axes=axes, unit="micrometer")
    out = write_labels(tmp_path / "seg.tif", labels, meta)
    assert out == tmp_path / "seg.tif"
    data, read_meta = read_image(out)
    assert isinstance(data, np.ndarray) and data.dtype == dtype
    np.testing.assert_array_equal(data, labels)
    assert read_meta.axes == axes and read_meta.spacing == pytest.approx(spacing)
    assert read_meta.unit == "micrometer" and read_meta.source_format == "tiff"
    with tifffile.TiffFile(out) as tif:  # compressed, and the resolution tags hold the spacing
        assert tif.pages[0].compression != 1
        assert tif.pages[0].get_resolution() == pytest.approx((1 / spacing[-1], 1 / spacing[-2]))


def test_tiff_rgb_and_rgba(tmp_path):
    rgb = RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tiff", rgb, photometric="rgb")
    data, meta = read_image(tmp_path / "rgb.tiff")
    np.testing.assert_array_equal(data, rgb)
    assert meta.axes == "yxc" and meta.rgb and meta.ndim_spatial == 2

    rgba = RNG.integers(0, 256, (30, 40, 4), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgba.TIF", rgba, photometric="rgb", extrasamples=["unassalpha"])
    data, meta = read_image(tmp_path / "rgba.TIF")
    assert data.shape == (30, 40, 4) and meta.axes == "yxc"

    planar = np.moveaxis(rgb, -1, 0)  # (3, y, x) stored plane by plane
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif")[0], rgb)
    lazy, _ = read_image(tmp_path / "planar.tif", lazy=True)
    np.testing.assert_array_equal(lazy[5:9, 2], rgb[5:9, 2])


def test_tiff_imagej_stack_spacing(tmp_path):
    stack = RNG.integers(0, 1000, (5, 20, 30), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "ij.tif", stack, imagej=True, resolution=(1 / 0.4, 1 / 0.4),
                     metadata={"spacing": 1.5, "unit": "um", "axes": "ZYX"})
    data, meta = read_image(tmp_path / "ij.tif")
    np.testing.assert_array_equal(data, stack)
    assert meta.axes == "zyx" and meta.spacing == pytest.approx((1.5, 0.4, 0.4))
    assert meta.unit == "micrometer"


def test_lazy_tiff_reads_on_demand(tmp_path):
    stack = RNG.integers(0, 60000, (7, 64, 48), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack, tile=(32, 32), compression="zlib")
    data, meta = read_image(tmp_path / "stack.tif", lazy=True)
    assert not isinstance(data, np.ndarray)
    assert data.shape == stack.shape and data.dtype == stack.dtype and meta.axes == "zyx"
    np.testing.assert_array_equal(data[3], stack[3])
    np.testing.assert_array_equal(data[1:5, 10:40, 7], stack[1:5, 10:40, 7])


def test_corrupt_and_truncated_tiff(tmp_path):
    bad = tmp_path / "garbage.tif"
    bad.write_bytes(b"this is not a tiff file at all")
    with pytest.raises(ImageIOError, match="garbage.tif"):
        read_image(bad)

    truncated = tmp_path / "truncated.tif"
    tifffile.imwrite(truncated, RNG.integers(0, 255, (4, 256, 256), dtype=np.uint8),
                     photometric="minisblack")
    truncated.write_bytes(truncated.read_bytes()[:70_000])
    with pytest.raises(ImageIOError, match="truncated.tif"):
        read_image(truncated)


# ----------------------------------------------------------------------------------- PNG/JPEG


def test_png_and_jpeg(tmp_path):
    grey = RNG.integers(0, 256, (20, 30), dtype=np.uint8)
    iio.imwrite(tmp_path / "grey.png", grey)
    data, meta = read_image(tmp_path / "grey.png")
    np.testing.assert_array_equal(data, grey)
    assert meta.axes == "yx" and meta.spacing == (1.0, 1.0) and meta.source_format == "png"

    rgba = RNG.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    iio.imwrite(tmp_path / "rgba.PNG", rgba)
    data, meta = read_image(tmp_path / "rgba.PNG")
    np.testing.assert_array_equal(data, rgba)
    assert meta.axes == "yxc"

    smooth = np.zeros((32, 48, 3), dtype=np.uint8)
    smooth[..., 0] = 200
    iio.imwrite(tmp_path / "photo.jpg", smooth)
    data, meta = read_image(tmp_path / "photo.jpg")
    assert data.shape == (32, 48, 3) and data.dtype == np.uint8 and meta.axes == "yxc"
    assert meta.source_format == "jpeg" and abs(int(data[..., 0].mean()) - 200) < 5


# -------------------------------------------------------------------------------------- NIfTI


def _oblique_affine() -> np.ndarray:
    """Anisotropic voxels (0.7, 0.9, 2.5) mm, rotated about two axes, with an offset."""
    a, b = np.deg2rad(20), np.deg2rad(-35)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([0.7, 0.9, 2.5])
    affine[:3, 3] = [-90.3, 12.1, 40.7]
    return affine


def test_nifti_read_and_write_back(tmp_path):
    nx, ny, nz = 20, 30, 8
    volume = RNG.integers(-1000, 1000, (nx, ny, nz)).astype(np.int16)  # NIfTI order (x, y, z)
    volume[3, 4, 5] = 1234
    src = nib.Nifti1Image(volume, _oblique_affine())
    src.set_qform(_oblique_affine(), code="scanner")
    src.set_sform(_oblique_affine(), code="aligned")
    src.header.set_xyzt_units("mm")
    nib.save(src, tmp_path / "ct.nii.gz")
    source = nib.load(tmp_path / "ct.nii.gz")

    data, meta = read_image(tmp_path / "ct.nii.gz")
    assert data.shape == (nz, ny, nx) and data.dtype == np.int16 and meta.axes == "zyx"
    assert data[5, 4, 3] == 1234  # voxel (x, y, z) = (3, 4, 5) lands at (z, y, x)
    np.testing.assert_array_equal(data, volume.transpose(2, 1, 0))
    assert meta.spacing == pytest.approx((2.5, 0.9, 0.7)) and meta.unit == "mm"
    # meta.affine maps a napari index (z, y, x) to the scanner position, reversed to (z, y, x)
    world = source.affine @ [3, 4, 5, 1]
    np.testing.assert_allclose(meta.affine @ [5, 4, 3, 1], [*world[2::-1], 1])

    labels = np.zeros(data.shape, dtype=np.uint16)
    labels[2:6, 10:20, 5:9] = 3
    labels[5, 4, 3] = 7
    out = write_labels(tmp_path / "seg.nii.gz", labels, meta)
    back = nib.load(out)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), labels.transpose(2, 1, 0))
    assert back.get_data_dtype() == np.uint16 and back.dataobj[3, 4, 5] == 7
    np.testing.assert_array_equal(back.affine, source.affine)  # exactly, not approximately
    np.testing.assert_array_equal(back.get_qform(), source.get_qform())
    assert int(back.header["qform_code"]) == 1 and int(back.header["sform_code"]) == 2

    with pytest.raises(ImageIOError, match="shape"):
        write_labels(tmp_path / "bad.nii", labels[:, :, :-1], meta)


def test_nifti_from_spacing_only(tmp_path):
    labels = _labels((4, 10, 12), np.uint8)
    meta = ImageMeta(spacing=(3.0, 0.5, 0.25), axes="zyx", unit="mm")
    back = nib.load(write_labels(tmp_path / "seg.nii", labels, meta))
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), labels.T)
    np.testing.assert_allclose(back.header.get_zooms(), (0.25, 0.5, 3.0))
    data, read_meta = read_image(tmp_path / "seg.nii")
    np.testing.assert_array_equal(data, labels)
    assert read_meta.spacing == pytest.approx((3.0, 0.5, 0.25))


# --------------------------------------------------------------------------------------- Zarr


@pytest.mark.parametrize("name", ["seg.ome.zarr", "seg.zarr"])
def test_ome_zarr_write_and_read(tmp_path, name):
    labels = _labels((5, 24, 32))
    meta = ImageMeta(spacing=(2.5, 0.8, 0.7), axes="zyx", unit="mm")
    out = write_labels(tmp_path / name, labels, meta)
    assert out.is_dir()
    data, read_meta = read_image(out)
    assert not isinstance(data, np.ndarray)  # lazy
    np.testing.assert_array_equal(np.asarray(data[:]), labels)
    assert read_meta.source_format == "ome-zarr" and read_meta.axes == "zyx"
    assert read_meta.spacing == pytest.approx((2.5, 0.8, 0.7)) and read_meta.unit == "mm"

    smaller = labels[:, :10]  # overwriting replaces the whole folder
    write_labels(out, smaller, meta)
    np.testing.assert_array_equal(np.asarray(read_image(out)[0][:]), smaller)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_ome_zarr_with_singleton_axes(tmp_path):
    from ome_zarr.writer import write_image

    image = RNG.integers(0, 500, (1, 1, 4, 16, 20)).astype(np.uint16)
    write_image(image, zarr.open_group(tmp_path / "img.ome.zarr", mode="w"), scale_factors=[2],
                axes="tczyx", scale={"t": 1.0, "c": 1.0, "z": 2.0, "y": 0.5, "x": 0.5})
    data, meta = read_image(tmp_path / "img.ome.zarr")
    assert data.shape == (4, 16, 20) and meta.axes == "zyx"
    assert meta.spacing == pytest.approx((2.0, 0.5, 0.5))
    np.testing.assert_array_equal(data[2, 3:9], image[0, 0, 2, 3:9])


def test_plain_zarr_array(tmp_path):
    volume = _labels((3, 8, 9), np.float32)
    array = zarr.create_array(tmp_path / "plain.zarr", shape=volume.shape, dtype=volume.dtype,
                              chunks=(1, 8, 9))
    array[:] = volume
    data, meta = read_image(tmp_path / "plain.zarr")
    assert isinstance(data, zarr.Array)
    np.testing.assert_array_equal(data[1], volume[1])
    assert meta.axes == "zyx" and meta.spacing == (1.0, 1.0, 1.0) and meta.source_format == "zarr"


# --------------------------------------------------------------------------------- atomicity


def _broken_tiff(path, *args, **kwargs):
    Path(path).write_bytes(b"II*\x00half a file")
    raise RuntimeError("disk full")


def _broken_nifti(img, path, *args, **kwargs):
    Path(path).write_bytes(b"\x1f\x8bhalf a file")
    raise RuntimeError("disk full")


def _broken_ome_zarr(image, group, *args, **kwargs):
    group.create_array("s0", shape=(2, 2), dtype="int32")
    raise RuntimeError("disk full")


@pytest.mark.parametrize(
    ("name", "module", "function", "broken"),
    [("seg.tif", tifffile, "imwrite", _broken_tiff),
     ("seg.nii.gz", nib, "save", _broken_nifti),
     ("seg.ome.zarr", "ome_zarr.writer", "write_image", _broken_ome_zarr)],
)
def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch, name, module, function, broken):
    if isinstance(module, str):
        module = pytest.importorskip(module)
    labels = _labels((3, 10, 12))
    monkeypatch.setattr(module, function, broken)
    with pytest.raises(ImageIOError, match=name):
        write_labels(tmp_path / name, labels)
    assert list(tmp_path.iterdir()) == []  # neither the final name nor a temporary

    monkeypatch.undo()  # an existing file under the final name survives a failed write
    write_labels(tmp_path / name, labels)
    before = np.asarray(read_image(tmp_path / name)[0][:])  # loaded now, not lazily
    monkeypatch.setattr(module, function, broken)
    with pytest.raises(ImageIOError):
        write_labels(tmp_path / name, labels + 1)
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / name)[0][:]), before)
    assert [p.name for p in tmp_path.iterdir()] == [name]


# ------------------------------------------------------------------------------------- errors


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(ImageIOError, match="nope.tif") as info:
        read_image(tmp_path / "nope.tif")
    assert isinstance(info.value, OSError) and isinstance(info.value, PromptsegError)
    (tmp_path / "image.bmp").write_bytes(b"BM")
    with pytest.raises(ImageIOError, match=r"image\.bmp.*unsupported"):
        read_image(tmp_path / "image.bmp")
    with pytest.raises(ImageIOError, match=r"seg\.png"):
        write_labels(tmp_path / "seg.png", _labels((4, 4)))
    with pytest.raises(ImageIOError, match="does not exist"):
        write_labels(tmp_path / "no" / "such" / "seg.tif", _labels((4, 4)))


def test_corrupt_nifti(tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    with pytest.raises(ImageIOError, match="broken.nii.gz"):
        read_image(tmp_path / "broken.nii.gz")


def test_write_labels_checks_the_array(tmp_path):
    mask = np.zeros((6, 7), dtype=bool)
    mask[2:4, 3:5] = True
    data, _ = read_image(write_labels(tmp_path / "mask.tif", mask))
    assert data.dtype == np.uint8 and data.sum() == 4
    with pytest.raises(ImageError, match="integer"):
        write_labels(tmp_path / "f.tif", np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ImageError, match="2D"):
        write_labels(tmp_path / "f.tif", np.zeros((2, 2, 2, 2), dtype=np.int32))
    with pytest.raises(ImageError):
        write_labels(tmp_path / "f.tif", np.zeros((4, 4), np.int32), ImageMeta((1, 1, 1), "zyx"))


def test_supported_extensions():
    assert {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".zarr", ".ome.zarr", ".nii",
            ".nii.gz"} <= set(SUPPORTED_READ)
    assert {".tif", ".tiff", ".nii", ".nii.gz", ".zarr", ".ome.zarr"} <= set(SUPPORTED_WRITE)


def test_read_pyramid_levels_lazily(tmp_path):
    from promptseg.io import pyramid_levels, read_pyramid

    rng = np.random.default_rng(0)
    full = rng.integers(0, 255, (1000, 900, 3), dtype=np.uint8)
    path = tmp_path / "p.ome.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(full, subifds=2, tile=(128, 128), photometric="rgb", resolution=(2.0, 2.0), resolutionunit="MICROMETER")
        tw.write(full[::2, ::2], subfiletype=1, tile=(128, 128), photometric="rgb")
        tw.write(full[::4, ::4], subfiletype=1, tile=(128, 128), photometric="rgb")
    assert pyramid_levels(path) == 3
    levels, meta = read_pyramid(path)
    assert [lv.shape for lv in levels] == [(1000, 900, 3), (500, 450, 3), (250, 225, 3)]
    assert not isinstance(levels[0], np.ndarray)  # lazy: read where indexed
    np.testing.assert_array_equal(np.asarray(levels[1][10:60, 20:90]), full[::2, ::2][10:60, 20:90])
    assert meta.axes == "yxc" and meta.extra["levels"][2] == (250, 225, 3)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, full[:, :, 0])
    assert pyramid_levels(plain) == 1 and len(read_pyramid(plain)[0]) == 1
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, rng.integers(0, 255, (5, 32, 32), dtype=np.uint8), photometric="minisblack")
    with pytest.raises(ImageIOError, match="2D or RGB"):
        read_pyramid(stack)
    with pytest.raises(ImageIOError, match="no such file"):
        read_pyramid(tmp_path / "missing.svs")


def test_read_an_aperio_svs_pyramid(tmp_path):
    from promptseg.io import read_pyramid

    full = np.random.default_rng(1).integers(0, 255, (1000, 900, 3), dtype=np.uint8)
    head = "Aperio Image Library v12.0.15\r\n"
    path = tmp_path / "slide.svs"
    with tifffile.TiffWriter(path) as tw:  # baseline, thumbnail, then the reduced levels, as Aperio writes them
        kw = dict(photometric="rgb", metadata=None)
        tw.write(full, tile=(256, 256), description=head + "900x1000 (256x256)|AppMag = 20|MPP = 0.4990", **kw)
        tw.write(full[::8, ::8], description=head + "thumbnail", **kw)
        tw.write(full[::4, ::4], tile=(256, 256), description=head + "level", **kw)
    levels, meta = read_pyramid(path)
    assert [lv.shape for lv in levels] == [(1000, 900, 3), (250, 225, 3)]
    assert meta.spacing == (0.499, 0.499) and meta.unit == "micrometer"
    np.testing.assert_array_equal(np.asarray(levels[1][5:50, 7:70]), full[::4, ::4][5:50, 7:70])
