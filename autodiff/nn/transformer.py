"""Attention and the transformer encoder, with PyTorch's parameter names and shapes."""
from __future__ import annotations

import copy
import math
from typing import Callable

import numpy as np

from ..frontend.functions import iota, where
from ..frontend.tensor import Tensor
from ..frontend.trace import trace_error
from . import functional as F
from .layers import Dropout, LayerNorm, Linear, uniform_parameter
from .module import Module


def causal_mask(length: int) -> Tensor:
    """Additive (length, length) mask: 0 on and below the diagonal, -inf above it."""
    rows = iota((length, length), 0)
    cols = iota((length, length), 1)
    return where(cols.gt(rows), float("-inf"), 0.0)


def _additive_mask(mask: Tensor | np.ndarray | None) -> Tensor | None:
    """A bool mask (True = may not attend) becomes -inf/0; a float mask is added as is."""
    if mask is None:
        return None
    if isinstance(mask, np.ndarray):
        if mask.dtype == bool:
            return Tensor(np.where(mask, -np.inf, 0).astype(np.float32), name="attn_mask", requires_grad=False)
        return Tensor(mask.astype(np.float32), name="attn_mask", requires_grad=False)
    if mask.dtype != "float32":
        return where(mask, float("-inf"), 0.0)
    return mask


class MultiheadAttention(Module):
    """PyTorch's MultiheadAttention (packed in_proj, out_proj); returns (output, weights).

    `weights` is the attention averaged over heads when need_weights=True, else None.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = False) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.batch_first = embed_dim, num_heads, batch_first
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        bound = math.sqrt(6.0 / (embed_dim + 3 * embed_dim))   # xavier_uniform_ on (3E, E)
        self.in_proj_weight = uniform_parameter((3 * embed_dim, embed_dim), bound, "in_proj_weight")
        self.in_proj_bias = Tensor(np.zeros(3 * embed_dim, np.float32), name="in_proj_bias") if bias else None
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias)
        if bias:
            self.out_proj.bias._var.value[:] = 0.0   # PyTorch zeroes it

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attn_mask=None,
                need_weights: bool = True, is_causal: bool = False,
                average_attn_weights: bool = True) -> tuple[Tensor, Tensor | None]:
        unbatched = query.ndim == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        elif not self.batch_first:   # (L, N, E) -> (N, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        if query.shape[-1] != self.embed_dim:
            raise trace_error("MultiheadAttention", f"expected embed_dim {self.embed_dim}, got {query.shape}")
        e, h, d = self.embed_dim, self.num_heads, self.head_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        q = F.linear(query, w[:e], b[:e] if b is not None else None)
        k = F.linear(key, w[e:2 * e], b[e:2 * e] if b is not None else None)
        v = F.linear(value, w[2 * e:], b[2 * e:] if b is not None else None)
        batch, length, source = q.shape[0], q.shape[1], k.shape[1]

        def heads(t: Tensor, n: int) -> Tensor:   # (B, n, E) -> (B, H, n, D)
            return t.reshape(batch, n, h, d).permute(0, 2, 1, 3)

        scores = (heads(q, length) * (1.0 / math.sqrt(d))) @ heads(k, source).mT
        mask = causal_mask(length) if is_causal and attn_mask is None else _additive_mask(attn_mask)
        if mask is not None:
            scores = scores + mask
        weights = F.softmax(scores, -1)
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


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": F.relu, "gelu": F.gelu}


class TransformerEncoderLayer(Module):
    """PyTorch's TransformerEncoderLayer: post-norm by default (norm_first=False).

    Differences from PyTorch's defaults: dropout is 0.0 (ask for it explicitly) and
    batch_first is True.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.0,
                 activation: str | Callable[[Tensor], Tensor] = "relu", layer_norm_eps: float = 1e-5,
                 batch_first: bool = True, norm_first: bool = False, bias: bool = True) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout, bias, batch_first)
        self.linear1 = Linear(d_model, dim_feedforward, bias)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, layer_norm_eps, bias=bias)
        self.norm2 = LayerNorm(d_model, layer_norm_eps, bias=bias)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.activation = _ACTIVATIONS[activation] if isinstance(activation, str) else activation

    def _self_attention(self, x: Tensor, mask, is_causal: bool) -> Tensor:
        out, _ = self.self_attn(x, x, x, attn_mask=mask, need_weights=False, is_causal=is_causal)
        return self.dropout1(out)

    def _feed_forward(self, x: Tensor) -> Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(self, src: Tensor, src_mask=None, is_causal: bool = False) -> Tensor:
        x = src
        if self.norm_first:
            x = x + self._self_attention(self.norm1(x), src_mask, is_causal)
            return x + self._feed_forward(self.norm2(x))
        x = self.norm1(x + self._self_attention(x, src_mask, is_causal))
        return self.norm2(x + self._feed_forward(x))


def clone_module(module: Module) -> Module:
    """A copy with its own persistent tensors holding the same values (like copy.deepcopy)."""
    twin = copy.copy(module)
    object.__setattr__(twin, "_parameters", {})
    object.__setattr__(twin, "_modules", {})
    for name, param in module._parameters.items():
        setattr(twin, name, Tensor(param.numpy(), name=param.name, requires_grad=param.requires_grad))
    for name, child in module._modules.items():
        setattr(twin, name, clone_module(child))
    return twin


class TransformerEncoder(Module):
    """A stack of `num_layers` copies of `encoder_layer` (PyTorch's names: layers.0. ...).

    Also accepts the shorthand `TransformerEncoder(num_layers=6, d_model=64,
    num_heads=4, ff_dim=128)`, which builds post-norm ReLU layers without dropout.
    """

    def __init__(self, encoder_layer: TransformerEncoderLayer | None = None, num_layers: int = 6,
                 norm: Module | None = None, *, d_model: int | None = None, num_heads: int | None = None,
                 ff_dim: int | None = None, dropout: float = 0.0, norm_first: bool = False) -> None:
        super().__init__()
        if encoder_layer is None:
            if d_model is None or num_heads is None:
                raise ValueError("TransformerEncoder needs encoder_layer, or d_model and num_heads")
            encoder_layer = TransformerEncoderLayer(d_model, num_heads, ff_dim or 4 * d_model, dropout,
                                                    norm_first=norm_first)
        self.layers = _LayerList([encoder_layer] + [clone_module(encoder_layer) for _ in range(num_layers - 1)])
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, src: Tensor, mask=None, is_causal: bool = False) -> Tensor:
        x = src
        for layer in self.layers:
            x = layer(x, mask, is_causal)
        return self.norm(x) if self.norm is not None else x


class _LayerList(Module):
    """A list of modules named 0, 1, ... (PyTorch's ModuleList naming)."""

    def __init__(self, modules: list[Module]) -> None:
        super().__init__()
        for i, module in enumerate(modules):
            setattr(self, str(i), module)

    def __iter__(self):
        return iter(self._modules.values())

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]
