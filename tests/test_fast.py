"""Fast paths (promptseg.models.fast): the same results as segment-anything's modules, precision choices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import promptseg as ps
from promptseg.errors import ModelError
from promptseg.models import resolve_precision
from promptseg.models.build import build_sam
from promptseg.models.fast import FastDecoder, fast_attention


def reference_decode(sam, feats, points, box, mask, multimask):
    with torch.inference_mode():
        sparse, dense = sam.prompt_encoder(points=points, boxes=box, masks=mask)
        return sam.mask_decoder(image_embeddings=feats, image_pe=sam.prompt_encoder.get_dense_pe(),
                                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask)


@pytest.mark.parametrize("arch", ["tiny", "cnn_small"])
def test_fast_decoder_matches_segment_anything(arch):
    torch.manual_seed(0)
    sam = build_sam(arch, image_size=256 if arch == "cnn_small" else 1024).eval()
    g = sam.prompt_encoder.image_embedding_size[0]
    feats = torch.randn(1, sam.prompt_encoder.embed_dim, g, g)
    fast = FastDecoder(sam)
    point = (torch.tensor([[[100.0, 80.0]]]), torch.tensor([[1]]))
    points = (torch.tensor([[[100.0, 80.0], [30.0, 40.0], [60.0, 200.0]]]), torch.tensor([[1, 0, 1]]))
    box = torch.tensor([[20.0, 30.0, 180.0, 150.0]])
    mask = torch.randn(1, 1, 4 * g, 4 * g) * 3
    for args in [(point, None, None, True), (points, None, None, False), (None, box, None, False),
                 (points, box, mask, False), (None, None, mask, False), (point, None, mask, True)]:
        want_low, want_iou = reference_decode(sam, feats, *args)
        with torch.inference_mode():
            low, iou = fast(feats, *args)
        assert low.shape == want_low.shape and iou.shape == want_iou.shape
        torch.testing.assert_close(low, want_low, atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(iou, want_iou, atol=2e-5, rtol=1e-4)


def test_fast_decoder_follows_weights_changed_in_place(small_sam):
    model, _ = small_sam
    feats = torch.randn(1, 256, 64, 64)
    xy, lab = np.array([[300.0, 200.0]]), np.array([1])
    model.decode(feats, xy, lab, None, None, False)  # builds the fast decoder and its caches
    layer = model.sam.mask_decoder.transformer.layers[0].cross_attn_token_to_image
    saved = layer.k_proj.weight.detach().clone()
    try:
        with torch.no_grad():
            layer.k_proj.weight.mul_(1.5)  # as an optimiser step does
        low, _ = model.decode(feats, xy, lab, None, None, False)
        pts = (torch.tensor(xy, dtype=torch.float)[None], torch.tensor(lab)[None])
        want, _ = reference_decode(model.sam, feats, pts, None, None, False)
        np.testing.assert_allclose(low, want[0].numpy(), atol=2e-4)
    finally:
        with torch.no_grad():
            layer.k_proj.weight.copy_(saved)


def test_fused_vit_attention_matches_and_switches_back():
    torch.manual_seed(1)
    enc = build_sam("tiny", image_size=256, global_attn_indexes=(1,)).image_encoder.eval()  # windowed + global
    x = torch.randn(2, 3, 256, 256)
    with torch.inference_mode():
        want = enc(x)
        assert fast_attention(enc) == 2
        got = enc(x)
        cos = torch.nn.functional.cosine_similarity(want.flatten(), got.flatten(), dim=0)
        assert cos > 0.99999 and (want - got).abs().max() < 1e-3
        fast_attention(enc, enable=False)
        torch.testing.assert_close(enc(x), want)


def test_fast_and_reference_sessions_agree(small_sam, rgb_image):
    model, path = small_sam
    slow = ps.load_model("test_small", checkpoint=path, device="cpu", fast=False)
    masks = []
    for m in (model, slow):
        s = ps.Session(m, rgb_image)
        s.add_point((150, 200))
        s.add_point((80, 400), positive=False)
        masks.append(np.asarray(s.add_box((100, 140), (210, 270)).mask).copy())
    assert (masks[0] == masks[1]).mean() > 0.999


def test_precision_choices(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_precision(cpu, "auto") == "float32" and resolve_precision(cpu, "fp32") == "float32"
    with pytest.raises(ModelError, match="unknown precision 'half'"):
        resolve_precision(cpu, "half")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    with pytest.raises(ModelError, match="no bf16 arithmetic.*float32"):
        ps.load_model("default", device="cpu", precision="bfloat16")


@pytest.mark.skipif(not (torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()),
                    reason="this CPU has no bf16 arithmetic")
def test_bf16_encoder_on_cpu(small_sam, rgb_image, tmp_path):
    model, path = small_sam
    bf = ps.load_model("test_small", checkpoint=path, device="cpu", precision="bfloat16")
    a = ps.embed(rgb_image, model).get(0).astype(np.float32).ravel()
    b = ps.embed(rgb_image, bf).get(0).astype(np.float32).ravel()
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.999
    ps.embed(rgb_image, model, cache=tmp_path / "c.zarr")
    with pytest.raises(ps.CacheError, match="compute precision"):
        ps.embed(rgb_image, bf, cache=tmp_path / "c.zarr")


def test_stroke_map_and_native_squiggle_input(rgb_image, small_sam, monkeypatch):
    from promptseg.prompts import stroke_map

    m = stroke_map([(np.array([[2.0, 1.0], [2.0, 6.0]]), True), (np.array([[5.0, 5.0]]), False)], lambda p: p, 8)
    assert m.shape == (1, 2, 8, 8) and m.dtype == np.float32
    assert m[0, 0, 2, 1:7].all() and m[0, 0].sum() == 6 and m[0, 1, 5, 5] == 1 and m[0, 1].sum() == 1

    from promptseg.models import get_spec
    from promptseg.models.model import PromptModel

    torch.manual_seed(0)
    sam = build_sam("cnn_small", image_size=256, strokes=True).eval()
    model = PromptModel(sam=sam, spec=get_spec("promptseg_cnn_s"), device=torch.device("cpu"))
    assert model.has_strokes
    seen = []
    real = model.decode
    monkeypatch.setattr(model, "decode", lambda *a: seen.append(a[6]) or real(*a))
    s = ps.Session(model, rgb_image, zoom=False)  # the full view's frame only (a random model may zoom)
    zero = np.asarray(s.add_scribble([(150, 180), (150, 230)]).mask).copy()
    smap = seen[-1]
    assert smap is not None and smap[0, 0].sum() > 0 and smap[0, 1].sum() == 0
    r, c = np.nonzero(smap[0, 0])  # drawn where the stroke is, in the 64 x 64 logit frame (scale 256/500)
    assert np.allclose(r.mean(), 150 * 256 / 500 / 4, atol=1) and c.min() >= 180 * 256 / 500 / 4 - 1
    with torch.no_grad():  # the untrained (zero) output layer adds nothing; a trained one changes the mask
        sam.prompt_encoder.stroke_downscaling.layers[-1].bias.fill_(-5.0)
    s.reset()
    assert not np.array_equal(np.asarray(s.add_scribble([(150, 180), (150, 230)]).mask), zero) or not zero.any()
    plain_model = small_sam[0]  # an official-style SAM: no native squiggle input
    monkeypatch.setattr(plain_model, "decode", lambda *a, real=plain_model.decode: seen.append(a[6]) or real(*a))
    ps.Session(plain_model, rgb_image).add_scribble([(150, 180), (150, 230)])
    assert not plain_model.has_strokes and seen[-1] is None  # the squiggle goes as points only


@pytest.mark.parametrize("low_n, size, original", [(64, 256, (1024, 1024)), (64, 256, (300, 517)),
                                                   (256, 1024, (700, 1500)), (256, 1024, (37, 2000))])
def test_mask_over_the_reachable_region_equals_the_full_upscale(low_n, size, original):
    """Session masks are computed only where the object can be; they must equal the full upscale's."""
    import torch.nn.functional as F

    from promptseg.models.resize import axis_map, mask_crop

    rng = np.random.default_rng(low_n + original[1])
    s = size / max(original)
    inp = (int(original[0] * s + 0.5), int(original[1] * s + 0.5))
    rows, cols = axis_map(low_n, size, inp[0], original[0]), axis_map(low_n, size, inp[1], original[1])
    rr, cc = np.mgrid[:low_n, :low_n]
    assert mask_crop(np.full((low_n, low_n), -1.0, np.float32), rows, cols, 0.0) is None
    for _ in range(5):
        r, c, sd = rng.integers(0, low_n), rng.integers(0, low_n), rng.uniform(1, low_n / 6)
        low = (rng.normal(size=(low_n, low_n)) * 3 - 6 + 12 * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * sd**2)))
        low = low.astype(np.float32)
        t = F.interpolate(torch.from_numpy(low)[None, None], (size, size), mode="bilinear", align_corners=False)
        want = F.interpolate(t[..., : inp[0], : inp[1]], original, mode="bilinear", align_corners=False)[0, 0] > 0
        got = np.zeros(original, bool)
        hit = mask_crop(low, rows, cols, 0.0)
        if hit is not None:
            crop, (r0, c0) = hit
            got[r0 : r0 + crop.shape[0], c0 : c0 + crop.shape[1]] = crop
        np.testing.assert_array_equal(got, want.numpy())


def _threads_inside(model, monkeypatch):
    """torch's thread count seen by the decoder, the thresholded crop and the upscale of one click."""
    import promptseg.models.model as model_module

    seen = {}
    real_decoder, real_crop, real_interp = model._fast_decoder, model_module.mask_crop, torch.nn.functional.interpolate

    def spy(key, f):
        def g(*a, **k):
            seen.setdefault(key, torch.get_num_threads())
            return f(*a, **k)
        return g

    monkeypatch.setattr(model, "_fast_decoder", lambda: spy("decode", real_decoder()))
    monkeypatch.setattr(model_module, "mask_crop", spy("mask", real_crop))
    monkeypatch.setattr(torch.nn.functional, "interpolate", spy("upscale", real_interp))
    g = model.sam.prompt_encoder.image_embedding_size[0]
    feats = torch.randn(1, model.sam.prompt_encoder.embed_dim, g, g)
    low, _ = model.decode(feats, np.array([[30.0, 40.0]]), np.array([1]), None, None, False)
    low[0] = -10.0
    low[0, 5:8, 5:8] = 10.0  # a small object: the crop path, not the whole-plane upscale
    model.mask(low[0], (model.input_size,) * 2, (300, 300), 0.0)
    model.upscale(low[0], (model.input_size,) * 2, (300, 300))
    return seen


def test_a_click_on_a_small_grid_runs_on_one_thread_and_restores_the_count(default_model, small_sam, monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        # the default model's 16x16 grid: one thread (a second one, asleep since the last click, costs more)
        assert _threads_inside(default_model, monkeypatch) == {"decode": 1, "mask": 1, "upscale": 1}
        assert torch.get_num_threads() == 3
        monkeypatch.undo()
        # SAM's 64x64 grid keeps torch's count, and so does an explicit choice
        assert _threads_inside(small_sam[0], monkeypatch) == {"decode": 3, "mask": 3, "upscale": 3}
        monkeypatch.undo()
        monkeypatch.setattr(default_model, "click_threads", 2)
        assert _threads_inside(default_model, monkeypatch) == {"decode": 2, "mask": 2, "upscale": 2}
        assert torch.get_num_threads() == 3
        monkeypatch.undo()
        # a failing click leaves the count as it was; a bad setting is refused in one line
        monkeypatch.setattr(default_model, "_decode", lambda *a: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            default_model.decode(torch.zeros(1, 1, 1, 1), None, None, None, None, False)
        assert torch.get_num_threads() == 3
        monkeypatch.setattr(default_model, "click_threads", 0)
        with pytest.raises(ModelError, match="click_threads must be a positive integer"):
            default_model.decode(torch.zeros(1, 1, 1, 1), None, None, None, None, False)
    finally:
        torch.set_num_threads(before)


def test_embedding_jobs_pin_their_thread_count_when_started_during_a_click(default_model):
    """A thread copies torch's count when it first runs torch, and that count is 1 during a click."""
    import threading

    pytest.importorskip("napari.qt.threading")
    from promptseg.models.model import torch_threads
    from promptseg.napari._workers import embed_job, fill_job

    seen = []

    def run(job):
        next(job, None)  # the job's first step: an embed job is then ready to embed
        seen.append(torch.get_num_threads())

    def plain():  # no pin: the premise, torch's own behaviour
        yield

    image = np.zeros((64, 64), np.uint8)
    with torch_threads(1):  # as while the GUI thread decodes a click
        for job in (plain(), fill_job(None, None, [], threads=3),
                    embed_job({"model": default_model}, image, False, None, [], None, threads=3)):
            t = threading.Thread(target=run, args=(job,))
            t.start()
            t.join()
    assert seen == [1, 3, 3]
