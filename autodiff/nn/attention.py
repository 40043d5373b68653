"""Scaled dot-product attention and MultiheadAttention, with PyTorch's semantics and names.

Two mask conventions meet here, both PyTorch's: `scaled_dot_product_attention` takes a
bool mask whose True entries TAKE PART, while MultiheadAttention's `attn_mask` and
`key_padding_mask` are bool masks whose True entries are IGNORED. Float masks are added
to the scores in both.
"""
from __future__ import annotations

import math

import numpy as np

from ..frontend.functions import iota, where
from ..frontend.tensor import Tensor
from ..frontend.trace import trace_error
from . import functional as F
from .init import uniform_parameter
from .layers import Linear
from .module import Module

Mask = Tensor | np.ndarray | None


def causal_mask(length: int, source: int | None = None) -> Tensor:
    """Additive (length, source) mask: 0 on and below the diagonal, -inf above it."""
    source = length if source is None else source
    rows = iota((length, source), 0)
    cols = iota((length, source), 1)
    return where(cols.gt(rows), float("-inf"), 0.0)


def _as_mask_tensor(mask: Tensor | np.ndarray) -> Tensor:
    if isinstance(mask, Tensor):
        return mask
    array = np.asarray(mask)
    dtype = "int32" if array.dtype == bool else "float32"
    return Tensor(array.astype(dtype), name="attn_mask", dtype=dtype, requires_grad=False)


def _is_bool(mask: Tensor | np.ndarray) -> bool:
    """A bool numpy mask, or an int32 tensor (how a bool mask lives in a graph)."""
    return np.asarray(mask).dtype == bool if isinstance(mask, np.ndarray) else mask.dtype != "float32"


def additive_mask(mask: Mask, true_means_ignore: bool = True) -> Tensor | None:
    """A bool mask becomes 0/-inf (True ignored, or True taking part); a float mask as is."""
    if mask is None:
        return None
    boolean = _is_bool(mask)
    mask = _as_mask_tensor(mask)
    if not boolean:
        return mask
    return where(mask, float("-inf"), 0.0) if true_means_ignore else where(mask, 0.0, float("-inf"))


def _safe_softmax(scores: Tensor) -> Tensor:
    """Softmax over the last axis whose rows with no finite score are 0, not nan (what
    torch's scaled_dot_product_attention returns for a fully masked query)."""
    top = scores.max(-1, keepdim=True).detach()
    finite = top.gt(float("-inf"))
    e = (scores - where(finite, top, 0.0)).exp()
    total = e.sum(-1, keepdim=True)
    return e / where(finite, total, 1.0)


def _repeat_heads(t: Tensor, times: int) -> Tensor:
    """(..., Hkv, S, D) -> (..., Hkv*times, S, D), each head repeated in place (grouped-query)."""
    shape = t.shape
    grown = t.unsqueeze(-3).expand(*shape[:-2], times, *shape[-2:])
    return grown.reshape(*shape[:-3], shape[-3] * times, *shape[-2:])


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Mask = None,
                                 dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                                 enable_gqa: bool = False) -> Tensor:
    """torch's F.scaled_dot_product_attention: softmax(q k^T * scale + mask) v over (..., L, E).

    A bool attn_mask's True entries take part; a float one is added. is_causal masks out
    keys after each query (top-left aligned), combined with attn_mask when both are given.
    Dropout applies whenever dropout_p > 0, as in torch (pass 0.0 when evaluating).
    """
    if query.ndim < 2 or key.ndim != query.ndim or value.ndim != query.ndim:
        raise trace_error("scaled_dot_product_attention", f"query {query.shape}, key {key.shape} and value "
                          f"{value.shape} must be (..., L, E), (..., S, E), (..., S, Ev)")
    if enable_gqa and query.ndim >= 3 and key.shape[-3] != query.shape[-3]:
        heads, kv_heads = query.shape[-3], key.shape[-3]
        if heads % kv_heads or value.shape[-3] != kv_heads:
            raise trace_error("scaled_dot_product_attention", f"enable_gqa needs query heads {heads} to be a "
                              f"multiple of key/value heads {key.shape[-3]}/{value.shape[-3]}")
        key, value = _repeat_heads(key, heads // kv_heads), _repeat_heads(value, heads // kv_heads)
    length, source = query.shape[-2], key.shape[-2]
    factor = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = (query * factor) @ key.mT
    if is_causal:
        scores = scores + causal_mask(length, source)
    mask = additive_mask(attn_mask, true_means_ignore=False)
    if mask is not None:
        scores = scores + mask
    weights = F.dropout(_safe_softmax(scores), dropout_p, True)
    return weights @ value


def _xavier(shape: tuple[int, int], name: str) -> Tensor:
    fan_out, fan_in = shape
    return uniform_parameter(shape, math.sqrt(6.0 / (fan_in + fan_out)), name)


class MultiheadAttention(Module):
    """PyTorch's MultiheadAttention; returns (output, weights).

    Packed `in_proj_weight` when key and value have embed_dim features, else separate
    q/k/v_proj_weight (kdim, vdim), as in PyTorch. `weights` is (N, L, S) averaged over
    heads (or (N, H, L, S) with average_attn_weights=False) when need_weights, else None.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        for flag, name in ((add_bias_kv, "add_bias_kv"), (add_zero_attn, "add_zero_attn")):
            if flag:
                raise trace_error("MultiheadAttention", f"{name}=True is not supported")
        self.embed_dim, self.num_heads, self.batch_first = embed_dim, num_heads, batch_first
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        if self._qkv_same_embed_dim:
            self.in_proj_weight = _xavier((3 * embed_dim, embed_dim), "in_proj_weight")
        else:
            self.q_proj_weight = _xavier((embed_dim, embed_dim), "q_proj_weight")
            self.k_proj_weight = _xavier((embed_dim, self.kdim), "k_proj_weight")
            self.v_proj_weight = _xavier((embed_dim, self.vdim), "v_proj_weight")
        self.in_proj_bias = Tensor(np.zeros(3 * embed_dim, np.float32), name="in_proj_bias") if bias else None
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias)
        if bias:
            self.out_proj.bias._var.value[:] = 0.0   # PyTorch zeroes it

    def _projections(self) -> tuple[Tensor, Tensor, Tensor]:
        if self._qkv_same_embed_dim:
            e, w = self.embed_dim, self.in_proj_weight
            return w[:e], w[e:2 * e], w[2 * e:]
        return self.q_proj_weight, self.k_proj_weight, self.v_proj_weight

    def _mask(self, attn_mask: Mask, key_padding_mask: Mask, is_causal: bool, batch: int, length: int,
              source: int) -> Tensor | None:
        """One additive mask broadcastable to (N, H, L, S), from PyTorch's MHA mask forms."""
        mask = causal_mask(length, source) if is_causal and attn_mask is None else additive_mask(attn_mask)
        if mask is not None and mask.ndim == 3:   # (N*H, L, S), batch-major as in PyTorch
            mask = mask.reshape(batch, self.num_heads, length, source)
        padding = additive_mask(key_padding_mask)
        if padding is not None:
            if padding.shape not in ((batch, source), (source,)):
                raise trace_error("MultiheadAttention", f"key_padding_mask must be (N, S) = {(batch, source)}, "
                                  f"got {padding.shape}")
            padding = padding.reshape(-1, 1, 1, source)
            mask = padding if mask is None else mask + padding
        return mask

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Mask = None,
                need_weights: bool = True, attn_mask: Mask = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        unbatched = query.ndim == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        elif not self.batch_first:   # (L, N, E) -> (N, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        if query.shape[-1] != self.embed_dim:
            raise trace_error("MultiheadAttention", f"expected embed_dim {self.embed_dim}, got {query.shape}")
        e, h, d = self.embed_dim, self.num_heads, self.head_dim
        wq, wk, wv = self._projections()
        b = self.in_proj_bias
        q = F.linear(query, wq, b[:e] if b is not None else None)
        k = F.linear(key, wk, b[e:2 * e] if b is not None else None)
        v = F.linear(value, wv, b[2 * e:] if b is not None else None)
        batch, length, source = q.shape[0], q.shape[1], k.shape[1]

        def heads(t: Tensor, n: int) -> Tensor:   # (B, n, E) -> (B, H, n, D)
            return t.reshape(batch, n, h, d).permute(0, 2, 1, 3)

        scores = (heads(q, length) * (1.0 / math.sqrt(d))) @ heads(k, source).mT
        mask = self._mask(attn_mask, key_padding_mask, is_causal, batch, length, source)
        if mask is not None:
            scores = scores + mask
        # PyTorch: the weights it returns are a plain softmax (nan for a fully masked row);
        # without them it goes through scaled_dot_product_attention (0 for such a row)
        weights = F.softmax(scores, -1) if need_weights else _safe_softmax(scores)
        weights = F.dropout(weights, self.dropout, self.training)
        out = (weights @ heads(v, source)).permute(0, 2, 1, 3).reshape(batch, length, e)
        out = self.out_proj(out)
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        shown = weights.mean(1) if average_attn_weights else weights
        return out, shown.squeeze(0) if unbatched else shown
