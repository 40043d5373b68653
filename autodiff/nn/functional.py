"""Functional forms of activations and losses, composed from primitive ops."""
from __future__ import annotations

import math
from typing import Sequence

from ..frontend.checks import check_indices
from ..frontend.functions import gather_rows, iota, random_uniform, where
from ..ir.dtypes import FLOAT, INT
from ..frontend.tensor import Tensor, as_tensor
from ..frontend.trace import normalize_axis, trace_error
# torch.nn.functional has the convolution and pooling forms too; they live in conv.py with
# their modules
from .conv import avg_pool2d, conv2d, max_pool2d  # noqa: F401


def relu(x: Tensor) -> Tensor:
    return x.relu()


def sigmoid(x: Tensor) -> Tensor:
    return x.sigmoid()


def tanh(x: Tensor) -> Tensor:
    return x.tanh()


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """GELU, exact (erf) or with PyTorch's tanh approximation."""
    if approximate == "tanh":
        inner = (x + x * x * x * 0.044715) * math.sqrt(2.0 / math.pi)
        return x * 0.5 * (inner.tanh() + 1)
    if approximate != "none":
        raise trace_error("gelu", f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return x * 0.5 * ((x * (1 / math.sqrt(2.0))).erf() + 1)


def silu(x: Tensor) -> Tensor:
    return x * x.sigmoid()


def _empty_axis(x: Tensor, dim: int, opname: str) -> bool:
    return x.ndim > 0 and x.shape[normalize_axis(opname, dim, x.ndim)] == 0


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    if _empty_axis(x, dim, "softmax"):
        return x.float()   # no elements: nothing to normalize (and no maximum to shift by)
    # the max is a constant shift: detaching it keeps it out of the gradient, like PyTorch
    shifted = x - x.max(dim, keepdim=True).detach()
    e = shifted.exp()
    return e / e.sum(dim, keepdim=True)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    if _empty_axis(x, dim, "log_softmax"):
        return x.float()
    shifted = x - x.max(dim, keepdim=True).detach()
    return shifted - shifted.exp().sum(dim, keepdim=True).log()


def one_hot(target: Tensor, num_classes: int, opname: str = "one_hot") -> Tensor:
    """float32 one-hot rows of int32 class indices: shape target.shape + (num_classes,); a
    class outside [0, num_classes) raises at run time, as in torch."""
    if target.dtype != INT:
        raise trace_error(opname, f"needs int32 class indices, got {target.dtype}")
    check_indices(target, num_classes, opname)
    classes = iota(target.shape + (num_classes,), -1)
    return target.unsqueeze(-1).eq(classes).float()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    out = x @ weight.T
    return out + bias if bias is not None else out


def layer_norm(x: Tensor, normalized_shape: Sequence[int] | int, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if x.shape[len(x.shape) - len(shape):] != shape:
        raise trace_error("layer_norm", f"normalized_shape {shape} does not end {x.shape}")
    axes = tuple(range(x.ndim - len(shape), x.ndim))
    mean = x.mean(axes, keepdim=True)
    centered = x - mean
    var = (centered * centered).mean(axes, keepdim=True)
    out = centered * (var + eps).rsqrt()
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def rms_norm(x: Tensor, normalized_shape: Sequence[int] | int, weight: Tensor | None = None,
             eps: float = 1.1920928955078125e-07) -> Tensor:
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    axes = tuple(range(x.ndim - len(shape), x.ndim))
    out = x * ((x * x).mean(axes, keepdim=True) + eps).rsqrt()
    return out * weight if weight is not None else out


def embedding(indices: Tensor, weight: Tensor) -> Tensor:
    """Rows of `weight` for int32 `indices` of any shape; the gradient adds up repeated rows."""
    if indices.dtype != INT:
        raise trace_error("embedding", f"needs int32 indices, got {indices.dtype} {indices.shape}")
    return gather_rows(weight, indices, "embedding")


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    if not 0 <= p <= 1:
        raise trace_error("dropout", f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0:
        return x
    if p == 1:   # every element dropped: x * 0 as torch computes it (nan and inf give nan)
        return x * 0.0
    keep = random_uniform(x.shape).ge(p)
    return x * keep * (1.0 / (1.0 - p))


# the losses live in losses.py with their modules
from .losses import (binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy, huber_loss,  # noqa: E402,F401
                     kl_div, l1_loss, mse_loss, nll_loss, smooth_l1_loss)
