"""Scaled dot-product attention and the attention masks, with PyTorch's semantics.

Two mask conventions meet here, both PyTorch's: `scaled_dot_product_attention` takes a
bool mask whose True entries TAKE PART, while MultiheadAttention's `attn_mask` and
`key_padding_mask` (transformer.py) are bool masks whose True entries are IGNORED. Float
masks are added to the scores in both.

functional.py exports scaled_dot_product_attention, so this module imports nothing of
nn (an import circle otherwise): it has its own few lines of dropout.
"""
from __future__ import annotations

import math

import numpy as np

from ..frontend.functions import iota, random_uniform, where
from ..frontend.tensor import Tensor
from ..frontend.trace import trace_error

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


def safe_softmax(scores: Tensor) -> Tensor:
    """Softmax over the last axis whose rows with no finite score are 0, not nan (what
    torch's scaled_dot_product_attention returns for a fully masked query)."""
    top = scores.max(-1, keepdim=True).detach()
    finite = top.gt(float("-inf"))
    e = (scores - where(finite, top, 0.0)).exp()
    total = e.sum(-1, keepdim=True)
    return e / where(finite, total, 1.0)


def _dropout(weights: Tensor, p: float) -> Tensor:
    """F.dropout(weights, p, training=True), which this module cannot import."""
    if not 0 <= p <= 1:
        raise trace_error("scaled_dot_product_attention", f"dropout_p has to be between 0 and 1, but got {p}")
    if p == 0:
        return weights
    if p == 1:
        return weights * 0.0
    return weights * random_uniform(weights.shape).ge(p) * (1.0 / (1.0 - p))


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
    weights = _dropout(safe_softmax(scores), dropout_p)
    return weights @ value
