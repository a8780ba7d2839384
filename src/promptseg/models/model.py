"""PromptModel: a Segment Anything style model bound to its registry entry and device.

It is the only place that calls the torch modules: ``encode`` turns resized uint8 RGB images into
embeddings, ``decode`` turns prompts in the encoder's input frame into low-resolution logits, and
``upscale`` brings logits back to full resolution exactly as ``Sam.postprocess_masks`` does (``mask`` does
the same and thresholds, computing only the region the object can reach).
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam

from ..errors import ModelError
from .fast import FastDecoder, fast_attention
from .resize import axis_map, mask_crop, reach
from .registry import ModelSpec


@contextmanager
def torch_threads(n: int | None):
    """Run the block with torch's intra-op thread count ``n`` in this thread (None: unchanged).

    torch keeps the count per thread but a thread starting its first torch work copies the count last
    set anywhere, so a worker started while this block runs should pin its own (``torch.set_num_threads``).
    """
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass(eq=False)
class PromptModel:
    """A loaded model.

    Attributes
    ----------
    sam : the ``segment_anything.modeling.Sam`` module, in eval mode on ``device``.
    spec : its registry entry (input size, resize rule, normalisation).
    device : torch device it runs on.
    checkpoint : file the weights came from (``None`` for an in-memory model).
    precision : of the encoder's arithmetic, "float32" or "bfloat16" (autocast); embeddings are stored fp16.
    fast : fused attention in the encoder and promptseg's own decoder path (``models/fast.py``).
    click_threads : torch threads for a click's work (``decode``, ``upscale``, ``mask``; see
        :meth:`threads_for_click`). None: one thread on the CPU when the embedding grid is at most 32x32,
        else torch's count. Loops that decode back to back (propagation, batches) may prefer
        ``torch.get_num_threads()``.
    honour_clicks : whether :meth:`refine_edges` makes the refined mask give each of the user's clicks its
        label where the plain pass does not (:func:`promptseg.models.edges.honour`).
    """

    sam: Sam
    spec: ModelSpec
    device: torch.device
    checkpoint: Path | None = None
    precision: str = "float32"
    fast: bool = True
    click_threads: int | None = None
    honour_clicks: bool = True
    _fingerprint: str | None = field(default=None, repr=False)
    _decoder: tuple | None = field(default=None, repr=False)
    _fused: bool = field(default=False, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def input_size(self) -> int:
        """Side of the square, padded encoder input in pixels."""
        return self.sam.image_encoder.img_size

    @property
    def has_strokes(self) -> bool:
        """Whether the model takes squiggles natively (a stroke map next to the mask prompt)."""
        return hasattr(self.sam.prompt_encoder, "stroke_downscaling")

    @property
    def has_edges(self) -> bool:
        """Whether the model has an edge refiner (:mod:`promptseg.models.edges`) to run after the decoder."""
        return hasattr(self.sam, "edge_refiner")

    @property
    def lowres_size(self) -> int:
        """Side of the low-resolution logits (4x the embedding grid; 256 for SAM)."""
        return 4 * self.sam.prompt_encoder.image_embedding_size[0]

    @property
    def fingerprint(self) -> str:
        """Hash of everything that determines the embeddings: encoder weights and normalisation."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            for key, t in sorted(self.sam.image_encoder.state_dict().items()):
                h.update(key.encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
            h.update(np.asarray([self.spec.pixel_mean, self.spec.pixel_std], dtype=np.float64).tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    @torch.inference_mode()
    def encode(self, images: list[np.ndarray]) -> torch.Tensor:
        """Embed a batch of images already resized to the input frame.

        Parameters
        ----------
        images : list of uint8 arrays (h, w, 3), each with max(h, w) == input_size (``longest``) or
            h == w == input_size (``square``). Sizes may differ within the batch.

        Returns
        -------
        float32 tensor (B, C, g, g) on ``device`` (C = 256, g = 64 for SAM).
        """
        batch = [
            self.sam.preprocess(torch.as_tensor(im, device=self.device).permute(2, 0, 1).float()[None])
            for im in images
        ]
        if self.fast != self._fused:
            fast_attention(self.sam.image_encoder, self.fast)
            self._fused = self.fast
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16"):
            return self.sam.image_encoder(torch.cat(batch)).float()

    @torch.inference_mode()
    def decode(
        self,
        features: torch.Tensor,
        points_xy: np.ndarray | None,
        labels: np.ndarray | None,
        box_xyxy: np.ndarray | None,
        mask_input: np.ndarray | None,
        multimask: bool,
        strokes: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run prompt encoder and mask decoder for one image (mirrors ``SamPredictor.predict_torch``).

        Parameters
        ----------
        features : (1, C, g, g) float tensor on ``device``.
        points_xy : (N, 2) float, SAM (x, y) order in the *input frame* (after resizing), or None.
        labels : (N,) int, 1 positive, 0 negative.
        box_xyxy : (4,) float in the input frame, or None.
        mask_input : (1, L, L) float32 low-resolution logits of an earlier prediction, or None.
        multimask : return the three ambiguity-aware masks instead of one.
        strokes : (1, 2, L, L) float32 stroke map (:func:`promptseg.prompts.stroke_map`), used by models
            with a native squiggle input (``has_strokes``), ignored by the others.

        Returns
        -------
        logits (K, L, L) float32 and predicted IoU (K,) float32, K = 3 or 1, as numpy arrays.
        """
        with self.threads_for_click():
            return self._decode(features, points_xy, labels, box_xyxy, mask_input, multimask, strokes)

    def threads_for_click(self):
        """A context that runs a click's work on ``click_threads`` threads (a no-op when nested).

        ``decode``, ``upscale`` and ``mask`` each enter it; a caller doing several of them for one prompt
        enters it once around them (``torch.set_num_threads`` is not free).
        """
        n = self.click_threads
        if n is not None and (not isinstance(n, int) or n < 1):
            raise ModelError(f"click_threads must be a positive integer or None, not {n!r}")
        if n is None and self.device.type == "cpu":
            # Tuned on 2 cores (benchmarks/click_threads.py): on the default model's 16x16 grid the
            # decoder takes twice as long on two threads as on one when it runs 0.5 s after the last
            # click (waking the sleeping thread); on SAM's 64x64 grid two threads win. Between: unmeasured.
            g = self.sam.prompt_encoder.image_embedding_size
            n = 1 if g[0] * g[1] <= 32 * 32 else None
        return torch_threads(n)

    def _decode(self, features, points_xy, labels, box_xyxy, mask_input, multimask, strokes):
        dev = self.device
        points = None
        if points_xy is not None and len(points_xy):
            points = (
                torch.as_tensor(points_xy, dtype=torch.float, device=dev)[None],
                torch.as_tensor(labels, dtype=torch.int, device=dev)[None],
            )
        box = None if box_xyxy is None else torch.as_tensor(box_xyxy, dtype=torch.float, device=dev)[None]
        mask = None if mask_input is None else torch.as_tensor(mask_input, dtype=torch.float, device=dev)[None]
        pe = self.sam.prompt_encoder
        extra = None
        if strokes is not None and self.has_strokes:
            extra = pe.stroke_downscaling(torch.as_tensor(strokes, dtype=torch.float, device=dev))
        if self.fast:
            low, iou = self._fast_decoder()(features, points, box, mask, multimask, extra)
            return low[0].float().cpu().numpy(), iou[0].float().cpu().numpy()
        sparse, dense = pe(points=points, boxes=box, masks=mask)
        dense = dense if extra is None else dense + extra
        low, iou = self.sam.mask_decoder(
            image_embeddings=features,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        return low[0].float().cpu().numpy(), iou[0].float().cpu().numpy()

    def _fast_decoder(self) -> FastDecoder:
        """The fast decoder, rebuilt when the decoder's weights changed in place (e.g. by training)."""
        if self._decoder is None:
            pe, md = self.sam.prompt_encoder, self.sam.mask_decoder
            # walking the modules costs ~0.6 ms a click, so the tensors are listed once; their versions
            # change with every in-place update (an optimizer step, load_state_dict)
            tensors = [*pe.parameters(), *md.parameters(), *pe.buffers()]
            self._decoder = (tensors, None, None)
        tensors, key, fast = self._decoder
        now = tuple(t._version for t in tensors)
        if now != key:
            fast = FastDecoder(self.sam)
            self._decoder = (tensors, now, fast)
        return fast

    @torch.inference_mode()
    def refine_edges(self, rgb: np.ndarray, mask: np.ndarray, points_rc=None, positive=None, box=None,
                     max_pixels: int | None = None, honoured=None) -> np.ndarray:
        """Redraw the boundary of ``mask`` at full resolution with the edge refiner (``has_edges``).

        rgb : uint8 (h, w, 3) crop of the preprocessed image; mask : bool (h, w), the predicted mask in it;
        points_rc, positive : (N, 2) (row, col) clicks in the crop's frame and (N,) bool, or None.
        box : (r0, c0, r1, c1) inclusive corners of the box prompt in the crop's frame, or None.
        max_pixels : a larger crop is averaged down by the smallest integer factor that fits, refined
            there, and its logits upsampled back (bilinear).
        honoured : (N,) bool, the points that are the user's own clicks (or squiggle points): with
            ``honour_clicks``, those the plain pass labels wrong are honoured (:func:`.edges.honour`).
            None: none.
        Returns bool (h, w).
        """
        from .edges import edge_inputs, honour

        with self.threads_for_click():
            x = edge_inputs(rgb, mask, points_rc, positive, box).to(self.device)
            h, w = mask.shape
            f = 1 if max_pixels is None else int(np.ceil(np.sqrt(h * w / max_pixels)))
            if f > 1:  # the clicks' maps by their maximum, so that a click keeps its full weight
                x = torch.cat([F.avg_pool2d(x[:, :4], f, ceil_mode=True), F.max_pool2d(x[:, 4:6], f, ceil_mode=True),
                               F.avg_pool2d(x[:, 6:], f, ceil_mode=True)], 1)
            rc = np.zeros((0, 2), int)
            if self.honour_clicks and honoured is not None and np.any(honoured):
                keep = np.asarray(honoured, bool)
                rc = np.floor(np.asarray(points_rc, float).reshape(-1, 2)[keep] / f).astype(int)  # on the refined grid
                inside = (rc >= 0).all(axis=1) & (rc[:, 0] < x.shape[2]) & (rc[:, 1] < x.shape[3])
                rc, pos = rc[inside], np.asarray(positive, bool)[keep][inside]
            out = honour(self.sam.edge_refiner, x, rc, pos) if len(rc) else self.sam.edge_refiner(x)
            if f > 1:
                out = F.interpolate(out, scale_factor=f, mode="bilinear", align_corners=False)[..., :h, :w]
            return (out[0, 0] > 0).cpu().numpy()

    @torch.inference_mode()
    def upscale(self, logits: np.ndarray, input_hw: tuple[int, int], original_hw: tuple[int, int]) -> np.ndarray:
        """Low-resolution logits (L, L) -> full-resolution logits (H, W) float32.

        Upsample to the padded input, crop the valid (h, w) part, resize to the original (H, W): the same
        steps and interpolation as ``Sam.postprocess_masks``.
        """
        with self.threads_for_click():
            return self._upscale(logits, input_hw, original_hw)

    def _upscale(self, logits, input_hw, original_hw):
        t = torch.as_tensor(logits, dtype=torch.float, device=self.device)[None, None]
        size = self.sam.image_encoder.img_size
        out = F.interpolate(t, (size, size), mode="bilinear", align_corners=False)[..., : input_hw[0], : input_hw[1]]
        if tuple(input_hw) != tuple(original_hw):  # (the same size: that step is an exact copy, skip it)
            out = F.interpolate(out, tuple(original_hw), mode="bilinear", align_corners=False)
        return out[0, 0].cpu().numpy()

    @torch.inference_mode()
    def mask(self, logits: np.ndarray, input_hw: tuple[int, int], original_hw: tuple[int, int], threshold: float):
        """``upscale(logits) > threshold`` as (bool crop, (row, col) origin in the original frame), or None.

        Evaluated only over the rows and columns that the low-resolution logits above the threshold can
        reach (``models/resize.py``), so a click on a large image costs in proportion to the object.
        """
        with self.threads_for_click():
            return self._mask(logits, input_hw, original_hw, threshold)

    def _mask(self, logits, input_hw, original_hw, threshold):
        size, low = self.sam.image_encoder.img_size, logits.shape[-1]
        rows = axis_map(low, size, int(input_hw[0]), int(original_hw[0]))
        cols = axis_map(low, size, int(input_hw[1]), int(original_hw[1]))
        where = reach(logits, rows, cols, threshold)
        if where is None:
            return None
        r0, r1, c0, c1 = where[0]
        if 4 * (r1 - r0) * (c1 - c0) > original_hw[0] * original_hw[1]:
            # a large object: one interpolation kernel over the whole plane is cheaper than the products
            return self._upscale(logits, input_hw, original_hw)[r0:r1, c0:c1] > threshold, (r0, c0)
        return mask_crop(logits, rows, cols, threshold, where)
