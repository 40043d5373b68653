"""PyTorch ops composed of primitives: clamp, log1p, expm1, logsumexp, cumsum, masked_fill,
tril/triu, repeat, softmax/log_softmax.

Each is the torch function of the same name (input first, torch's argument names); the
Tensor methods call these. softmax, log_softmax and one_hot live here, below nn (which the
frontend may not import), so that Tensor methods can use them; nn/functional.py and
nn/losses.py call these. Being composites they fuse, run on every backend and get their
gradients from the primitives' VJP rules.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..ir.dtypes import FLOAT, INT
from .checks import check_indices
from .functions import iota, pad, where, window
from .tensor import Tensor, TensorLike, _shape_arg, as_tensor, is_scalar
from .trace import normalize_axis, trace_error

_INF = float("inf")


def clamp(input: Tensor, min: TensorLike | None = None, max: TensorLike | None = None) -> Tensor:  # noqa: A002
    """min(max(input, min), max) elementwise; `min`/`max` are scalars or broadcastable tensors.

    As in torch: nan stays nan, min > max gives max, and the gradient goes to `input` where
    min <= input <= max, else to the bound that was taken. Differences only at measure-zero
    points: where min == max and input < min the gradient goes to `min` (torch: nowhere), and
    a nan input passes its gradient on (torch: 0).
    """
    x = as_tensor(input)
    if min is None and max is None:
        raise trace_error("clamp", "At least one of 'min' or 'max' must not be None")
    out = x
    if min is not None:
        out = where(out.lt(min), min, out)   # nan < min is false: nan stays
    if max is not None:
        out = where(out.gt(max), max, out)
    return out


clip = clamp


def log1p(input: Tensor) -> Tensor:
    """log(1 + x), accurate near 0 where log(1 + x) rounds 1 + x away.

    For |x| < 1/2, with u = fl(1 + x): log1p(x) = log(u) - ((u - 1) - x) / u, the first-order
    correction for the rounding of u ((u - 1) - x is that rounding, exact in float32); its
    traced gradient 1/u + ((u - 1) - x)/u^2 is 1/(1 + x) to the same order. Elsewhere
    log(1 + x) is already accurate. The small branch reads x only where it is taken, so
    x = -1 or inf leave no 0 * inf in the gradient.
    """
    x = as_tensor(input).float()
    small = x.abs().lt(0.5)
    xs = where(small, x, 0.0)
    u = xs + 1.0
    corrected = u.log() - ((u - 1.0) - xs) / u
    return where(small, corrected, (x + 1.0).log())


def expm1(input: Tensor) -> Tensor:
    """exp(x) - 1, accurate near 0 where exp(x) - 1 cancels.

    For |x| < 1/2, with u = fl(exp(x)): exp(x) = u * exp(x - log(u)), so expm1(x) =
    (u - 1) + u * (x - log(u)) to second order in the rounding of u; the traced gradient is
    u * (1 + x - log(u)), i.e. exp(x) to the same order. Elsewhere exp(x) - 1 is accurate.
    """
    x = as_tensor(input).float()
    small = x.abs().lt(0.5)
    xs = where(small, x, 0.0)
    u = xs.exp()
    corrected = (u - 1.0) + u * (xs - u.log())
    return where(small, corrected, x.exp() - 1.0)


def logsumexp(input: Tensor, dim: int | Sequence[int], keepdim: bool = False) -> Tensor:
    """log(sum(exp(x))) over `dim`, shifted by the (detached) maximum so nothing overflows.

    As torch: an infinite maximum shifts by 0, so a row of -inf gives -inf and a row with
    +inf gives +inf; an empty dim gives -inf.
    """
    x = as_tensor(input).float()
    axes = x._axes("logsumexp", dim)
    if x.ndim == 0:
        return x
    if any(x.shape[a] == 0 for a in axes):
        return x.exp().sum(axes, keepdim).log()
    top = x.max(axes, keepdim=True).detach()
    shift = where(top.eq(_INF) + top.eq(-_INF), 0.0, top)
    out = (x - shift).exp().sum(axes, keepdim=True).log() + shift
    return out if keepdim else out.squeeze(axes)


def cumsum(input: Tensor, dim: int, *, dtype: Any = None) -> Tensor:
    """Running sums along `dim` by a log-step (Hillis-Steele) scan: ceil(log2 n) rounds of
    y += y shifted by 1, 2, 4, ... (a slice and a zero pad each), exact for int32.

    int32 input gives int32 (torch gives int64, which the devices do not have).
    """
    x = as_tensor(input)
    if dtype is not None:
        x = x.to(dtype)
    if x.ndim == 0:
        normalize_axis("cumsum", dim, 0)
        return x
    axis = normalize_axis("cumsum", dim, x.ndim)
    n = x.shape[axis]
    y, step = x, 1
    while step < n:
        y = y + _shift_along(y, axis, step)
        step *= 2
    return y


def _shift_along(y: Tensor, axis: int, step: int) -> Tensor:
    """y moved `step` places up `axis` (toward higher indices), zeros entering at the start."""
    stops = list(y.shape)
    stops[axis] -= step
    low = [0] * y.ndim
    low[axis] = step
    return pad(window(y, [0] * y.ndim, stops), low, [0] * y.ndim)


def masked_fill(input: Tensor, mask: Tensor, value: TensorLike) -> Tensor:
    """`value` where the int32 `mask` (our bool) is nonzero, else input; the shapes broadcast.

    `value` is a scalar or a 0-d tensor (whose gradient sums the filled places), as in torch;
    the result keeps input's dtype (a float value filling an int32 tensor is truncated).
    """
    x, mask = as_tensor(input), as_tensor(mask)
    if mask.dtype != INT:
        raise trace_error("masked_fill", f"the mask must be an int32 tensor (the bool of autodiff), "
                          f"got {mask.dtype} {mask.shape}")
    if not is_scalar(value):
        value = as_tensor(value)
        if value.ndim != 0:
            raise trace_error("masked_fill", "only supports a 0-dimensional value tensor, but got "
                              f"tensor with {value.ndim} dimension(s)")
    elif x.dtype == INT:
        value = int(value)
    out = where(mask, value, x)
    return out.to(x.dtype)


def tril(input: Tensor, diagonal: int = 0) -> Tensor:
    """The lower triangle (j - i <= diagonal) of the last two axes; zeros elsewhere."""
    return _triangle(as_tensor(input), diagonal, "tril", lower=True)


def triu(input: Tensor, diagonal: int = 0) -> Tensor:
    """The upper triangle (j - i >= diagonal) of the last two axes; zeros elsewhere."""
    return _triangle(as_tensor(input), diagonal, "triu", lower=False)


def _triangle(x: Tensor, diagonal: int, opname: str, lower: bool) -> Tensor:
    if x.ndim < 2:
        raise trace_error(opname, f"input tensor must have at least 2 dimensions, got {x.shape}")
    above = iota(x.shape, -1) - iota(x.shape, -2)   # j - i
    keep = above.le(int(diagonal)) if lower else above.ge(int(diagonal))
    return where(keep, x, 0)


def repeat(input: Tensor, *repeats: Any) -> Tensor:
    """Tensor.repeat: tile the tensor `repeats[i]` times along axis i (leading axes added)."""
    x = as_tensor(input)
    counts = _shape_arg(repeats)
    if len(counts) < x.ndim:
        raise trace_error("repeat", "Number of dimensions of repeat dims can not be smaller than "
                          f"number of dimensions of tensor ({counts} for shape {x.shape})")
    if any(c < 0 for c in counts):
        raise trace_error("repeat", f"repeats must be non-negative, got {counts}")
    shape = (1,) * (len(counts) - x.ndim) + x.shape
    # (1, s0, 1, s1, ...) expanded to (r0, s0, r1, s1, ...) and merged pairwise
    split = tuple(d for n in shape for d in (1, n))
    tiled = tuple(d for r, n in zip(counts, shape) for d in (r, n))
    out_shape = tuple(r * n for r, n in zip(counts, shape))
    if 0 in tiled:
        return window(x.reshape(-1), (0,), (0,)).reshape(out_shape)
    return x.reshape(split).expand_to(tiled, "repeat").reshape(out_shape)


def softmax(input: Tensor, dim: int, *, dtype: Any = None) -> Tensor:
    """torch.softmax / Tensor.softmax along `dim` (nn.functional.softmax is the same with a
    default dim of -1)."""
    x = _with_dtype(as_tensor(input), dtype, "softmax")
    if _empty_axis(x, dim, "softmax"):
        return x.float()   # no elements: nothing to normalize (and no maximum to shift by)
    # the max is a constant shift: detaching it keeps it out of the gradient, like PyTorch
    e = (x - x.max(dim, keepdim=True).detach()).exp()
    return e / e.sum(dim, keepdim=True)


def log_softmax(input: Tensor, dim: int, *, dtype: Any = None) -> Tensor:
    """torch.log_softmax / Tensor.log_softmax along `dim`."""
    x = _with_dtype(as_tensor(input), dtype, "log_softmax")
    if _empty_axis(x, dim, "log_softmax"):
        return x.float()
    shifted = x - x.max(dim, keepdim=True).detach()
    return shifted - shifted.exp().sum(dim, keepdim=True).log()


def _empty_axis(x: Tensor, dim: int, opname: str) -> bool:
    return x.ndim > 0 and x.shape[normalize_axis(opname, dim, x.ndim)] == 0


def _with_dtype(x: Tensor, dtype: Any, opname: str) -> Tensor:
    if dtype is None:
        return x
    if str(np.dtype(dtype)) != FLOAT:
        raise trace_error(opname, f"dtype must be float32 (the only float type), got {dtype}")
    return x.float()


__all__ = ["clamp", "clip", "log1p", "expm1", "logsumexp", "cumsum", "masked_fill", "tril", "triu",
           "repeat", "softmax", "log_softmax"]


def one_hot(target: Tensor, num_classes: int, opname: str = "one_hot") -> Tensor:
    """float32 one-hot rows of int32 class indices: shape target.shape + (num_classes,); a
    class outside [0, num_classes) raises at run time, as in torch (whose one_hot is int64)."""
    if target.dtype != INT:
        raise trace_error(opname, f"needs int32 class indices, got {target.dtype}")
    check_indices(target, num_classes, opname)
    classes = iota(target.shape + (num_classes,), -1)
    return target.unsqueeze(-1).eq(classes).float()
