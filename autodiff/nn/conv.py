"""Conv2d and pooling through im2col: strided windows (views) stacked, then one matmul.

Each kernel offset (i, j) is a strided slice of the padded input, which the
lowering reads through access expressions, not copies; the windows are stacked
into (N, C*KH*KW, OH*OW) columns and multiplied by the (O, C*KH*KW) weights.
"""
from __future__ import annotations

import math


from ..frontend.functions import ones_like, pad, stack, where
from ..frontend.tensor import Tensor
from ..frontend.trace import trace_error
from .init import uniform_parameter
from .module import Module


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


Pads = tuple[tuple[int, int], tuple[int, int]]   # ((top, bottom), (left, right))


def _padding(padding: int | tuple[int, int] | str, kernel: tuple[int, int], stride: tuple[int, int],
             dilation: tuple[int, int], opname: str) -> Pads:
    """Padding before and after each spatial axis, from an int, a pair, "valid" or "same"."""
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        if stride != (1, 1):
            raise trace_error(opname, f"padding='same' is not supported for strided convolutions "
                              f"(stride {stride})")
        # torch: total d*(k-1) per axis, the odd element after (so the output keeps H and W)
        totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
        (th, tw) = totals
        return (th // 2, th - th // 2), (tw // 2, tw - tw // 2)
    if isinstance(padding, str):
        raise trace_error(opname, f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    ph, pw = _pair(padding)
    return (ph, ph), (pw, pw)


def _batched(x: Tensor, opname: str) -> tuple[Tensor, bool]:
    """(N, C, H, W) input, and whether it was unbatched (C, H, W), which torch also accepts."""
    if x.ndim == 3:
        return x.unsqueeze(0), True
    if x.ndim != 4:
        raise trace_error(opname, f"expects (N, C, H, W) or unbatched (C, H, W) input, got {x.shape}")
    return x, False


def _windows(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: Pads,
             dilation: tuple[int, int], opname: str, fill: float = 0.0) -> tuple[Tensor, int, int]:
    """(N, C, KH*KW, OH, OW): every kernel offset's strided view of the padded input."""
    (kh, kw), (sh, sw), ((top, bottom), (left, right)), (dh, dw) = kernel, stride, padding, dilation
    if top or bottom or left or right:
        low, high = (0, 0, top, left), (0, 0, bottom, right)
        padded = pad(x, low, high)
        if fill != 0.0:   # pooling pads with -inf: mark the border and fill it
            inside = pad(ones_like(x), low, high)
            padded = where(inside, padded, fill)
        x = padded
    height, width = x.shape[2], x.shape[3]
    out_h = (height - dh * (kh - 1) - 1) // sh + 1
    out_w = (width - dw * (kw - 1) - 1) // sw + 1
    if out_h <= 0 or out_w <= 0:
        raise trace_error(opname, f"kernel {kernel} (dilation {dilation}) does not fit the padded input {x.shape}")
    views = [x[:, :, i * dh: i * dh + (out_h - 1) * sh + 1: sh, j * dw: j * dw + (out_w - 1) * sw + 1: sw]
             for i in range(kh) for j in range(kw)]
    return stack(views, 2), out_h, out_w


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1,
           groups: int = 1) -> Tensor:
    """torch's conv2d: (N, C, H, W) or unbatched (C, H, W) input; padding an int, a pair,
    "valid" or "same"."""
    if weight.ndim != 4:
        raise trace_error("conv2d", f"weight must be (O, C/groups, KH, KW), got {weight.shape}")
    x, unbatched = _batched(x, "conv2d")
    out_channels, in_per_group, kh, kw = weight.shape
    n, channels = x.shape[0], x.shape[1]
    if channels != in_per_group * groups or out_channels % groups:
        raise trace_error("conv2d", f"input {x.shape} does not match weight {weight.shape} with groups={groups}")
    stride2, dilation2 = _pair(stride), _pair(dilation)
    pads = _padding(padding, (kh, kw), stride2, dilation2, "conv2d")
    cols, out_h, out_w = _windows(x, (kh, kw), stride2, pads, dilation2, "conv2d")
    # (N, C, K, OH, OW) -> (N, G, C/G * K, OH*OW): channel-major like the weight's layout
    cols = cols.reshape(n, groups, in_per_group * kh * kw, out_h * out_w)
    w = weight.reshape(groups, out_channels // groups, in_per_group * kh * kw)
    out = (w @ cols).reshape(n, out_channels, out_h, out_w)
    if bias is not None:
        out = out + bias.reshape(1, out_channels, 1, 1)
    return out.squeeze(0) if unbatched else out


def _pool_padding(padding: int | tuple[int, int]) -> Pads:
    ph, pw = _pair(padding)
    return (ph, ph), (pw, pw)


def max_pool2d(x: Tensor, kernel_size, stride=None, padding=0, dilation=1) -> Tensor:
    x, unbatched = _batched(x, "max_pool2d")
    kernel = _pair(kernel_size)
    cols, _, _ = _windows(x, kernel, _pair(stride if stride is not None else kernel_size),
                          _pool_padding(padding), _pair(dilation), "max_pool2d", fill=float("-inf"))
    out = cols.max(2)
    return out.squeeze(0) if unbatched else out


def avg_pool2d(x: Tensor, kernel_size, stride=None, padding=0) -> Tensor:
    """Average over each window, padding counted (PyTorch's count_include_pad=True)."""
    x, unbatched = _batched(x, "avg_pool2d")
    kernel = _pair(kernel_size)
    cols, _, _ = _windows(x, kernel, _pair(stride if stride is not None else kernel_size),
                          _pool_padding(padding), (1, 1), "avg_pool2d")
    out = cols.mean(2)
    return out.squeeze(0) if unbatched else out


class Conv2d(Module):
    """PyTorch's Conv2d: weight (O, C/groups, KH, KW), bias (O,), kaiming-uniform init."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        kh, kw = _pair(kernel_size)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: channels {in_channels}->{out_channels} not divisible by groups {groups}")
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        fan_in = in_channels // groups * kh * kw
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = uniform_parameter((out_channels, in_channels // groups, kh, kw), bound, "weight")
        self.bias = uniform_parameter((out_channels,), bound, "bias") if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation

    def forward(self, x: Tensor) -> Tensor:
        return max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation)


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class Flatten(Module):
    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(self.start_dim, self.end_dim)
