"""Model registry, checkpoint files, downloads and devices, as a user meets them.

No test here touches the network beyond 127.0.0.1 (an autouse guard refuses any other connection), and no
test builds a ViT-B/L/H: wrong-architecture files are written by hand.
"""

from __future__ import annotations

import http.server
import re
import socket
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import promptseg as ps
from promptseg.models import registry, resolve_device
from promptseg.models.build import build_sam
from promptseg.models.checkpoints import sha256sum, weights_dir
from promptseg.models.model import PromptModel

from conftest import make_checkpoint

DEFAULT = registry.get_spec("default")  # the shipped model behind the alias


def _default_like(path, seed: int) -> str:
    """Other random weights of the default's architecture, saved as a plain state dict."""
    torch.manual_seed(seed)
    sam = build_sam(DEFAULT.arch, image_size=DEFAULT.input_size, **DEFAULT.arch_kwargs)
    torch.save(sam.state_dict(), path)
    return str(path)

SAM_MODELS = ("sam_vit_b", "sam_vit_l", "sam_vit_h")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


# -- guards ------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def no_remote_network(monkeypatch):
    """Refuse every socket connection that is not to this machine."""
    real_connect = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in LOCAL_HOSTS:
            raise AssertionError(f"test tried to reach the network: {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty PROMPTSEG_CACHE folder."""
    folder = tmp_path / "cache"
    folder.mkdir()
    monkeypatch.setenv("PROMPTSEG_CACHE", str(folder))
    return folder


@pytest.fixture
def forbid_download(monkeypatch):
    """Make any use of pooch or requests fail loudly."""
    import pooch
    import requests

    def boom(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(pooch, "retrieve", boom)
    monkeypatch.setattr(requests.Session, "request", boom)
    monkeypatch.setattr(requests, "get", boom)


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in Path(folder).rglob("*")}


def _same_weights(sam, state: dict) -> bool:
    own = sam.state_dict()
    return set(own) == set(state) and all(torch.equal(own[k], state[k]) for k in own)


# -- registry ----------------------------------------------------------------------------------------
def test_default_loads_shipped_weights_offline(cache, forbid_download):
    model = ps.load_model("default", device="cpu")
    shipped = weights_dir() / DEFAULT.shipped
    assert model.checkpoint == shipped
    assert model.device == torch.device("cpu")
    assert next(model.sam.parameters()).device.type == "cpu"
    assert _same_weights(model.sam, torch.load(shipped, map_location="cpu", weights_only=True))
    assert _files(cache) == set(), "loading the shipped default must not write to the cache"
    # the model actually runs: one input-sized image -> (1, C, g, g), as its prompt encoder expects
    size = model.input_size
    out = model.encode([np.zeros((size, size, 3), np.uint8)])
    pe = model.sam.prompt_encoder
    assert tuple(out.shape) == (1, pe.embed_dim, *pe.image_embedding_size)


def test_registry_lists_models_with_urls_hashes_and_licences():
    names = ps.list_models()
    for name in ("default", *SAM_MODELS, "medsam_vit_b"):
        assert name in names
    hashes = set()
    for name in SAM_MODELS:
        spec = registry.get_spec(name)
        assert spec.url.startswith("https://") and spec.url.endswith(spec.filename)
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256), spec.sha256
        assert spec.licence
        assert spec.arch == name.removeprefix("sam_")
        hashes.add(spec.sha256)
    assert len(hashes) == 3
    med = registry.get_spec("medsam_vit_b")
    assert med.url is None and med.arch == "vit_b" and med.resize == "square"
    assert registry.get_spec("default").shipped


def test_unknown_model_lists_known_names(cache, forbid_download):
    with pytest.raises(ps.UnknownModelError) as exc:
        ps.load_model("sam_vit_x")
    msg = str(exc.value)
    assert "'sam_vit_x'" in msg
    for name in ("default", *SAM_MODELS, "medsam_vit_b"):
        assert name in msg
    assert isinstance(exc.value, ps.ModelError) and isinstance(exc.value, KeyError)


# -- checkpoint formats ------------------------------------------------------------------------------
@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict"])
def test_official_and_wrapped_state_dicts_load(tmp_path, cache, forbid_download, wrap):
    torch.manual_seed(11)
    sam = build_sam(DEFAULT.arch, image_size=DEFAULT.input_size, **DEFAULT.arch_kwargs)
    state = sam.state_dict()  # as segment-anything saves it: torch.save(sam.state_dict())
    obj = state if wrap == "plain" else {wrap: state, "epoch": 3}
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    model = ps.load_model("default", checkpoint=path, device="cpu")
    assert model.checkpoint == path
    assert _same_weights(model.sam, state)


def test_small_checkpoint_loaded_as_default_names_file_and_architecture(small_sam, cache):
    _, path = small_sam
    with pytest.raises(ps.CheckpointError) as exc:
        ps.load_model("default", checkpoint=path, device="cpu")
    msg = str(exc.value)
    assert str(path) in msg
    assert DEFAULT.name in msg and f"architecture {DEFAULT.arch}" in msg
    assert "wrongly shaped" in msg


def test_vit_b_shaped_checkpoint_gets_a_hint(tmp_path, cache):
    # what guess_arch looks at: the patch embedding width and the number of attention blocks
    state = {"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}
    for i in range(12):
        state[f"image_encoder.blocks.{i}.attn.qkv.weight"] = torch.zeros(3 * 768, 1)
    path = tmp_path / "sam_vit_b_like.pth"
    torch.save(state, path)
    with pytest.raises(ps.CheckpointError) as exc:
        ps.load_model("default", checkpoint=path, device="cpu")
    msg = str(exc.value)
    assert str(path) in msg
    assert "looks like a vit_b checkpoint" in msg
    assert f"architecture {DEFAULT.arch}" in msg


def _bad_file(kind: str, folder: Path, good: str) -> Path:
    path = folder / f"{kind}.pth"
    if kind == "truncated":
        data = Path(good).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "not_a_state_dict":
        torch.save([1, 2, 3], path)
    return path  # "missing": never written


@pytest.mark.parametrize("kind", ["truncated", "random", "empty", "not_a_state_dict", "missing"])
def test_unreadable_checkpoint_names_the_path_and_writes_nothing(small_sam, tmp_path, cache, forbid_download, kind):
    _, good = small_sam
    folder = tmp_path / "files"
    folder.mkdir()
    path = _bad_file(kind, folder, good)
    before = _files(folder)
    with pytest.raises(ps.CheckpointError) as exc:
        ps.load_model("test_small", checkpoint=path, device="cpu")
    msg = str(exc.value)
    assert str(path) in msg
    if kind == "missing":
        assert "does not exist" in msg
    elif kind == "not_a_state_dict":
        assert "no state dict" in msg
    else:
        assert "not a readable torch checkpoint" in msg
    assert _files(folder) == before
    assert _files(cache) == set()


# -- downloads from a local server -------------------------------------------------------------------
class _Server:
    def __init__(self, root: Path):
        hits: list[str] = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                hits.append(self.path)
                super().do_GET()

            def do_HEAD(self):
                hits.append("HEAD " + self.path)
                super().do_HEAD()

            def log_message(self, *args):
                pass

        self.hits = hits
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A local HTTP server with one small official-format checkpoint; yields (server, file name, sha256)."""
    root = tmp_path_factory.mktemp("www")
    name = "test_dl.pth"
    make_checkpoint(root / name, seed=5)
    with _Server(root) as server:
        yield server, name, sha256sum(root / name)


@pytest.fixture
def dl_spec():
    """Register a download-only model (unregistered afterwards); call with url and sha256."""
    names = []

    def make(url, sha256, name="test_dl"):
        spec = ps.ModelSpec(name, "tiny", "test_dl.pth", url=url, sha256=sha256, licence="Apache-2.0")
        registry.register_model(spec, overwrite=True)
        names.append(name)
        return spec

    yield make
    for name in names:
        registry.unregister_model(name)


def test_download_good_hash_caches_and_is_not_fetched_again(served, cache, dl_spec):
    server, name, sha = served
    dl_spec(server.url + name, sha)
    n0 = len(server.hits)
    model = ps.load_model("test_dl", device="cpu")
    assert model.checkpoint == cache / name
    assert (cache / name).is_file() and sha256sum(cache / name) == sha
    assert _files(cache) == {name}, "no temporary file may be left next to the download"
    fetched = [h for h in server.hits[n0:] if h.endswith(name)]
    assert len(fetched) == 1
    assert _same_weights(model.sam, torch.load(cache / name, weights_only=True))

    n1 = len(server.hits)
    again = ps.load_model("test_dl", device="cpu")
    assert len(server.hits) == n1, "the cached, verified file must not be downloaded again"
    assert again.fingerprint == model.fingerprint
    # and with downloading off, the cached file is still found
    assert ps.load_model("test_dl", device="cpu", allow_download=False).checkpoint == cache / name


def test_download_bad_hash_leaves_nothing_in_cache(served, cache, dl_spec):
    server, name, _ = served
    dl_spec(server.url + name, "0" * 64)
    n0 = len(server.hits)
    with pytest.raises(ps.HashMismatchError) as exc:
        ps.load_model("test_dl", device="cpu")
    assert len(server.hits) > n0, "the server was not asked"
    assert "SHA256" in str(exc.value) and "test_dl" in str(exc.value)
    assert not (cache / name).exists()
    assert _files(cache) == set(), f"stray files after a failed download: {_files(cache)}"


def test_cached_file_with_wrong_hash_is_not_used(served, cache, dl_spec):
    server, name, sha = served
    dl_spec(server.url + name, "0" * 64)
    (cache / name).write_bytes(b"not the model")
    with pytest.raises(ps.HashMismatchError):
        ps.load_model("test_dl", device="cpu")


def test_download_server_down_says_where_to_put_the_file(cache, dl_spec):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/test_dl.pth"
    dl_spec(url, "a" * 64)
    with pytest.raises(ps.DownloadError) as exc:
        ps.load_model("test_dl", device="cpu")
    msg = str(exc.value)
    assert "could not download" in msg
    assert url in msg
    assert "test_dl.pth" in msg and str(cache) in msg
    assert _files(cache) == set()


def test_model_without_url_asks_for_the_path(cache, forbid_download):
    with pytest.raises(ps.DownloadError) as exc:
        ps.load_model("medsam_vit_b", device="cpu")
    msg = str(exc.value)
    assert "medsam_vit_b.pth" in msg
    assert "pass its path" in msg and "checkpoint=" in msg
    assert str(cache) in msg


def test_download_off_and_file_missing(cache, forbid_download):
    with pytest.raises(ps.DownloadError) as exc:
        ps.load_model("sam_vit_b", device="cpu", allow_download=False)
    msg = str(exc.value)
    assert "sam_vit_b_01ec64.pth" in msg and str(cache) in msg and "downloading is off" in msg


# -- devices -----------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_machine_is_a_clear_error(cache, forbid_download):
    with pytest.raises(ps.ModelError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ps.ModelError, match="CUDA is not available"):
        ps.load_model("default", device="cuda:0")


@pytest.mark.skipif(
    torch.cuda.is_available() or (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()),
    reason="auto picks an accelerator here",
)
def test_auto_device_is_cpu_here():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")


def test_unknown_device_name():
    with pytest.raises(ps.ModelError, match="unknown device 'gpu'"):
        resolve_device("gpu")


# -- fingerprint -------------------------------------------------------------------------------------
def test_fingerprint_tracks_weights_and_normalisation(default_model, small_sam, tmp_path, cache):
    small, _ = small_sam
    fp = default_model.fingerprint
    assert re.fullmatch(r"[0-9a-f]{32}", fp)
    # stable: the same file loaded again, and recomputed from scratch
    again = ps.load_model("default", checkpoint=weights_dir() / DEFAULT.shipped, device="cpu")
    assert again.fingerprint == fp
    assert PromptModel(again.sam, again.spec, again.device).fingerprint == fp
    # other weights of the same architecture, another architecture, another normalisation
    other = ps.load_model("default", checkpoint=_default_like(tmp_path / "other.pth", seed=1), device="cpu")
    assert other.fingerprint != fp
    assert small.fingerprint not in (fp, other.fingerprint)
    renorm = PromptModel(again.sam, replace(again.spec, pixel_mean=(0.0, 0.0, 0.0)), again.device)
    assert renorm.fingerprint != fp


def test_checkpoint_with_a_broken_edge_refiner_names_the_file(tmp_path, cache):
    # a shipped-style checkpoint whose refiner lost a tensor (a bad hand edit, a partial save)
    sam = build_sam(DEFAULT.arch, image_size=DEFAULT.input_size, **DEFAULT.arch_kwargs)
    state = {k: v for k, v in sam.state_dict().items() if k != "edge_refiner.down.weight"}
    path = tmp_path / "broken_refiner.pt"
    torch.save(state, path)
    with pytest.raises(ps.CheckpointError) as exc:
        ps.load_model("default", checkpoint=path, device="cpu")
    msg = str(exc.value)
    assert str(path) in msg and "edge refiner" in msg
