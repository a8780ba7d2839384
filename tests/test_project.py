"""Tests of promptseg.project: the autosave folder survives reopening, crashes and kills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from promptseg.errors import CacheError, PromptsegError
from promptseg.project import Project, ProjectError

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_new_project_is_empty(tmp_path):
    image = tmp_path / "ct.nii.gz"
    p = Project.for_image(image, shape=(4, 40, 30))
    assert p.path == tmp_path / "ct.nii.gz.promptseg"
    assert p.path.is_dir() and (p.path / "project.json").is_file()
    labels = p.load_labels()
    assert labels.dtype == np.int32 and labels.shape == (4, 40, 30) and not labels.any()
    assert p.objects == [] and p.shape == (4, 40, 30)
    meta = json.loads((p.path / "project.json").read_text())
    assert meta["format"] == 1 and meta["shape"] == [4, 40, 30]
    assert meta["image"] == {"path": str(image), "name": "ct.nii.gz"}
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]  # no temp folder left
    assert issubclass(ProjectError, CacheError) and issubclass(ProjectError, PromptsegError)


def test_chunks(tmp_path):
    import zarr

    p3 = Project.for_image(tmp_path / "a.tif", shape=(3, 600, 300))
    assert zarr.open_array(p3.path / "labels.zarr").chunks == (1, 512, 300)
    p2 = Project.for_image(tmp_path / "b.tif", shape=(2000, 700))
    assert zarr.open_array(p2.path / "labels.zarr").chunks == (1024, 700)


def test_commit_then_reopen(tmp_path):
    image = tmp_path / "cells.tif"
    p = Project.for_image(image, shape=(3, 600, 700))
    labels = np.zeros((3, 600, 700), np.int32)
    labels[1, 500:560, 600:650] = 1  # crosses the chunk border at y=512
    bbox = (slice(1, 2), slice(500, 560), slice(600, 650))
    p.save_commit(labels, bbox, {"id": 1, "prompts": {"points": [[1, 520, 610]],
                                                      "labels": np.array([1])}})
    labels[2, 10:20, 10:20] = 2
    p.save_commit(labels, (slice(2, 3), slice(10, 20), slice(10, 20)),
                  {"id": np.int64(2), "prompts": {"box": [2, 10, 10, 2, 20, 20]}, "score": np.float32(0.5)})
    q = Project.for_image(image, shape=(3, 600, 700))
    np.testing.assert_array_equal(q.load_labels(), labels)
    assert [o["id"] for o in q.objects] == [1, 2]
    assert q.objects[0]["prompts"] == {"points": [[1, 520, 610]], "labels": [1]}
    assert q.objects[1]["score"] == 0.5 and "time" in q.objects[1]
    assert q.objects == p.objects

    # hand edits and removal
    labels[labels == 1] = 0
    q.save_labels(labels, bbox)
    q.remove_object(1)
    r = Project.open(q.path)
    np.testing.assert_array_equal(r.load_labels(), labels)
    assert [o["id"] for o in r.objects] == [2]
    labels[:] = 0
    r.save_labels(labels)  # whole array
    assert not Project.open(q.path).load_labels().any()


def test_only_touched_chunks_are_written(tmp_path):
    p = Project.for_image(tmp_path / "x.tif", shape=(2, 1100, 1100))
    labels = np.zeros(p.shape, np.int32)
    labels[0, 1050:1060, 5:10] = 3
    store = p.path / "labels.zarr"
    p.save_commit(labels, (slice(0, 1), slice(1050, 1060), slice(5, 10)), {"id": 3})
    chunk_files = {f.relative_to(store) for f in store.rglob("*") if f.is_file()
                   and f.name != "zarr.json"}
    assert chunk_files == {Path("c/0/2/0")}
    assert Project.open(p.path).load_labels()[0, 1050:1060, 5:10].min() == 3


def test_shape_mismatch(tmp_path):
    Project.for_image(tmp_path / "img.tif", shape=(10, 20))
    with pytest.raises(ProjectError) as info:
        Project.for_image(tmp_path / "img.tif", shape=(10, 21))
    msg = str(info.value)
    assert "img.tif.promptseg" in msg and "(10, 20)" in msg and "(10, 21)" in msg
    assert "\n" not in msg
    p = Project.open(tmp_path / "img.tif.promptseg")
    with pytest.raises(ProjectError):
        p.save_labels(np.zeros((10, 21), np.int32))


def test_not_a_project(tmp_path):
    with pytest.raises(ProjectError, match="not a promptseg project"):
        Project.open(tmp_path)
    (tmp_path / "bad.promptseg").mkdir()
    (tmp_path / "bad.promptseg" / "project.json").write_text("{not json")
    with pytest.raises(ProjectError):
        Project.open(tmp_path / "bad.promptseg")
    with pytest.raises(ProjectError):
        Project.for_image(shape=(5, 5))  # neither path nor name
    with pytest.raises(ProjectError):
        Project.for_image(shape=(5,), name="x", root=tmp_path)


def test_bad_record_writes_nothing(tmp_path):
    p = Project.for_image(tmp_path / "a.png", shape=(8, 8))
    labels = np.ones((8, 8), np.int32)
    with pytest.raises(ProjectError):
        p.save_commit(labels, None, {"prompts": {}})  # no id
    with pytest.raises(ProjectError):
        p.save_commit(labels, None, {"id": 1, "prompts": {"x": object()}})
    assert not p.load_labels().any() and p.objects == []


def test_json_never_half_written(tmp_path, monkeypatch):
    p = Project.for_image(tmp_path / "a.tif", shape=(16, 16))
    labels = np.zeros((16, 16), np.int32)
    labels[2:4, 2:4] = 1
    p.save_commit(labels, None, {"id": 1, "prompts": {"points": [[3, 3]]}})
    before = (p.path / "project.json").read_bytes()

    def broken_dump(obj, f, **kwargs):  # writes half of the file, then fails
        text = json.dumps(obj, **kwargs)
        f.write(text[: len(text) // 2])
        f.flush()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", broken_dump)
    labels[8:10, 8:10] = 2
    with pytest.raises(ProjectError, match="No space left"):
        p.save_commit(labels, None, {"id": 2, "prompts": {"points": [[9, 9]]}})
    monkeypatch.undo()
    assert (p.path / "project.json").read_bytes() == before
    assert [f.name for f in p.path.iterdir() if f.name.startswith(".")] == []
    assert [o["id"] for o in Project.open(p.path).objects] == [1]
    assert [o["id"] for o in p.objects] == [1]


def test_pathless_image_goes_under_root(tmp_path, monkeypatch):
    p = Project.for_image(shape=(48, 64, 64), name="ct_lesions", root=tmp_path / "r")
    assert p.path == tmp_path / "r" / "ct_lesions.promptseg"
    assert json.loads((p.path / "project.json").read_text())["image"] == {
        "path": None, "name": "ct_lesions"}
    monkeypatch.setenv("PROMPTSEG_CACHE", str(tmp_path / "cache"))
    q = Project.for_image(shape=(10, 10), name="coins")
    assert q.path == tmp_path / "cache" / "projects" / "coins.promptseg"
    with pytest.raises(ProjectError):
        Project.for_image(shape=(10, 10), name="../escape", root=tmp_path)


def test_embeddings_path(tmp_path):
    p = Project.for_image(tmp_path / "a.tif", shape=(4, 4))
    assert p.embeddings_path("sam_vit_b") == p.path / "embeddings-sam_vit_b.zarr"
    assert not p.embeddings_path("sam_vit_b").exists()


_WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    from promptseg.project import Project

    p = Project.for_image(sys.argv[1], shape=(6, 700, 700))
    labels = p.load_labels()
    rng = np.random.default_rng(0)
    for i in range(1, 100000):
        z, y, x = int(rng.integers(0, 6)), int(rng.integers(0, 640)), int(rng.integers(0, 640))
        bbox = (slice(z, z + 1), slice(y, y + 60), slice(x, x + 60))
        labels[bbox] = i  # later objects may cover earlier ones: keep a visible pixel per id
        labels[z, y, x] = i
        p.save_commit(labels, bbox, {"id": i, "prompts": {"points": [[z, y, x]]}})
        print(i, flush=True)
""")


def test_killed_mid_run_keeps_committed_objects(tmp_path):
    image = tmp_path / "vol.tif"
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(image)], stdout=subprocess.PIPE,
                            env=env, text=True)
    try:
        done = 0
        deadline = time.monotonic() + 60
        while done < 40 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            done = int(line)
        assert done >= 40, "the worker did not commit"
        time.sleep(0.013)  # land somewhere inside a commit
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    p = Project.for_image(image, shape=(6, 700, 700))
    json.loads((p.path / "project.json").read_text())  # readable
    ids = [o["id"] for o in p.objects]
    assert len(ids) >= done and ids == list(range(1, len(ids) + 1))
    present = set(np.unique(p.load_labels()).tolist())
    assert set(ids) <= present
    assert max(present) <= len(ids) + 1  # at most the object being committed is unlisted
    # and the work goes on
    labels = p.load_labels()
    labels[0, :5, :5] = 10**6
    p.save_commit(labels, (slice(0, 1), slice(0, 5), slice(0, 5)), {"id": 10**6})
    assert Project.open(p.path).objects[-1]["id"] == 10**6
