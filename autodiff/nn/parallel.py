"""DistributedDataParallel: data-parallel training over MPI ranks, PyTorch's way.

Every rank holds a full copy of the model and trains on its own slice of each global batch
(`DataLoader` shards by rank). At construction rank 0's parameters and buffers are broadcast,
so every rank starts equal; after each `backward()` the gradients of the wrapped module are
averaged across ranks, so every rank takes the same optimizer step.

Gradients are averaged in buckets (`bucket_cap_mb`, 25 MB by default as in PyTorch), filled
in reverse parameter order, the order backward computes them. Each bucket is one
all_reduce graph node over its gradients (the host concatenates what it reads back); lowering starts it as soon as its
last gradient is computed and waits for it only before the optimizer reads it, so the
communication overlaps the rest of the backward pass (switch "collective_overlap").
"""
from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from .. import comm
from ..frontend.autodiff import AFTER_BACKWARD
from ..frontend.collectives import all_reduce_flat
from .module import Module

DEFAULT_BUCKET_CAP_MB = 25.0


class DistributedDataParallel(Module):
    """Wrap `module` for data parallelism: forward is the module's; gradients are averaged
    across ranks after every backward(). On one process it changes nothing."""

    def __init__(self, module: Module, bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB,
                 broadcast_parameters: bool = True) -> None:
        super().__init__()
        if bucket_cap_mb <= 0:
            raise ValueError(f"DistributedDataParallel: bucket_cap_mb must be positive, got {bucket_cap_mb}")
        self.module = module
        self.bucket_cap_bytes = int(bucket_cap_mb * 1024 * 1024)
        self.buckets: list[list[Any]] = []   # variables per bucket, as last built (for reports)
        if comm.world_size() == 1:
            return
        if broadcast_parameters:
            broadcast_state(module)
        self._hook = self._average_gradients   # kept alive by self; AFTER_BACKWARD holds it weakly
        AFTER_BACKWARD.append(weakref.WeakMethod(self._hook))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def _average_gradients(self, updated: list) -> None:
        """Replace the .grad of each of our parameters the backward() reached by its average
        over the ranks, one all_reduce per bucket."""
        touched = {id(v) for v in updated}
        variables = [p._var for p in reversed(self.module.parameters())
                     if id(p._var) in touched and p._var.grad is not None]
        self.buckets = bucket(variables, self.bucket_cap_bytes)
        for members in self.buckets:
            grads = [v.grad for v in members]
            averaged = all_reduce_flat(grads, "mean").reshape(-1)   # (one member keeps its shape)
            offset = 0
            for v, g in zip(members, grads):
                v.grad = averaged[offset:offset + g.numel()].reshape(g.shape)
                offset += g.numel()


def bucket(variables: list, cap_bytes: int) -> list[list]:
    """Consecutive variables in buckets of at most `cap_bytes` (a larger one alone); float32
    gradients only (an integer tensor has none)."""
    buckets: list[list] = []
    size = 0
    for v in variables:
        nbytes = int(np.prod(v.shape, dtype=np.int64)) * 4
        if not buckets or size + nbytes > cap_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(v)
        size += nbytes
    return buckets


def broadcast_state(module: Module, root: int = 0) -> None:
    """Rank `root`'s parameters and buffers on every rank (on the host, before any run)."""
    for _, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        var = tensor._var
        var.value = np.ascontiguousarray(comm.run("broadcast", var.value, root=root), dtype=var.value.dtype)
