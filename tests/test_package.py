"""Package-level promises: layers, headless import, shipped weights."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_hold():
    """Only promptseg.napari may import Qt/napari/magicgui; promptseg.io needs no torch."""
    lint = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], capture_output=True, text=True, cwd=ROOT,
                       env={"PYTHONPATH": str(ROOT / "src"), "PATH": str(Path(sys.executable).parent)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "KEPT" in r.stdout and "BROKEN" not in r.stdout


def test_import_promptseg_headless_loads_no_gui():
    code = ("import sys, promptseg, promptseg.io, promptseg.cli; "
            "bad = [m for m in ('napari', 'magicgui', 'qtpy', 'PyQt5', 'PyQt6', 'PySide6') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"PYTHONPATH": str(ROOT / "src"), "DISPLAY": "", "QT_QPA_PLATFORM": ""})
    assert r.returncode == 0, r.stdout + r.stderr


def test_shipped_weights_match_sha256sums():
    lines = (ROOT / "weights" / "SHA256SUMS").read_text().split("\n")
    entries = [line.split() for line in lines if line.strip()]
    assert entries
    for digest, name in entries:
        path = ROOT / "weights" / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, name
        assert path.stat().st_size < 25 * 2**20


def test_default_model_is_the_shipped_file(tmp_path, monkeypatch):
    import promptseg as ps
    from promptseg.models.registry import get_spec

    monkeypatch.setenv("PROMPTSEG_CACHE", str(tmp_path))  # an empty cache: nothing to find there
    model = ps.load_model("default", device="cpu")
    spec = get_spec("default")
    assert model.checkpoint == ROOT / "weights" / spec.shipped and model.spec == spec
    assert list(tmp_path.iterdir()) == []
