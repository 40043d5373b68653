"""Functional forms of activations and losses, composed from primitive ops."""
from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

from ..frontend import composites
from ..frontend.functions import gather_rows, random_uniform, where
from ..ir.dtypes import INT
from ..frontend.tensor import Tensor
from ..frontend.trace import trace_error
# torch.nn.functional has the convolution and pooling forms too; they live in conv.py with
# their modules
from .conv import avg_pool2d, conv2d, max_pool2d  # noqa: F401


def relu(x: Tensor, inplace: bool = False) -> Tensor:
    return in_place(x, x.relu(), inplace)


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


def silu(x: Tensor, inplace: bool = False) -> Tensor:
    return in_place(x, x * x.sigmoid(), inplace)


def in_place(input: Tensor, result: Tensor, inplace: bool) -> Tensor:
    """torch's `inplace=True`: `input` itself now holds `result` (a persistent tensor is
    assigned; an intermediate's Tensor object is pointed at the result, so every Python
    reference to it sees the new value). Views taken of `input` before keep the old value,
    where torch's would change too."""
    if not inplace:
        return result
    if input.is_persistent:
        return input.assign(result)
    input._node = result.node
    return input


def leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    # where(x > 0, ...): the gradient at 0 is negative_slope, as torch's leaky_relu_backward
    return in_place(input, where(input.gt(0), input, input * negative_slope), inplace)


def elu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    positive = input.gt(0)
    # exp of the non-positive part only: exp(large x) in the unused branch would make
    # 0 * inf = nan in the gradient; at x == 0 the gradient is alpha, as in torch
    negative = where(positive, 0.0, input)
    return in_place(input, where(positive, input, (negative.exp() - 1) * alpha), inplace)


def softplus(input: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """log(1 + exp(beta x)) / beta, and x itself where beta x > threshold (torch's switch)."""
    scaled = input * beta
    linear = scaled.gt(threshold)
    safe = where(linear, 0.0, scaled)   # keeps exp finite in the branch not taken
    return where(linear, input, composites.log1p(safe.exp()) * (1.0 / beta))


def mish(input: Tensor, inplace: bool = False) -> Tensor:
    return in_place(input, input * softplus(input).tanh(), inplace)


def hardtanh(input: Tensor, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> Tensor:
    # <= and >=: the gradient is 0 at the bounds, as torch's hardtanh_backward
    if min_val > max_val:
        raise trace_error("hardtanh", f"min_val {min_val} must not exceed max_val {max_val}")
    clipped = where(input.le(min_val), min_val, where(input.ge(max_val), max_val, input))
    return in_place(input, clipped, inplace)


def relu6(input: Tensor, inplace: bool = False) -> Tensor:
    return in_place(input, hardtanh(input, 0.0, 6.0), inplace)


def hardswish(input: Tensor, inplace: bool = False) -> Tensor:
    """x * relu6(x + 3) / 6; the gradient is x/3 + 1/2 strictly inside (-3, 3), 0 at -3 and
    1 at 3 (torch's hardswish_backward)."""
    middle = input * (input + 3.0) * (1.0 / 6.0)
    return in_place(input, where(input.le(-3.0), 0.0, where(input.ge(3.0), input, middle)), inplace)


def _softmax_dim(x: Tensor, dim: int | None, opname: str) -> int:
    """torch's implicit dim for dim=None (0 for 0-, 1- and 3-d input, else 1), with its warning."""
    if dim is not None:
        return dim
    warnings.warn(f"Implicit dimension choice for {opname} has been deprecated. "
                  "Change the call to include dim=X as an argument.", stacklevel=3)
    return 0 if x.ndim in (0, 1, 3) else 1


def softmax(x: Tensor, dim: int | None = None, dtype: Any = None) -> Tensor:
    """torch.nn.functional.softmax: `dim=None` picks torch's implicit axis (with its warning)."""
    return composites.softmax(x, _softmax_dim(x, dim, "softmax"), dtype=dtype)


def log_softmax(x: Tensor, dim: int | None = None, dtype: Any = None) -> Tensor:
    return composites.log_softmax(x, _softmax_dim(x, dim, "log_softmax"), dtype=dtype)


one_hot = composites.one_hot


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


def _channel_shape(x: Tensor) -> tuple[int, ...]:
    """(1, C, 1, ...): a per-channel vector broadcast over (N, C, *)."""
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _affine(out: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    shape = _channel_shape(out)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
               momentum: "float | Tensor" = 0.1, eps: float = 1e-5) -> Tensor:
    """torch's batch_norm over (N, C, *): per channel, with the batch's statistics (biased
    variance) when training, else the running ones. Training also updates the given persistent
    running_mean / running_var in place on the device (running_var with the unbiased variance),
    so a loop traced once updates them at every iteration. `momentum` may be a traced 0-d
    tensor (BatchNorm's cumulative average passes 1 / num_batches_tracked)."""
    if input.ndim < 2:
        raise trace_error("batch_norm", f"expects (N, C, *) input, got {input.shape}")
    channels, shape = input.shape[1], _channel_shape(input)
    axes = (0,) + tuple(range(2, input.ndim))
    count = input.numel() // channels if channels else 0
    if not training:
        if running_mean is None or running_var is None:
            raise trace_error("batch_norm", "running_mean and running_var must be given when not training")
        centered = input - running_mean.reshape(shape)
        return _affine(centered * (running_var.reshape(shape) + eps).rsqrt(), weight, bias)
    if count == 1:
        raise trace_error("batch_norm", f"Expected more than 1 value per channel when training, "
                          f"got input size {input.shape}")
    if count == 0:   # torch: an empty batch gives an empty output and leaves the statistics
        return input * 1.0
    mean = input.mean(axes, keepdim=True)
    centered = input - mean
    var = (centered * centered).mean(axes, keepdim=True)
    if running_mean is not None:
        running_mean.assign(running_mean * (1 - momentum) + mean.detach().reshape(channels) * momentum)
    if running_var is not None:
        unbiased = var.detach().reshape(channels) * (count / (count - 1))
        running_var.assign(running_var * (1 - momentum) + unbiased * momentum)
    return _affine(centered * (var + eps).rsqrt(), weight, bias)


def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """torch's group_norm: (N, C, *) normalised over each group of C / num_groups channels
    (and all of *), biased variance, then a per-channel affine."""
    if input.ndim < 2:
        raise trace_error("group_norm", f"expects (N, C, *) input, got {input.shape}")
    n, channels = input.shape[0], input.shape[1]
    if num_groups <= 0 or channels % num_groups:
        raise trace_error("group_norm", f"Expected number of channels in input to be divisible by "
                          f"num_groups, but got input of shape {input.shape} and num_groups={num_groups}")
    per_group = channels // num_groups * math.prod(input.shape[2:])
    grouped = input.reshape(n, num_groups, per_group)
    mean = grouped.mean(2, keepdim=True)
    centered = grouped - mean
    var = (centered * centered).mean(2, keepdim=True)
    out = (centered * (var + eps).rsqrt()).reshape(input.shape)
    return _affine(out, weight, bias)


def embedding(indices: Tensor, weight: Tensor) -> Tensor:
    """Rows of `weight` for int32 `indices` of any shape; the gradient adds up repeated rows."""
    if indices.dtype != INT:
        raise trace_error("embedding", f"needs int32 indices, got {indices.dtype} {indices.shape}")
    return gather_rows(weight, indices, "embedding")


def dropout(x: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    if not 0 <= p <= 1:
        raise trace_error("dropout", f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0:
        return x
    if p == 1:   # every element dropped: x * 0 as torch computes it (nan and inf give nan)
        return in_place(x, x * 0.0, inplace)
    keep = random_uniform(x.shape).ge(p)
    return in_place(x, x * keep * (1.0 / (1.0 - p)), inplace)


from .attention import scaled_dot_product_attention  # noqa: E402,F401 - torch's F has it too
from .conv import adaptive_avg_pool2d, avg_pool1d, conv1d, conv_transpose2d, max_pool1d  # noqa: E402,F401
# the losses live in losses.py with their modules
from .losses import (binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy, huber_loss,  # noqa: E402,F401
                     kl_div, l1_loss, mse_loss, nll_loss, smooth_l1_loss)
