"""Conv2d and pooling through im2col: strided windows (views) stacked, then one matmul.

Each kernel offset (i, j) is a strided slice of the padded input, which the
lowering reads through access expressions, not copies; the windows are stacked
into (N, C*KH*KW, OH*OW) columns and multiplied by the (O, C*KH*KW) weights.
"""
from __future__ import annotations

import math

from ..frontend.functions import concat, ones_like, pad, stack, where, window
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
             dilation: tuple[int, int], opname: str, fill: float = 0.0,
             flipped: bool = False) -> tuple[Tensor, int, int]:
    """(N, C, KH*KW, OH, OW): every kernel offset's strided view of the padded input; with
    `flipped`, in reverse offset order (a convolution with the kernel turned by 180 degrees)."""
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
    return stack(views[::-1] if flipped else views, 2), out_h, out_w


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
    # (N, C, K, OH, OW) -> (G, C/G * K, N * OH*OW): channel-major like the weight's layout, and
    # the batch folded into the columns, so that the product is one (batched by group) matrix
    # product of plain operands that the tiled matmul kernel takes (a weight broadcast over N
    # made it a per-output loop reading the windows through their access expressions: 14x
    # slower on the CNN example)
    cols = cols.reshape(n, groups, in_per_group * kh * kw, out_h * out_w).permute(1, 2, 0, 3)
    cols = cols.reshape(groups, in_per_group * kh * kw, n * out_h * out_w)
    w = weight.reshape(groups, out_channels // groups, in_per_group * kh * kw)
    out = w @ cols
    if bias is not None:   # in the product's layout: the tiled kernel's epilogue
        out = out + bias.reshape(groups, out_channels // groups, 1)
    out = out.reshape(out_channels, n, out_h, out_w).permute(1, 0, 2, 3)
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


def _single(value: int | tuple[int], name: str, opname: str) -> int:
    if isinstance(value, int):
        return value
    if len(value) != 1:
        raise trace_error(opname, f"{name} must be an int or a 1-tuple, got {value!r}")
    return int(value[0])


def _batched1d(x: Tensor, opname: str) -> None:
    if x.ndim not in (2, 3):
        raise trace_error(opname, f"expects (N, C, L) or unbatched (C, L) input, got {x.shape}")


def conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1,
           groups: int = 1) -> Tensor:
    """torch's conv1d on (N, C, L) or (C, L): conv2d over a height-1 image."""
    _batched1d(x, "conv1d")
    if weight.ndim != 3:
        raise trace_error("conv1d", f"weight must be (O, C/groups, K), got {weight.shape}")
    pads = padding if isinstance(padding, str) else (0, _single(padding, "padding", "conv1d"))
    out = conv2d(x.unsqueeze(-2), weight.unsqueeze(-2), bias, (1, _single(stride, "stride", "conv1d")), pads,
                 (1, _single(dilation, "dilation", "conv1d")), groups)
    return out.squeeze(-2)


def _spread(x: Tensor, axis: int, step: int) -> Tensor:
    """step - 1 zeros between neighbours along `axis` (the input of a strided transposed conv)."""
    size = x.shape[axis]
    if step == 1 or size <= 1:
        return x
    low, high = [0] * (x.ndim + 1), [0] * (x.ndim + 1)
    high[axis + 1] = step - 1
    spaced = pad(x.unsqueeze(axis + 1), low, high)
    merged = spaced.reshape(x.shape[:axis] + (size * step,) + x.shape[axis + 1:])
    stops = list(merged.shape)
    stops[axis] = (size - 1) * step + 1
    return window(merged, [0] * x.ndim, stops)


def _pad_or_crop(x: Tensor, before: tuple[int, int], after: tuple[int, int]) -> Tensor:
    """Pad the last two axes by `before`/`after` elements; a negative amount crops instead."""
    grown = pad(x, (0, 0) + tuple(max(b, 0) for b in before), (0, 0) + tuple(max(a, 0) for a in after))
    starts = [0, 0] + [max(-b, 0) for b in before]
    stops = list(grown.shape[:2]) + [size - max(-a, 0) for size, a in zip(grown.shape[2:], after)]
    return window(grown, starts, stops)


def _output_padding(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                    dilation: tuple[int, int], output_padding, output_size) -> tuple[int, int]:
    """output_padding, or the one that makes the output `output_size` (checked as torch does)."""
    if output_size is None:
        extra = _pair(output_padding)
    else:
        wanted = tuple(output_size)[-2:]
        smallest = [(n - 1) * s - 2 * p + d * (k - 1) + 1
                    for n, s, p, d, k in zip(x.shape[2:], stride, padding, dilation, kernel)]
        extra = tuple(w - m for w, m in zip(wanted, smallest))
        if any(e < 0 or e >= s for e, s in zip(extra, stride)):   # torch's range for output_size
            raise trace_error("conv_transpose2d", f"requested an output_size of {tuple(output_size)}, but "
                              f"valid sizes range from {tuple(smallest)} to "
                              f"{tuple(m + s - 1 for m, s in zip(smallest, stride))}")
    if any(e < 0 or e >= max(s, d) for e, s, d in zip(extra, stride, dilation)):
        raise trace_error("conv_transpose2d", f"output_padding {extra} must be smaller than either stride "
                          f"{stride} or dilation {dilation}")
    return extra


def conv_transpose2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                     output_padding=0, groups: int = 1, dilation=1, output_size=None) -> Tensor:
    """torch's conv_transpose2d: the gradient of conv2d with respect to its input.

    Computed as zero insertion (stride - 1 zeros between input elements), padding by
    dilation * (kernel - 1) - padding (plus output_padding after), and a stride-1 conv2d
    with the flipped kernel. weight is (C_in, C_out/groups, KH, KW), PyTorch's layout.
    """
    if weight.ndim != 4:
        raise trace_error("conv_transpose2d", f"weight must be (C_in, C_out/groups, KH, KW), got {weight.shape}")
    x, unbatched = _batched(x, "conv_transpose2d")
    in_channels, out_per_group, kh, kw = weight.shape
    n = x.shape[0]
    if x.shape[1] != in_channels or in_channels % groups:
        raise trace_error("conv_transpose2d", f"input {x.shape} does not match weight {weight.shape} "
                          f"with groups={groups}")
    stride2, pads, dilation2 = _pair(stride), _pair(padding), _pair(dilation)
    extra = _output_padding(x, (kh, kw), stride2, pads, dilation2, output_padding, output_size)
    spread = _spread(_spread(x, 2, stride2[0]), 3, stride2[1])
    reach = [d * (k - 1) - p for d, k, p in zip(dilation2, (kh, kw), pads)]
    padded = _pad_or_crop(spread, (reach[0], reach[1]), (reach[0] + extra[0], reach[1] + extra[1]))
    cols, out_h, out_w = _windows(padded, (kh, kw), (1, 1), ((0, 0), (0, 0)), dilation2, "conv_transpose2d",
                                  flipped=True)
    in_per_group = in_channels // groups
    cols = cols.reshape(n, groups, in_per_group * kh * kw, out_h * out_w)
    w = weight.reshape(groups, in_per_group, out_per_group, kh * kw).permute(0, 2, 1, 3)
    w = w.reshape(groups, out_per_group, in_per_group * kh * kw)
    out = (w @ cols).reshape(n, groups * out_per_group, out_h, out_w)
    if bias is not None:
        out = out + bias.reshape(1, groups * out_per_group, 1, 1)
    return out.squeeze(0) if unbatched else out


def _adaptive_mean(x: Tensor, axis: int, size: int) -> Tensor:
    """Mean over torch's adaptive cells along `axis`: cell i spans
    [floor(i * n / size), ceil((i + 1) * n / size)), so cells overlap when size does not divide n."""
    n = x.shape[axis]
    if size == n:
        return x
    if size == 0:   # torch allows an empty output
        stops = list(x.shape)
        stops[axis] = 0
        return window(x, [0] * x.ndim, stops)
    if n % size == 0:
        return x.reshape(x.shape[:axis] + (size, n // size) + x.shape[axis + 1:]).mean(axis + 1)
    cells = []
    for i in range(size):
        starts, stops = [0] * x.ndim, list(x.shape)
        starts[axis], stops[axis] = (i * n) // size, -((-(i + 1) * n) // size)
        cells.append(window(x, starts, stops).mean(axis, keepdim=True))
    return concat(cells, axis)


def adaptive_avg_pool2d(x: Tensor, output_size) -> Tensor:
    """torch's adaptive_avg_pool2d on (N, C, H, W) or (C, H, W); None in output_size keeps that
    axis. A cell is a rectangle, so the mean over rows then over columns is its mean."""
    if x.ndim not in (3, 4):
        raise trace_error("adaptive_avg_pool2d", f"expects (N, C, H, W) or (C, H, W) input, got {x.shape}")
    sizes = (output_size, output_size) if output_size is None or isinstance(output_size, int) else output_size
    if len(sizes) != 2:
        raise trace_error("adaptive_avg_pool2d", f"output_size must be an int or a pair, got {output_size!r}")
    height, width = (x.shape[-2] if sizes[0] is None else int(sizes[0]),
                     x.shape[-1] if sizes[1] is None else int(sizes[1]))
    if x.shape[-2] == 0 or x.shape[-1] == 0 or height < 0 or width < 0:
        raise trace_error("adaptive_avg_pool2d", f"needs a non-empty image and output_size >= 0, got input "
                          f"{x.shape} and output_size {output_size!r}")
    return _adaptive_mean(_adaptive_mean(x, x.ndim - 2, height), x.ndim - 1, width)


def _pool1d_unsupported(opname: str, **flags: bool) -> None:
    for name, unsupported in flags.items():
        if unsupported:
            raise trace_error(opname, f"{name} is not supported")


def max_pool1d(x: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False) -> Tensor:
    """torch's max_pool1d: max_pool2d over a height-1 image."""
    _batched1d(x, "max_pool1d")
    _pool1d_unsupported("max_pool1d", ceil_mode=ceil_mode, return_indices=return_indices)
    kernel = _single(kernel_size, "kernel_size", "max_pool1d")
    step = kernel if stride is None else _single(stride, "stride", "max_pool1d")
    out = max_pool2d(x.unsqueeze(-2), (1, kernel), (1, step), (0, _single(padding, "padding", "max_pool1d")),
                     (1, _single(dilation, "dilation", "max_pool1d")))
    return out.squeeze(-2)


def avg_pool1d(x: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True) -> Tensor:
    """torch's avg_pool1d (padding counted): avg_pool2d over a height-1 image."""
    _batched1d(x, "avg_pool1d")
    _pool1d_unsupported("avg_pool1d", ceil_mode=ceil_mode, **{"count_include_pad=False": not count_include_pad})
    kernel = _single(kernel_size, "kernel_size", "avg_pool1d")
    step = kernel if stride is None else _single(stride, "stride", "avg_pool1d")
    out = avg_pool2d(x.unsqueeze(-2), (1, kernel), (1, step), (0, _single(padding, "padding", "avg_pool1d")))
    return out.squeeze(-2)


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


class Conv1d(Module):
    """PyTorch's Conv1d: weight (O, C/groups, K), bias (O,), kaiming-uniform init."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros") -> None:
        super().__init__()
        if padding_mode != "zeros":
            raise trace_error("Conv1d", f"padding_mode={padding_mode!r} is not supported (only 'zeros')")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv1d: channels {in_channels}->{out_channels} not divisible by groups {groups}")
        kernel = _single(kernel_size, "kernel_size", "Conv1d")
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        bound = 1.0 / math.sqrt(in_channels // groups * kernel)
        self.weight = uniform_parameter((out_channels, in_channels // groups, kernel), bound, "weight")
        self.bias = uniform_parameter((out_channels,), bound, "bias") if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return conv1d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ConvTranspose2d(Module):
    """PyTorch's ConvTranspose2d: weight (C_in, C_out/groups, KH, KW), bias (C_out,); its init
    draws from U(-b, b) with b = 1/sqrt(C_out/groups * KH * KW), PyTorch's fan_in of that layout."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 output_padding=0, groups: int = 1, bias: bool = True, dilation=1,
                 padding_mode: str = "zeros") -> None:
        super().__init__()
        if padding_mode != "zeros":
            raise trace_error("ConvTranspose2d", f"padding_mode={padding_mode!r} is not supported (only 'zeros')")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"ConvTranspose2d: channels {in_channels}->{out_channels} not divisible by "
                             f"groups {groups}")
        kh, kw = _pair(kernel_size)
        self.stride, self.padding, self.output_padding = stride, padding, output_padding
        self.groups, self.dilation = groups, dilation
        bound = 1.0 / math.sqrt(out_channels // groups * kh * kw)
        self.weight = uniform_parameter((in_channels, out_channels // groups, kh, kw), bound, "weight")
        self.bias = uniform_parameter((out_channels,), bound, "bias") if bias else None

    def forward(self, x: Tensor, output_size=None) -> Tensor:
        return conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding,
                                self.groups, self.dilation, output_size)


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, x: Tensor) -> Tensor:
        return adaptive_avg_pool2d(x, self.output_size)


class MaxPool1d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices: bool = False,
                 ceil_mode: bool = False) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.return_indices, self.ceil_mode = return_indices, ceil_mode

    def forward(self, x: Tensor) -> Tensor:
        return max_pool1d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                          self.return_indices)


class AvgPool1d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                 count_include_pad: bool = True) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def forward(self, x: Tensor) -> Tensor:
        return avg_pool1d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)
