"""Tests of the napari plugin's manifest, readers, writer and sample data, in a real napari."""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
nib = pytest.importorskip("nibabel")

from promptseg.io import read_image, write_labels  # noqa: E402
from promptseg.napari import _hooks  # noqa: E402
from promptseg.project import Project  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "napari.yaml"
SAMPLES = {"ct_lesions": ((48, 192, 192), (2.5, 0.8, 0.8)), "ihc": ((512, 512, 3), (1.0, 1.0)),
           "coins": ((303, 384), (1.0, 1.0)), "large_2d": ((4096, 4096), (0.325, 0.325)),
           "slide": ((20000, 20000, 3), (0.5, 0.5))}


@pytest.fixture
def nifti(tmp_path):
    """A (x, y, z) = (30, 20, 10) int16 NIfTI with an oblique-free, translated affine."""
    rng = np.random.default_rng(1)
    data = rng.integers(-100, 200, size=(30, 20, 10)).astype(np.int16)
    affine = np.array([[-0.8, 0, 0, 12.0], [0, 0.9, 0, -30.0], [0, 0, 2.5, 7.5], [0, 0, 0, 1]])
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return path, data, affine


def test_manifest_is_valid():
    from npe2 import PluginManifest

    mf = PluginManifest.from_file(MANIFEST)  # validates the schema
    assert mf.name == "promptseg" and mf.display_name == "promptseg"
    commands = {c.id: c.python_name for c in mf.contributions.commands}
    assert commands["promptseg.annotator"] == "promptseg.napari._annotator:AnnotatorWidget"
    assert [w.display_name for w in mf.contributions.widgets] == ["promptseg Annotator"]
    assert {s.key for s in mf.contributions.sample_data} == set(SAMPLES)
    assert mf.contributions.writers[0].layer_types == ["labels"]
    for cid, python_name in commands.items():  # every hook of this module imports
        module, attr = python_name.split(":")
        if module == "promptseg.napari._hooks":
            assert callable(getattr(importlib.import_module(module), attr)), cid
    # the manifest inside the package is the one at the repository root
    packaged = ROOT / "src" / "promptseg" / "napari.yaml"
    assert packaged.read_text() == MANIFEST.read_text()


def test_npe2_validate_installed_plugin():
    try:
        importlib.metadata.distribution("promptseg")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("promptseg is not installed (pip install -e .), no entry point to find")
    out = subprocess.run([sys.executable, "-m", "npe2", "validate", "promptseg"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


def test_get_reader_declines_other_paths(tmp_path):
    (tmp_path / "plain.promptseg").mkdir()
    (tmp_path / "x.ome.zarr").write_text("not a folder")
    for path in [tmp_path / "a.tif", tmp_path, tmp_path / "plain.promptseg",
                 tmp_path / "missing.nii.gz", tmp_path / "x.ome.zarr"]:
        assert _hooks.get_reader(str(path)) is None, path
    assert _hooks.get_reader([str(tmp_path / "a.nii"), str(tmp_path / "b.nii")]) is None


def test_open_nifti(make_napari_viewer, nifti):
    path, data, _ = nifti
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="promptseg")
    assert len(layers) == 1
    layer = layers[0]
    assert layer._type_string == "image" and layer.name == "ct"
    assert layer.data.shape == (10, 20, 30)
    np.testing.assert_array_equal(np.asarray(layer.data), data.T)
    np.testing.assert_allclose(layer.scale, (2.5, 0.9, 0.8))
    meta = layer.metadata["promptseg_meta"]
    assert meta.source_format == "nifti" and layer.metadata["promptseg_path"] == str(path)


def test_open_ome_zarr(make_napari_viewer, tmp_path):
    from promptseg.io import ImageMeta

    img = np.arange(6 * 40 * 50, dtype=np.uint16).reshape(6, 40, 50)
    path = tmp_path / "stack.ome.zarr"
    write_labels(path, img, ImageMeta(spacing=(2.0, 0.5, 0.5), axes="zyx", unit="micrometer"))
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="promptseg")
    assert layer._type_string == "image" and layer.name == "stack"
    assert layer.data.shape == (6, 40, 50)
    np.testing.assert_allclose(layer.scale, (2.0, 0.5, 0.5))
    np.testing.assert_array_equal(np.asarray(layer.data[3]), img[3])


def test_open_project(make_napari_viewer, nifti):
    path, data, _ = nifti
    project = Project.for_image(path, shape=(10, 20, 30))
    labels = np.zeros((10, 20, 30), np.int32)
    labels[4, 5:9, 6:12] = 1
    labels[7, 10:15, 20:25] = 2
    project.save_commit(labels, None, {"id": 1, "prompts": {}})
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(project.path), plugin="promptseg")
    assert layer._type_string == "labels" and layer.name == "committed objects"
    np.testing.assert_array_equal(np.asarray(layer.data), labels)
    np.testing.assert_allclose(layer.scale, (2.5, 0.9, 0.8))  # from the project's image
    assert layer.metadata["promptseg_project"] == str(project.path)


def test_open_project_without_image(make_napari_viewer, tmp_path):
    project = Project.for_image(shape=(30, 40), name="coins", root=tmp_path)
    labels = np.zeros((30, 40), np.int32)
    labels[3:6, 3:6] = 5
    project.save_commit(labels, None, {"id": 5, "prompts": {}})
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(project.path), plugin="promptseg")
    np.testing.assert_array_equal(np.asarray(layer.data), labels)
    np.testing.assert_allclose(layer.scale, (1.0, 1.0))


@pytest.mark.parametrize("name", list(SAMPLES))
def test_samples(make_napari_viewer, name):
    shape, spacing = SAMPLES[name]
    viewer = make_napari_viewer()
    layers = viewer.open_sample("promptseg", name)
    assert len(layers) == 1
    layer = layers[0]
    assert layer._type_string == "image" and layer.name == name
    assert layer.multiscale == (name == "slide")
    assert (layer.data[0] if layer.multiscale else layer.data).shape == shape
    assert layer.rgb == (name in ("ihc", "slide"))
    np.testing.assert_allclose(layer.scale, spacing)
    assert layer.metadata["promptseg_sample"] == name
    assert layer.metadata["promptseg_meta"].spacing == spacing


@pytest.mark.parametrize("ext", [".tif", ".nii.gz", ".ome.zarr"])
def test_save_labels_layer(make_napari_viewer, nifti, tmp_path, ext):
    import napari

    path, _, affine = nifti
    image, meta = read_image(path)
    labels = np.zeros(image.shape, np.int32)
    labels[2:5, 3:9, 4:20] = 7
    labels[8, 0, 0] = 3
    viewer = make_napari_viewer()
    layer = viewer.add_labels(labels, scale=meta.spacing, metadata={"promptseg_meta": meta})
    out = tmp_path / f"saved{ext}"
    written = napari.save_layers(str(out), [layer], plugin="promptseg")
    assert written == [str(out)] and out.exists()
    back, back_meta = read_image(out)
    np.testing.assert_array_equal(np.asarray(back), labels)
    np.testing.assert_allclose(back_meta.spacing, (2.5, 0.9, 0.8))
    if ext == ".nii.gz":
        np.testing.assert_allclose(nib.load(out).affine, affine)
        np.testing.assert_allclose(back_meta.affine, meta.affine)


def test_save_with_layers_save_and_no_meta(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    labels = np.zeros((40, 60), np.uint8)
    labels[10:20, 5:50] = 2
    viewer.add_labels(labels, scale=(0.5, 0.25), name="lbl")
    out = tmp_path / "plain.tiff"
    viewer.layers.save(str(out), plugin="promptseg")
    back, back_meta = read_image(out)
    np.testing.assert_array_equal(back, labels)
    np.testing.assert_allclose(back_meta.spacing, (0.5, 0.25))
