"""Bundled sample images: shapes, dtypes, metadata, ground truth, determinism, import hygiene."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from promptseg.errors import PromptsegError
from promptseg.samples import SAMPLES, load_sample, sample_ground_truth


@pytest.mark.parametrize(
    ("name", "shape", "axes"),
    [("coins", (303, 384), "yx"), ("cell", (660, 550), "yx"), ("ihc", (512, 512, 3), "yxc"),
     ("camera", (512, 512), "yx")],
)
def test_natural_samples(name, shape, axes):
    image, meta = load_sample(name)
    assert image.shape == shape and image.dtype == np.uint8
    assert meta.axes == axes and meta.spacing == (1.0, 1.0) and meta.source_format == "sample"
    assert meta.rgb == (axes == "yxc")
    assert sample_ground_truth(name) is None
    assert name in SAMPLES and SAMPLES[name]


def test_ct_lesions():
    image, meta = load_sample("ct_lesions")
    assert image.shape == (48, 192, 192) and image.dtype == np.int16
    assert meta.axes == "zyx" and meta.spacing == (2.5, 0.8, 0.8) and meta.unit == "mm"
    np.testing.assert_array_equal(meta.affine, np.diag([2.5, 0.8, 0.8, 1.0]))
    assert abs(image[:, :8, :8].mean() + 1000) < 10  # air in the corners, in Hounsfield units

    truth = sample_ground_truth("ct_lesions")
    assert truth.shape == image.shape and truth.dtype == np.int32
    assert set(np.unique(truth)) == {0, 1, 2, 3}
    for label in (1, 2, 3):
        lesion = truth == label
        assert ndimage.label(lesion)[1] == 1 and lesion.sum() > 100  # one connected blob
        assert 15 <= image[lesion].mean() <= 35  # hypodense
        # every lesion lies inside the organ: the shell around it is liver (~ +60 HU)
        shell = ndimage.binary_dilation(lesion, iterations=2) & (truth == 0)
        assert 50 <= image[shell].mean() <= 70
        assert (image[shell] > -200).all()  # no air or fat next to a lesion

    again, _ = load_sample("ct_lesions")
    np.testing.assert_array_equal(again, image)
    np.testing.assert_array_equal(sample_ground_truth("ct_lesions"), truth)


def test_large_2d():
    image, meta = load_sample("large_2d")
    assert image.shape == (4096, 4096) and image.dtype == np.uint16 and meta.axes == "yx"
    truth = sample_ground_truth("large_2d")
    assert truth.shape == image.shape and truth.dtype == np.int32
    assert truth.max() > 1000  # many nuclei
    assert image[truth > 0].mean() > 3 * image[truth == 0].mean()  # bright nuclei, dark background
    np.testing.assert_array_equal(load_sample("large_2d")[0], image)


def test_unknown_sample():
    with pytest.raises(PromptsegError, match="coins"):
        load_sample("no-such-sample")
    with pytest.raises(PromptsegError, match="ct_lesions"):
        sample_ground_truth("no-such-sample")


def test_io_and_samples_need_no_torch_or_napari():
    code = ("import sys, promptseg.io, promptseg.samples\n"
            "promptseg.samples.load_sample('coins')\n"
            "bad = {'torch', 'segment_anything', 'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide6'}\n"
            "print(sorted(bad & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"
