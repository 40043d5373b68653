"""Basic indexing `t[1:3, :, 0, None, ...]` in terms of SLICE, RESHAPE and PAD.

Only unit-step SLICE is a primitive. A step s > 1 is a unit-step window padded
to a multiple of s, reshaped to (count, s) and sliced at column 0; this keeps
one slice primitive (and one VJP rule, PAD) for every backend. An int32 tensor
index on a 2-D table gathers rows (an embedding lookup).
"""
from __future__ import annotations

from typing import Any

from .functions import gather_rows, pad, window
from ..ir.dtypes import INT
from .tensor import Tensor
from .trace import trace_error


def getitem(x: Tensor, index: Any) -> Tensor:
    if isinstance(index, Tensor):
        if index.dtype != INT or x.ndim != 2:
            raise trace_error("getitem", f"tensor indices must be int32 into a 2-D table, got "
                              f"{index.dtype} {index.shape} into {x.shape}")
        return gather_rows(x, index, "index")
    items = list(index) if isinstance(index, tuple) else [index]
    if sum(item is Ellipsis for item in items) > 1:
        raise trace_error("getitem", "only one ... allowed")
    consumed = sum(1 for item in items if item is not None and item is not Ellipsis)
    if consumed > x.ndim:
        raise trace_error("getitem", f"too many indices ({consumed}) for shape {x.shape}")
    if any(item is Ellipsis for item in items):
        at = next(i for i, item in enumerate(items) if item is Ellipsis)
        items[at:at + 1] = [slice(None)] * (x.ndim - consumed)
    else:
        items += [slice(None)] * (x.ndim - consumed)

    starts, stops, steps = [], [], []
    out_shape: list[int] = []   # final shape, with None axes and without int axes
    axis = 0
    for item in items:
        if item is None:
            out_shape.append(1)
            continue
        size = x.shape[axis]
        if isinstance(item, slice):
            start, stop, step = item.indices(size)
            if step <= 0:
                raise trace_error("getitem", f"slice step must be positive, got {step}")
            count = max(0, (stop - start + step - 1) // step)
            starts.append(start)
            stops.append(start + (count - 1) * step + 1 if count else start)
            steps.append(step)
            out_shape.append(count)
        elif isinstance(item, int) or hasattr(item, "__index__"):
            i = int(item)
            if not -size <= i < size:
                raise trace_error("getitem", f"index {i} is out of range for axis {axis} of size {size}")
            i %= size
            starts.append(i)
            stops.append(i + 1)
            steps.append(1)
        else:
            raise trace_error("getitem", f"unsupported index {item!r}")
        axis += 1

    y = window(x, starts, stops)
    for axis, step in enumerate(steps):
        if step > 1 and y.shape[axis] > 1:
            y = _every_step(y, axis, step)
    return y.reshape(tuple(out_shape))


def _every_step(y: Tensor, axis: int, step: int) -> Tensor:
    """Every step-th element along `axis` of y (whose length is (count-1)*step + 1)."""
    count = (y.shape[axis] - 1) // step + 1
    high = [0] * y.ndim
    high[axis] = count * step - y.shape[axis]
    if high[axis]:
        y = pad(y, [0] * y.ndim, high)
    split = y.reshape(y.shape[:axis] + (count, step) + y.shape[axis + 1:])
    starts = [0] * split.ndim
    stops = list(split.shape)
    stops[axis + 1] = 1
    picked = window(split, starts, stops)
    return picked.reshape(y.shape[:axis] + (count,) + y.shape[axis + 1:])
