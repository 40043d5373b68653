"""Indexing `t[1:3, :, 0, None, ...]` in terms of SLICE, RESHAPE and PAD, and `t[idx]` by GATHER.

Only unit-step SLICE is a primitive. A step s > 1 is a unit-step window padded
to a multiple of s, reshaped to (count, s) and sliced at column 0; this keeps
one slice primitive (and one VJP rule, PAD) for every backend. One advanced
index (an int32 tensor, a list or an int array) per indexing gathers along its
axis as torch does: the index's axes take the place of the indexed axis.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .functions import gather_rows, pad, where, window
from ..ir.dtypes import INT
from .tensor import Tensor
from .trace import trace_error

_MASK_HINT = ("a boolean mask selects a data-dependent number of elements, which a traced "
              "program cannot; use ad.where(mask, t, 0) or multiply by the mask")


def getitem(x: Tensor, index: Any) -> Tensor:
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

    advanced = [i for i, item in enumerate(items) if _is_advanced(item)]
    if len(advanced) > 1:
        raise trace_error("getitem", f"only one list or tensor index per indexing is supported, got "
                          f"{len(advanced)} into {x.shape}; index one axis at a time")
    if advanced:
        at = advanced[0]
        in_axis = sum(1 for item in items[:at] if item is not None)
        indices = _index_tensor(items[at], x.shape[in_axis], in_axis, x.shape)
        # the basic indexing first, keeping the advanced axis whole, then the gather along it
        out_axis = sum(1 for item in items[:at] if item is None or isinstance(item, slice))
        items[at] = slice(None)
        return take_along(_basic(x, items), out_axis, indices)
    return _basic(x, items)


def _is_advanced(item: Any) -> bool:
    return isinstance(item, (Tensor, list, np.ndarray))


def _index_tensor(item: Any, size: int, axis: int, shape: tuple[int, ...]) -> Tensor:
    """An int32 tensor of positions along an axis of `size`, negative ones wrapped like torch."""
    if isinstance(item, Tensor):
        if item.dtype != INT:
            raise trace_error("getitem", f"tensor indices must be int32, got {item.dtype} {item.shape} "
                              f"into {shape}; {_MASK_HINT}")
        return where(item.lt(0), item + size, item)
    array = np.asarray(item)
    if array.dtype.kind == "b":
        raise trace_error("getitem", f"boolean index into {shape}: {_MASK_HINT}")
    if array.dtype.kind not in "iu" and array.size:
        raise trace_error("getitem", f"list and array indices must be integers, got {array.dtype}")
    array = array.astype(np.int64)
    if array.size and not (-size <= array.min() and array.max() < size):
        raise trace_error("getitem", f"index {array.tolist()} is out of range for axis {axis} of size "
                          f"{size} (shape {shape})")
    return Tensor(np.where(array < 0, array + size, array).astype(np.int32), name="index",
                  requires_grad=False)


def take_along(x: Tensor, axis: int, indices: Tensor) -> Tensor:
    """x[..., indices, ...] with `indices` (int32, in range) on `axis`: the shape
    x.shape[:axis] + indices.shape + x.shape[axis + 1:], by one row gather."""
    rest = x.shape[:axis] + x.shape[axis + 1:]
    moved = x.permute((axis,) + tuple(i for i in range(x.ndim) if i != axis))
    table = moved.reshape(x.shape[axis], int(np.prod(rest, dtype=np.int64)))
    rows = gather_rows(table, indices, "index").reshape(indices.shape + rest)
    k = indices.ndim   # rows: the index axes, then the other axes of x in order
    perm = tuple(range(k, k + axis)) + tuple(range(k)) + tuple(range(k + axis, k + len(rest)))
    return rows.permute(perm)


def _basic(x: Tensor, items: list[Any]) -> Tensor:
    """Slices, ints and None (one item per axis of x, Ellipsis already expanded)."""
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
