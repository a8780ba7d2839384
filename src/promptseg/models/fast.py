"""Fast paths through the Segment Anything modules: same weights, same math, fewer wasted cycles.

Decoder (:class:`FastDecoder`, every click): the prompt encoder and mask decoder of one prompt set on one
image, written out for batch 1. Nothing image-sized is copied per prompt set (segment-anything repeats
the embedding); the dense positional encoding and its projections are computed once per model, so each
image-sized projection is one matrix product, proj(x + pos) = x W^T + (pos W^T + b). With a handful of
prompt tokens (heads x tokens below the attention width) the g*g image tokens are not projected at all:
the few token-side vectors are taken into the image's channel space instead (``_to_image``,
``_to_tokens``), less than half the arithmetic. The attention between prompt and image tokens is laid
out (heads, tokens, g*g) so that the softmax runs over contiguous rows; the two 2x2 transposed
convolutions of the upscaling are per-pixel matrix products whose outputs are never laid out as an
image; only the masks that are returned are computed. Logits match segment-anything's to ~3e-7.
Measured with ``promptseg bench`` (``benchmarks/RESULTS.md``).

Encoder (:func:`fast_attention`, once per image): the ViT's global-attention blocks materialise a
(tokens x tokens) score matrix per head plus the decomposed relative-position bias. The bias is a sum of
two inner products, q·Rh[row] and q·Rw[col], so it folds into augmented queries and keys,
``q' = [q * scale, q·Rh, q·Rw]`` and ``k' = [k, onehot(row), onehot(col)]``, and one fused
``scaled_dot_product_attention`` computes exactly softmax(q k^T scale + bias) v without the bias matrix.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention as ViTAttention
from segment_anything.modeling.image_encoder import get_rel_pos


def _heads(x, h: int):
    """(N, C) -> (1, h, N, C / h), a view."""
    return x.view(1, x.shape[0], h, -1).transpose(1, 2)


def _attend(module, q, k, v):
    """segment-anything's decoder ``Attention`` with a fused softmax, for token-sized inputs (1, T, C)."""
    q, k, v = module.q_proj(q[0]), module.k_proj(k[0]), module.v_proj(v[0])
    h = module.num_heads
    out = F.scaled_dot_product_attention(_heads(q, h), _heads(k, h), _heads(v, h))
    return module.out_proj(out.transpose(1, 2).reshape(1, q.shape[0], -1))


class FastDecoder:
    """``prompt_encoder`` + ``mask_decoder`` of a :class:`~segment_anything.modeling.Sam` for one prompt set.

    Call with the arguments of ``Sam.prompt_encoder`` plus the image features (1, C, g, g); returns
    (low-res logits (1, K, L, L), predicted IoU (1, K)) exactly like ``Sam.mask_decoder`` (K = 3 or 1).
    """

    def __init__(self, sam):
        self.pe = sam.prompt_encoder
        self.md = sam.mask_decoder
        t = self.md.transformer
        with torch.inference_mode():
            dense_pe = self.pe.get_dense_pe()
            self.pos = dense_pe.flatten(2).permute(0, 2, 1)  # (1, g*g, C): constant for the model
            pos = self.pos[0]
            # Image-sized projections as single matrix products whose "bias" is the projected positional
            # encoding: proj(x + pos) = x W^T + (pos W^T + b). Per token->image attention: keys and values
            # in one product; per image->token attention: the image queries.
            self.kv = []  # transposed: keys and values come out as (2D, N), heads-major, for _to_image
            for a in [layer.cross_attn_token_to_image for layer in t.layers] + [t.final_attn_token_to_image]:
                w = torch.cat([a.k_proj.weight, a.v_proj.weight])
                bias = torch.cat([F.linear(pos, a.k_proj.weight, a.k_proj.bias), a.v_proj.bias.expand(len(pos), -1)], 1)
                self.kv.append((w, bias.t().contiguous()))
            self.q = []  # transposed: the image queries come out as (D, N), heads-major, for _to_tokens
            for layer in t.layers:
                a = layer.cross_attn_image_to_token
                self.q.append((a.q_proj.weight, F.linear(pos, a.q_proj.weight, a.q_proj.bias).t().contiguous()))

    @torch.inference_mode()
    def __call__(self, features, points, boxes, masks, multimask: bool, extra_dense=None):
        sparse, dense = self.pe(points=points, boxes=boxes, masks=masks)
        if extra_dense is not None:  # e.g. a stroke map's embedding (models with a native squiggle input)
            dense = dense + extra_dense
        md = self.md
        tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)[None]
        tokens = torch.cat([tokens, sparse], dim=1)
        b, c, gh, gw = features.shape
        keys = (features + dense).flatten(2).transpose(1, 2).contiguous()  # (1, g*g, C), owned: updated in place
        queries, keys = self._transformer(tokens, keys)
        wanted = range(1, md.num_mask_tokens) if multimask else range(1)  # only the masks returned
        hyper = torch.stack([md.output_hypernetworks_mlps[i](queries[:, 1 + i]) for i in wanted], dim=1)
        low = _masks_from_tokens(md.output_upscaling, keys.reshape(b, gh, gw, c), hyper) if gh == gw else None
        if low is None:  # another upscaling layout: the module itself
            up = md.output_upscaling(keys.transpose(1, 2).reshape(b, c, gh, gw))
            low = (hyper @ up.flatten(2)).reshape(b, -1, *up.shape[-2:])
        iou = md.iou_prediction_head(queries[:, 0])
        return low, iou[:, wanted.start : wanted.stop]

    def _to_image(self, a, i, q, keys):
        """Token->image attention ``a`` (projections ``self.kv[i]``): q (1, T, C) tokens, keys (N, C).

        With few tokens (h*T < D) the image tokens are never projected: the queries are taken into the
        image's channel space instead, q_h K_h^T = (q_h W_k,h) keys^T + q_h Kpos_h^T with the constant
        Kpos = pos W_k^T + b_k, and P V_h = (P keys) W_v,h^T + b_v (softmax rows sum to one); that is
        h*T*C*N work per product instead of D*C*N. Otherwise keys and values are produced transposed,
        (h, d, N), so the softmax runs over contiguous rows.
        """
        w, bias = self.kv[i]
        h = a.num_heads
        dd = w.shape[0] // 2
        d = dd // h
        qh = a.q_proj(q[0]).view(-1, h, d).transpose(0, 1) * d**-0.5  # (h, T, d)
        t = qh.shape[1]
        if h * t < dd:
            kpos = bias[:dd].view(h, d, -1)  # (h, d, N)
            qk = torch.bmm(qh, w[:dd].view(h, d, -1)).view(h * t, -1)  # (h*T, C): one product over all heads
            s = torch.addmm(torch.bmm(qh, kpos).view(h * t, -1), qk, keys.t())  # (h*T, N)
            p = torch.softmax(s, dim=-1)
            pk = torch.mm(p, keys).view(h, t, -1)  # (h, T, C)
            out = torch.bmm(pk, w[dd:].view(h, d, -1).transpose(1, 2)) + a.v_proj.bias.view(h, 1, d)  # (h, T, d)
        else:
            kvt = torch.addmm(bias, w, keys.t())  # (2D, N)
            kt, vt = kvt[:dd].view(h, d, -1), kvt[dd:].view(h, d, -1)
            p = torch.softmax(torch.bmm(qh, kt), dim=-1)  # (h, T, N)
            out = torch.bmm(p, vt.transpose(1, 2))  # (h, T, d)
        return a.out_proj(out.transpose(0, 1).reshape(1, q.shape[1], -1))

    def _to_tokens(self, a, i, keys, q, v):
        """Image->token attention ``a`` plus its residual: keys (N, C) attend to the T tokens -> keys + out,
        written into ``keys`` (the caller's own buffer).

        The scores are laid out (heads, T, N) so that the softmax reduces over T across contiguous rows of
        N, and nothing image-sized is transposed. With few tokens (h*T < D) the image queries are never
        projected either: k_h Q_h^T = (k_h W_q,h) keys^T + k_h Qpos_h^T (Qpos = pos W_q^T + b_q, constant),
        and the output projection is folded into the values, out_proj(S^T V) = S^T (V_h W_o,h^T) + b_o.
        """
        w, bias = self.q[i]
        h = a.num_heads
        d = w.shape[0] // h
        k = a.k_proj(q[0]).view(-1, h, d).transpose(0, 1) * d**-0.5  # (h, T, d)
        t = k.shape[1]
        few = h * t < w.shape[0]
        if few:
            kq = torch.bmm(k, w.view(h, d, -1)).view(h * t, -1)  # (h*T, C)
            s = torch.addmm(torch.bmm(k, bias.view(h, d, -1)).view(h * t, -1), kq, keys.t()).view(h, t, -1)
        else:
            qt = torch.addmm(bias, w, keys.t())  # (D, N) = (h, d, N)
            s = torch.bmm(k, qt.view(h, d, -1))  # (h, T, N)
        s = (s - s.amax(1, keepdim=True)).exp_()
        s = s / s.sum(1, keepdim=True)
        vt = a.v_proj(v[0]).view(-1, h, d).transpose(0, 1)  # (h, T, d)
        if few:
            wo = a.out_proj.weight.view(-1, h, d).permute(1, 2, 0)  # (h, d, C)
            vo = torch.bmm(vt, wo).reshape(h * t, -1)  # (h*T, C)
            return keys.addmm_(s.reshape(h * t, -1).t(), vo).add_(a.out_proj.bias)  # residual in the product
        out = torch.bmm(vt.transpose(1, 2), s).view(h * d, -1)  # (D, N)
        return keys.addmm_(out.t(), a.out_proj.weight.t()).add_(a.out_proj.bias)

    def _transformer(self, point_embedding, keys):
        """TwoWayTransformer.forward with fused attention; keys (1, g*g, C) image tokens."""
        t = self.md.transformer
        queries, keys = point_embedding, keys[0]
        for i, layer in enumerate(t.layers):
            if layer.skip_first_layer_pe:
                queries = _attend(layer.self_attn, queries, queries, queries)
            else:
                q = queries + point_embedding
                queries = queries + _attend(layer.self_attn, q, q, queries)
            queries = layer.norm1(queries)
            q = queries + point_embedding
            queries = layer.norm2(queries + self._to_image(layer.cross_attn_token_to_image, i, q, keys))
            queries = layer.norm3(queries + layer.mlp(queries))
            q = queries + point_embedding
            keys = layer.norm4(self._to_tokens(layer.cross_attn_image_to_token, i, keys, q, queries))
        q = queries + point_embedding
        queries = t.norm_final_attn(queries + self._to_image(t.final_attn_token_to_image, len(t.layers), q, keys))
        return queries, keys[None]


def _masks_from_tokens(seq, x, hyper):
    """``output_upscaling`` then the hypernetwork product, without ever laying out the upscaled image.

    x: (B, g, g, C) image tokens (channels last); hyper: (B, K, C'') mask-token weights. The two 2x2,
    stride-2 transposed convolutions are per-pixel matrix products whose outputs stay in "block order"
    (each input pixel followed by its 2x2 children), LayerNorm2d and the activations are per pixel, and
    only the K final masks are put back in raster order. Returns (B, K, 4g, 4g); None for other layouts.
    """
    conv1, norm, act1, conv2, act2 = seq
    if any(tuple(cv.kernel_size) != (2, 2) or tuple(cv.stride) != (2, 2) for cv in (conv1, conv2)):
        return None
    b, g, _, ci = x.shape
    w1 = conv1.weight.permute(0, 2, 3, 1).reshape(ci, -1)  # (Ci, 2*2*C1): children in (a, b) order
    c1 = conv1.weight.shape[1]
    y = (x.reshape(-1, ci) @ w1).reshape(-1, c1).add_(conv1.bias)  # (B*g*g*4, C1)
    y = act1(F.layer_norm(y, (c1,), norm.weight, norm.bias, norm.eps))  # LayerNorm2d: over channels
    w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, -1)
    c2 = conv2.weight.shape[1]
    y = act2((y @ w2).reshape(-1, c2).add_(conv2.bias))  # (B*g*g*16, C2)
    k = hyper.shape[1]
    m = torch.bmm(y.reshape(b, -1, c2), hyper.transpose(1, 2))  # (B, g*g*16, K)
    # block order (i, j, a, b, a2, b2) -> raster row 4i + 2a + a2, column 4j + 2b + b2
    m = m.reshape(b, g, g, 2, 2, 2, 2, k).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return m.reshape(b, k, 4 * g, 4 * g)


def _fused_vit_attention(self, x: torch.Tensor) -> torch.Tensor:
    """ViT ``Attention.forward`` (x: (B, H, W, C)) with the rel-pos bias folded into q and k."""
    b, hh, ww, _ = x.shape
    n = hh * ww
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, heads, N, d)
    if self.use_rel_pos:
        rh = get_rel_pos(hh, hh, self.rel_pos_h)  # (H, H, d)
        rw = get_rel_pos(ww, ww, self.rel_pos_w)  # (W, W, d)
        qg = q.reshape(b, self.num_heads, hh, ww, -1)
        bias_h = torch.einsum("bnhwc,hkc->bnhwk", qg, rh).reshape(b, self.num_heads, n, hh)
        bias_w = torch.einsum("bnhwc,wkc->bnhwk", qg, rw).reshape(b, self.num_heads, n, ww)
        rows = torch.arange(n, device=x.device) // ww
        cols = torch.arange(n, device=x.device) % ww
        one_h = F.one_hot(rows, hh).to(q.dtype).expand(b, self.num_heads, n, hh)
        one_w = F.one_hot(cols, ww).to(q.dtype).expand(b, self.num_heads, n, ww)
        q = torch.cat([q * self.scale, bias_h, bias_w], dim=-1)
        k = torch.cat([k, one_h, one_w], dim=-1)
        pad = q.shape[-1] - v.shape[-1]  # kernels want one head size: pad v, drop the padding after
        out = F.scaled_dot_product_attention(q, k, F.pad(v, (0, pad)), scale=1.0)[..., : v.shape[-1]]
    else:
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
    out = out.transpose(1, 2).reshape(b, hh, ww, -1)
    return self.proj(out)


def fast_attention(encoder, enable: bool = True) -> int:
    """Switch every ViT attention module of ``encoder`` to the fused form (or back); returns how many.

    Weights and state dict are untouched (the method is replaced on the instances), so official
    checkpoints load as they are and ``fingerprint`` does not change.
    """
    count = 0
    for module in encoder.modules():
        if isinstance(module, ViTAttention):
            if enable:
                module.forward = types.MethodType(_fused_vit_attention, module)
            elif "forward" in module.__dict__:
                del module.forward
            count += 1
    return count
