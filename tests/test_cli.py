"""The promptseg command: help texts, embed, segment, models; one-line errors with exit status 2."""

from __future__ import annotations

import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from promptseg.cli import main


@pytest.mark.parametrize("cmd", [[], ["models"], ["embed"], ["segment"]])
def test_help_explains_each_command(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main(cmd + ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: promptseg" in out and len(out.splitlines()) > 5


def test_models_list_shows_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("default", "sam_vit_b", "sam_vit_l", "sam_vit_h", "medsam_vit_b"):
        assert name in out
    assert "shipped" in out and "cache folder" in out


def test_models_verify(tmp_path, small_sam, capsys):
    _, ckpt = small_sam
    assert main(["models", "verify", ckpt]) == 0
    assert "readable checkpoint" in capsys.readouterr().out
    assert main(["models", "verify", ckpt, "--model", "sam_vit_b"]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    bad = tmp_path / "trunc.pth"
    bad.write_bytes(open(ckpt, "rb").read()[:1000])
    assert main(["models", "verify", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("promptseg: error:") and "trunc.pth" in err and len(err.strip().splitlines()) == 1


def test_segment_sample_writes_mask_and_overlay(tmp_path, capsys):
    out, png = tmp_path / "mask.tif", tmp_path / "overlay.png"
    assert main(["segment", "sample:coins", "--point", "124,205", "-o", str(out), "--overlay", str(png), "--device", "cpu"]) == 0
    mask = tifffile.imread(out)
    assert mask.shape == (303, 384) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    rgb = iio.imread(png)
    assert rgb.shape == (303, 384, 3)
    assert "mask:" in capsys.readouterr().out


def test_segment_box_and_negative_on_a_tiff(tmp_path, small_sam):
    _, ckpt = small_sam
    img = np.zeros((120, 160), np.uint16)
    img[30:90, 40:120] = 3000
    src = tmp_path / "img.tif"
    tifffile.imwrite(src, img)
    cache = tmp_path / "img.zarr"
    out = tmp_path / "m.tif"
    args = ["segment", str(src), "--box", "30,40,90,120", "--negative", "60,80", "-o", str(out),
            "--model", "test_small", "--checkpoint", ckpt, "--cache", str(cache)]
    assert main(args) == 0
    assert tifffile.imread(out).shape == (120, 160) and (cache / "zarr.json").exists()
    assert main(args) == 0  # the cache is reused


def test_embed_volume_then_segment_3d(tmp_path, small_sam):
    _, ckpt = small_sam
    vol = np.zeros((4, 64, 64), np.uint8)
    vol[:, 16:48, 16:48] = 200
    src = tmp_path / "vol.tif"
    tifffile.imwrite(src, vol, photometric="minisblack")
    cache = tmp_path / "vol.zarr"
    common = ["--model", "test_small", "--checkpoint", ckpt]
    assert main(["embed", str(src), "-o", str(cache)] + common) == 0
    out = tmp_path / "m.tif"
    assert main(["segment", str(src), "--point", "2,32,32", "--cache", str(cache), "-o", str(out),
                 "--overlay", str(tmp_path / "o.png")] + common) == 0
    mask = tifffile.imread(out)
    assert mask.shape == (4, 64, 64) and not mask[[0, 1, 3]].any()
    assert iio.imread(tmp_path / "o.png").shape == (64, 64, 3)


@pytest.mark.parametrize(
    "args, match",
    [
        (["segment", "sample:coins", "-o", "x.tif"], "at least one prompt"),
        (["segment", "sample:coins", "--point", "500,10", "-o", "x.tif"], "outside the image"),
        (["segment", "sample:nope", "--point", "5,5", "-o", "x.tif"], "nope"),
        (["segment", "missing.tif", "--point", "5,5", "-o", "x.tif"], "missing.tif"),
        (["embed", "sample:coins", "-o", "c.zarr", "--model", "sam_vit_q"], "unknown model"),
        (["embed", "sample:coins", "-o", "c.zarr", "--device", "cuda"], "CUDA is not available"),
    ],
)
def test_bad_input_gives_one_line_error(args, match, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("promptseg: error:") and match in err and "\n" not in err
    assert not (tmp_path / "x.tif").exists() and not (tmp_path / "c.zarr").exists()


def test_console_script_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "promptseg.cli", "models", "list"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "sam_vit_h" in r.stdout


def test_embed_a_folder_on_dask_threads(tmp_path, capsys):
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(3):
        tifffile.imwrite(src / f"im{i}.tif", np.full((20, 30), 40 * i, np.uint8))
    (src / "notes.txt").write_text("not an image")
    assert main(["embed", str(src), "-o", str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["im0.zarr", "im1.zarr", "im2.zarr"]
    assert "3 image(s) embedded" in capsys.readouterr().out


def test_embed_and_segment_a_pyramidal_slide(tmp_path, capsys):
    from promptseg.slide import SyntheticSlide

    slide = SyntheticSlide((1600, 1500), density=0, extra=[(800, 700, 90, 70, 0.3)])
    full = slide.region(0, 1600, 0, 1500)[0]
    path = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(full, subifds=1, tile=(256, 256), photometric="rgb")
        tw.write(full[::2, ::2], subfiletype=1, tile=(256, 256), photometric="rgb")
    assert main(["embed", str(path), "-o", str(tmp_path / "e.zarr"), "--level", "1", "--tile", "256"]) == 0
    assert "16 tile(s) embedded" in capsys.readouterr().out
    out = tmp_path / "mask.tif"
    assert main(["segment", str(path), "--point", "800,700", "-o", str(out), "--level", "1", "--tile", "256",
                 "--cache", str(tmp_path / "e.zarr")]) == 0
    mask = tifffile.imread(out) > 0
    truth = slide.labels(0, 1600, 0, 1500) > 0
    assert mask.shape == (1600, 1500) and 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.9
    assert main(["embed", str(path), "-o", str(tmp_path / "f.zarr"), "--level", "4"]) == 2
    assert "level 4 does not exist" in capsys.readouterr().err


def test_bench_prints_ratios_against_segment_anything(tmp_path, capsys):
    import json

    out = tmp_path / "bench.json"
    assert main(["bench", "--arch", "tiny", "--images", "1", "--clicks", "3", "--size", "256", "--no-micro-sam",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "encoder ms / image" in text and "decoder ms / click" in text and "ratio" in text
    info = json.loads(out.read_text())
    (enc, dec, corr) = info["rows"][:3]
    assert float(enc[4].split()[-1]) > 0.999  # embeddings agree with SamPredictor's
    assert float(dec[4].split()[-1]) > 0.999  # and so do the masks, on a first click
    assert corr[0] == "decoder ms / correction click" and float(corr[4].split()[-1]) > 0.999  # and a second one
    assert all(v > 0 for v in enc[1:4] + dec[1:4] + corr[1:4])


def test_evaluate_a_sample_with_and_without_zoom_and_edges(tmp_path, capsys):
    import json

    reports = {}
    for z, e in (("off", "auto"), ("on", "auto"), ("on", "off")):
        out = tmp_path / f"report_{z}_{e}.json"
        assert main(["evaluate", "sample:ct_lesions", "--modality", "ct", "--start", "box", "--clicks", "2",
                     "--zoom", z, "--edges", e, "-o", str(out), "--device", "cpu"]) == 0
        reports[z, e] = json.loads(out.read_text())
        assert "3 objects, box start" in capsys.readouterr().out
    for r in reports.values():
        assert r["n_objects"] == 3 and len(r["mean"]["dice"]) == 3
    dice = {k: r["mean"]["dice"] for k, r in reports.items()}
    assert dice["on", "auto"] != dice["off", "auto"]  # the windows change the masks
    assert dice["on", "auto"] != dice["on", "off"]  # and so does the shipped model's edge refiner
    assert all(r["click_rule"] == "area" for r in reports.values())
    out = tmp_path / "ritm.json"
    assert main(["evaluate", "sample:ct_lesions", "--modality", "ct", "--start", "box", "--clicks", "2",
                 "--click-rule", "ritm", "-o", str(out), "--device", "cpu"]) == 0
    ritm = json.loads(out.read_text())
    assert ritm["click_rule"] == "ritm" and ritm["n_objects"] == 3
    assert [o["area"] for o in ritm["objects"]] == [o["area"] for o in reports["on", "auto"]["objects"]]
    out = tmp_path / "region.json"
    assert main(["evaluate", "sample:ct_lesions", "--modality", "ct", "--start", "box", "--clicks", "2",
                 "--click-rule", "region", "-o", str(out), "--device", "cpu"]) == 0
    assert json.loads(out.read_text())["click_rule"] == "region"
