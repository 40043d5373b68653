"""BatchNorm1d/2d and GroupNorm with PyTorch's arguments, parameters and buffers.

BatchNorm's running statistics are persistent buffers updated in place by the traced
forward (like an optimizer's state): a training step traced once inside `ir_for` updates
them at every iteration, on the device. The mode (`training`) is read while tracing:
call `eval()` before tracing the evaluation forward.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..frontend.trace import trace_error
from ..frontend.tensor import Tensor
from ..ir.dtypes import INT
from . import functional as F
from .module import Module, Parameter


def _no_device_or_dtype(cls: str, device: Any, dtype: Any) -> None:
    """torch's device= and dtype=: tensors here are float32 on the program's device."""
    for name, value in (("device", device), ("dtype", dtype)):
        if value is not None:
            raise trace_error(cls, f"the argument {name}={value!r} is not supported (parameters are "
                              "float32, and the device is chosen by execute())")


class _BatchNorm(Module):
    """Shared by BatchNorm1d and BatchNorm2d, which differ only in the input ranks they accept."""

    ranks: tuple[int, ...] = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device: Any = None,
                 dtype: Any = None, *, bias: bool = True) -> None:
        super().__init__()
        _no_device_or_dtype(type(self).__name__, device, dtype)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = Parameter(np.ones(num_features, np.float32), name="weight") if affine else None
        self.bias = Parameter(np.zeros(num_features, np.float32), name="bias") if affine and bias else None
        if track_running_stats:
            self.register_buffer("running_mean", Tensor(np.zeros(num_features, np.float32), name="running_mean"))
            self.register_buffer("running_var", Tensor(np.ones(num_features, np.float32), name="running_var"))
            self.register_buffer("num_batches_tracked",
                                 Tensor(np.zeros((), np.int32), name="num_batches_tracked", dtype=INT))
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)

    def reset_running_stats(self) -> None:
        """Host-side reset (the next execute() starts from it), as torch's method."""
        if self.track_running_stats:
            self.running_mean._var.value = np.zeros(self.num_features, np.float32)
            self.running_var._var.value = np.ones(self.num_features, np.float32)
            self.num_batches_tracked._var.value = np.zeros((), np.int32)

    def forward(self, x: Tensor) -> Tensor:
        name = type(self).__name__
        if x.ndim not in self.ranks:
            expected = " or ".join(f"{r}D" for r in self.ranks)
            raise trace_error(name, f"expected {expected} input (got {x.ndim}D input)")
        if x.shape[1] != self.num_features:
            raise trace_error(name, f"input {x.shape} has {x.shape[1]} channels, expected {self.num_features}")
        factor: float | Tensor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:   # cumulative moving average: 1 / batches seen so far
                factor = self.num_batches_tracked.float().reciprocal()
        # torch: batch statistics while training, and in eval without running statistics
        use_batch = self.training or not self.track_running_stats
        update = not self.training or self.track_running_stats
        return F.batch_norm(x, self.running_mean if update else None, self.running_var if update else None,
                            self.weight, self.bias, use_batch, factor, self.eps)


class BatchNorm1d(_BatchNorm):
    """torch's BatchNorm1d over (N, C) or (N, C, L)."""

    ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    """torch's BatchNorm2d over (N, C, H, W)."""

    ranks = (4,)


class GroupNorm(Module):
    """torch's GroupNorm: weight (ones) and bias (zeros) per channel."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device: Any = None, dtype: Any = None, *, bias: bool = True) -> None:
        super().__init__()
        _no_device_or_dtype("GroupNorm", device, dtype)
        if num_groups <= 0 or num_channels % num_groups:
            raise ValueError("num_channels must be divisible by num_groups")
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, affine
        self.weight = Parameter(np.ones(num_channels, np.float32), name="weight") if affine else None
        self.bias = Parameter(np.zeros(num_channels, np.float32), name="bias") if affine and bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
