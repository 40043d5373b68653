"""MultiheadAttention and the transformer encoder and decoder, with PyTorch's names,
defaults and shapes.

Every default is PyTorch's: dropout 0.1, batch_first=False (inputs are (S, N, E) unless
batch_first=True), post-norm; pass dropout=0.0 or call .eval() for a deterministic result.
scaled_dot_product_attention and the masks are in attention.py.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import numpy as np

from ..frontend.program import current_program
from ..frontend.tensor import Tensor
from ..frontend.trace import trace_error
from . import functional as F
from .attention import Mask, additive_mask, causal_mask, safe_softmax
from .init import uniform_parameter
from .layers import Dropout, LayerNorm, Linear
from .module import Module

__all__ = ["MultiheadAttention", "causal_mask", "TransformerEncoderLayer", "TransformerEncoder",
           "TransformerDecoderLayer", "TransformerDecoder", "Transformer"]


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
        """key_padding_mask (N, S) and attn_mask (L, S) or (N*H, L, S): True entries of a bool
        mask are ignored, a float mask is added. is_causal with no attn_mask masks the later
        keys (PyTorch asks for the mask as well)."""
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
        weights = F.softmax(scores, -1) if need_weights else safe_softmax(scores)
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


Activation = str | Callable[[Tensor], Tensor]
_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": F.relu, "gelu": F.gelu}


def _activation(activation: Activation) -> Callable[[Tensor], Tensor]:
    if not isinstance(activation, str):
        return activation
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation should be relu/gelu, not {activation}")
    return _ACTIVATIONS[activation]


def _attend(attention: MultiheadAttention, dropout: Dropout, x: Tensor, memory: Tensor, mask: Mask,
            padding: Mask, is_causal: bool) -> Tensor:
    """One attention block of a Transformer layer (x attends to memory), before its residual."""
    out, _ = attention(x, memory, memory, attn_mask=mask, key_padding_mask=padding, need_weights=False,
                       is_causal=is_causal)
    return dropout(out)


def _feed_forward(layer: "TransformerEncoderLayer | TransformerDecoderLayer", x: Tensor,
                  last_dropout: Dropout) -> Tensor:
    """linear2(dropout(activation(linear1(x)))) then dropout: the block both layers share."""
    return last_dropout(layer.linear2(layer.dropout(layer.activation(layer.linear1(x)))))


class TransformerEncoderLayer(Module):
    """PyTorch's TransformerEncoderLayer: self-attention then feed-forward, each with a
    residual; LayerNorm after each (norm_first=False) or before it (norm_first=True)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Activation = F.relu, layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout, bias, batch_first=batch_first)
        self.linear1 = Linear(d_model, dim_feedforward, bias)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, layer_norm_eps, bias=bias)
        self.norm2 = LayerNorm(d_model, layer_norm_eps, bias=bias)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.activation = _activation(activation)

    def _self_attention(self, x: Tensor, mask: Mask, padding: Mask, is_causal: bool) -> Tensor:
        return _attend(self.self_attn, self.dropout1, x, x, mask, padding, is_causal)

    def forward(self, src: Tensor, src_mask: Mask = None, src_key_padding_mask: Mask = None,
                is_causal: bool = False) -> Tensor:
        """is_causal=True with no src_mask masks out later positions (PyTorch wants the mask too)."""
        x = src
        if self.norm_first:
            x = x + self._self_attention(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + _feed_forward(self, self.norm2(x), self.dropout2)
        x = self.norm1(x + self._self_attention(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + _feed_forward(self, x, self.dropout2))


class TransformerDecoderLayer(Module):
    """PyTorch's TransformerDecoderLayer: self-attention on tgt, attention to memory, then
    feed-forward, each with a residual and a LayerNorm (after, or before with norm_first)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Activation = F.relu, layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout, bias, batch_first=batch_first)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout, bias, batch_first=batch_first)
        self.linear1 = Linear(d_model, dim_feedforward, bias)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, layer_norm_eps, bias=bias)
        self.norm2 = LayerNorm(d_model, layer_norm_eps, bias=bias)
        self.norm3 = LayerNorm(d_model, layer_norm_eps, bias=bias)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.dropout3 = Dropout(dropout)
        self.activation = _activation(activation)

    def _self_attention(self, x: Tensor, mask: Mask, padding: Mask, is_causal: bool) -> Tensor:
        return _attend(self.self_attn, self.dropout1, x, x, mask, padding, is_causal)

    def _memory_attention(self, x: Tensor, memory: Tensor, mask: Mask, padding: Mask, is_causal: bool) -> Tensor:
        return _attend(self.multihead_attn, self.dropout2, x, memory, mask, padding, is_causal)

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Mask = None, memory_mask: Mask = None,
                tgt_key_padding_mask: Mask = None, memory_key_padding_mask: Mask = None,
                tgt_is_causal: bool = False, memory_is_causal: bool = False) -> Tensor:
        x = tgt
        if self.norm_first:
            x = x + self._self_attention(self.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal)
            x = x + self._memory_attention(self.norm2(x), memory, memory_mask, memory_key_padding_mask,
                                           memory_is_causal)
            return x + _feed_forward(self, self.norm3(x), self.dropout3)
        x = self.norm1(x + self._self_attention(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal))
        x = self.norm2(x + self._memory_attention(x, memory, memory_mask, memory_key_padding_mask,
                                                  memory_is_causal))
        return self.norm3(x + _feed_forward(self, x, self.dropout3))


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


def _copies(layer: Module, num_layers: int) -> _LayerList:
    return _LayerList([layer] + [clone_module(layer) for _ in range(num_layers - 1)])


class TransformerEncoder(Module):
    """A stack of `num_layers` copies of `encoder_layer` (PyTorch's names: layers.0. ...).

    Also accepts the shorthand `TransformerEncoder(num_layers=6, d_model=64,
    num_heads=4, ff_dim=128)`, which is not PyTorch's: it builds post-norm ReLU layers
    without dropout that take batch-first (N, S, E) input.
    """

    def __init__(self, encoder_layer: TransformerEncoderLayer | None = None, num_layers: int = 6,
                 norm: Module | None = None, enable_nested_tensor: bool = True, mask_check: bool = True, *,
                 d_model: int | None = None, num_heads: int | None = None, ff_dim: int | None = None,
                 dropout: float = 0.0, norm_first: bool = False) -> None:
        """enable_nested_tensor and mask_check are PyTorch's fast-path switches: they change
        no result, so they are accepted and have no effect here."""
        super().__init__()
        if encoder_layer is None:
            if d_model is None or num_heads is None:
                raise ValueError("TransformerEncoder needs encoder_layer, or d_model and num_heads")
            encoder_layer = TransformerEncoderLayer(d_model, num_heads, ff_dim or 4 * d_model, dropout,
                                                    batch_first=True, norm_first=norm_first)
        self.layers = _copies(encoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, src: Tensor, mask: Mask = None, src_key_padding_mask: Mask = None,
                is_causal: bool | None = None) -> Tensor:
        x = src
        for layer in self.layers:
            x = layer(x, mask, src_key_padding_mask, bool(is_causal))
        return self.norm(x) if self.norm is not None else x


class TransformerDecoder(Module):
    """A stack of `num_layers` copies of `decoder_layer`, then `norm` if given."""

    def __init__(self, decoder_layer: TransformerDecoderLayer, num_layers: int, norm: Module | None = None) -> None:
        super().__init__()
        self.layers = _copies(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Mask = None, memory_mask: Mask = None,
                tgt_key_padding_mask: Mask = None, memory_key_padding_mask: Mask = None,
                tgt_is_causal: bool | None = None, memory_is_causal: bool = False) -> Tensor:
        x = tgt
        for layer in self.layers:
            x = layer(x, memory, tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask,
                      bool(tgt_is_causal), memory_is_causal)
        return self.norm(x) if self.norm is not None else x


def _xavier_reset(module: Module) -> None:
    """xavier_uniform_ on every parameter with two or more axes (PyTorch's Transformer init)."""
    rng = current_program().rng
    for _, param in module.named_parameters():
        shape = param.shape
        if len(shape) < 2:
            continue
        field = int(np.prod(shape[2:]))
        bound = math.sqrt(6.0 / (shape[1] * field + shape[0] * field))
        param._var.value = rng.uniform(-bound, bound, size=shape).astype(np.float32)


class Transformer(Module):
    """PyTorch's nn.Transformer: an encoder and a decoder stack, each ending in a LayerNorm."""

    def __init__(self, d_model: int = 512, nhead: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Activation = F.relu, custom_encoder: Module | None = None,
                 custom_decoder: Module | None = None, layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True) -> None:
        super().__init__()
        layer_args = (d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, batch_first,
                      norm_first, bias)
        self.encoder = custom_encoder if custom_encoder is not None else TransformerEncoder(
            TransformerEncoderLayer(*layer_args), num_encoder_layers,
            LayerNorm(d_model, eps=layer_norm_eps, bias=bias))
        self.decoder = custom_decoder if custom_decoder is not None else TransformerDecoder(
            TransformerDecoderLayer(*layer_args), num_decoder_layers,
            LayerNorm(d_model, eps=layer_norm_eps, bias=bias))
        _xavier_reset(self)
        self.d_model, self.nhead, self.batch_first = d_model, nhead, batch_first

    def forward(self, src: Tensor, tgt: Tensor, src_mask: Mask = None, tgt_mask: Mask = None,
                memory_mask: Mask = None, src_key_padding_mask: Mask = None, tgt_key_padding_mask: Mask = None,
                memory_key_padding_mask: Mask = None, src_is_causal: bool | None = None,
                tgt_is_causal: bool | None = None, memory_is_causal: bool = False) -> Tensor:
        batch_axis = 0 if self.batch_first else 1
        if src.ndim == 3 and src.shape[batch_axis] != tgt.shape[batch_axis]:
            raise trace_error("Transformer", f"the batch number of src {src.shape} and tgt {tgt.shape} must be equal")
        if src.shape[-1] != self.d_model or tgt.shape[-1] != self.d_model:
            raise trace_error("Transformer", f"the feature number of src {src.shape} and tgt {tgt.shape} must "
                              f"be equal to d_model {self.d_model}")
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask,
                              is_causal=src_is_causal)
        return self.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                            tgt_key_padding_mask=tgt_key_padding_mask,
                            memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal,
                            memory_is_causal=memory_is_causal)

    @staticmethod
    def generate_square_subsequent_mask(sz: int) -> Tensor:
        """The additive causal mask: -inf above the diagonal, 0 elsewhere."""
        return causal_mask(sz)
