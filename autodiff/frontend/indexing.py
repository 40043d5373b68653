"""Indexing `t[1:3, :, 0, None, ...]` in terms of SLICE, RESHAPE and PAD, and `t[idx]` by GATHER;
torch's index ops gather, scatter_add, flip and topk.

Only unit-step SLICE is a primitive. A step s > 1 is a unit-step window padded
to a multiple of s, reshaped to (count, s) and sliced at column 0; this keeps
one slice primitive (and one VJP rule, PAD) for every backend. One advanced
index (an int32 tensor, a list or an int array) per indexing gathers along its
axis as torch does: the index's axes take the place of the indexed axis.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

from .checks import check_indices
from .functions import concat, gather_rows, iota, pad, where, window
from ..ir.dtypes import INT
from .tensor import Tensor, as_tensor, constant
from .trace import normalize_axis, trace_error

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


def take_along(x: Tensor, axis: int, indices: Tensor, check: bool = True) -> Tensor:
    """x[..., indices, ...] with `indices` (int32, in range) on `axis`: the shape
    x.shape[:axis] + indices.shape + x.shape[axis + 1:], by one row gather (`check`: add the
    run-time index check)."""
    rest = x.shape[:axis] + x.shape[axis + 1:]
    moved = x.permute((axis,) + tuple(i for i in range(x.ndim) if i != axis))
    table = moved.reshape(x.shape[axis], int(np.prod(rest, dtype=np.int64)))
    rows = gather_rows(table, indices, "index", check).reshape(indices.shape + rest)
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


# --- torch's index ops ------------------------------------------------------------
#
# gather and scatter_add pick a different position along `dim` for every element, which the
# row GATHER primitive cannot say without flattening the tensor into a (numel, 1) table; its
# VJP (SCATTER_ADD) then costs numel(input) * numel(index). Comparing the index with an iota
# along `dim` costs size(dim) * numel(index) both ways and fuses into one reduction.


def gather(input: Tensor, dim: int, index: Tensor, *, sparse_grad: bool = False) -> Tensor:
    """out[i][j][k] = input[i][index[i][j][k]][k] for dim 1 (torch.gather): int32 `index` of
    input's rank, no larger than input off `dim`; an index outside [0, size) raises at run
    time (checks.py)."""
    if sparse_grad:
        raise trace_error("gather", "sparse_grad=True is not supported (gradients are dense)")
    x, index = as_tensor(input), as_tensor(index)
    axis = _check_index_shape("gather", x, dim, index)
    if x.ndim == 0:
        return gather(x.reshape(1), 0, index.reshape(-1)).reshape(index.shape)
    if index.numel():   # (check_indices cannot reduce an empty index)
        check_indices(index, x.shape[axis], "gather")
    return _gather_along(x, axis, index)


def _gather_along(x: Tensor, axis: int, index: Tensor) -> Tensor:
    """gather without checks: sum over `axis` of x where the index names the position."""
    size = x.shape[axis]
    stops = list(index.shape)
    stops[axis] = size
    picked = window(x, [0] * x.ndim, stops).unsqueeze(axis)      # (..., 1, size, ...)
    positions = index.shape[:axis + 1] + (size,) + index.shape[axis + 1:]
    hit = index.unsqueeze(axis + 1).eq(iota(positions, axis + 1))  # (..., n, size, ...)
    return where(hit, picked, 0).sum(axis + 1)


def scatter_add(input: Tensor, dim: int, index: Tensor, src: Tensor) -> Tensor:
    """input with src[i][j][k] added at [index[i][j][k]][j][k] for dim 0 (torch.scatter_add);
    repeated indices add up; only src's index-shaped corner is read."""
    x, index, src = as_tensor(input), as_tensor(index), as_tensor(src)
    axis = _check_index_shape("scatter_add", x, dim, index)
    if src.ndim != index.ndim or any(i > s for i, s in zip(index.shape, src.shape)):
        raise trace_error("scatter_add", f"Expected index {index.shape} to be smaller than src "
                          f"{src.shape} in every dimension")
    if src.dtype != x.dtype:
        raise trace_error("scatter_add", f"Expected self.dtype to be equal to src.dtype "
                          f"({x.dtype} and {src.dtype})")
    if x.ndim == 0:
        return scatter_add(x.reshape(1), 0, index.reshape(1), src.reshape(1)).reshape(())
    if index.numel():
        check_indices(index, x.shape[axis], "scatter_add")
    size = x.shape[axis]
    values = window(src, [0] * src.ndim, index.shape).unsqueeze(axis)  # (..., 1, n, ...)
    targets = index.shape[:axis] + (size,) + index.shape[axis:]
    hit = index.unsqueeze(axis).eq(iota(targets, axis))               # (..., size, n, ...)
    added = where(hit, values, 0).sum(axis + 1)                       # (..., size, ...)
    high = [s - n for s, n in zip(x.shape, added.shape)]
    return x + pad(added, [0] * x.ndim, high)


def _check_index_shape(opname: str, x: Tensor, dim: int, index: Tensor) -> int:
    """torch's rules for gather/scatter index tensors; returns the normalized axis."""
    shape = x.shape
    if index.dtype != INT:
        raise trace_error(opname, f"index must be an int32 tensor, got {index.dtype} {index.shape}")
    axis = normalize_axis(opname, dim, x.ndim)
    if index.ndim != max(x.ndim, 1) and not (x.ndim == 0 and index.ndim == 0):
        raise trace_error(opname, f"Index tensor must have the same number of dimensions as input "
                          f"tensor ({index.shape} for {shape})")
    if any(i > s for a, (i, s) in enumerate(zip(index.shape, shape)) if a != axis):
        raise trace_error(opname, f"Size does not match at a dimension other than {dim}: index "
                          f"{index.shape}, input {shape}")
    if x.ndim and shape[axis] == 0 and index.numel():
        raise trace_error(opname, f"index out of range: dim {dim} of {shape} is empty")
    return axis


def flip(input: Tensor, dims: int | Sequence[int]) -> Tensor:
    """Reverse the order of elements along each of `dims` (a row gather per axis)."""
    x = as_tensor(input)
    axes = x._axes("flip", dims)
    for axis in axes:
        n = x.shape[axis]
        if n > 1:
            x = take_along(x, axis, (n - 1) - iota((n,), 0), check=False)
    return x


class TopK(NamedTuple):
    """torch.return_types.topk: the k values and their int32 positions along `dim`."""
    values: Tensor
    indices: Tensor


def topk(input: Tensor, k: int, dim: int = -1, largest: bool = True, sorted: bool = True) -> TopK:  # noqa: A002
    """The k largest (or smallest) elements along `dim`, in order, with their int32 indices.

    k rounds of argmax with the chosen positions masked out, then one gather: O(k * n) work,
    meant for small k. Ties go to the lower index. `sorted=False` also returns them sorted
    (torch leaves that order unspecified). nan is not ordered as torch does (torch puts it
    first); int32 values above 2**24 are ordered as their float32 roundings.
    """
    x = as_tensor(input)
    if x.ndim == 0:
        normalize_axis("topk", dim, 0)
        if k not in (0, 1):
            raise trace_error("topk", f"selected index k out of range (k={k} for a 0-d tensor)")
        found = topk(x.reshape(1), k, 0, largest, sorted)
        return TopK(found.values.reshape(()), found.indices.reshape(())) if k else found
    axis = normalize_axis("topk", dim, x.ndim)
    if not 0 <= k <= x.shape[axis]:
        raise trace_error("topk", f"selected index k out of range (k={k} for dim {dim} of {x.shape})")
    out_shape = x.shape[:axis] + (k,) + x.shape[axis + 1:]
    if k == 0:
        return TopK(_gather_along(x, axis, constant(0, out_shape, INT)), constant(0, out_shape, INT))
    keys = (x if largest else -x).float().detach()
    positions = iota(x.shape, axis)
    taken = constant(0, x.shape, INT)
    chosen = []
    for _ in range(k):
        left = where(taken, -float("inf"), keys)
        best = left.argmax(axis, keepdim=True)
        # when only -inf is left, argmax can name a taken -inf: take the first free one then
        stuck = left.max(axis, keepdim=True).eq(-float("inf"))
        best = where(stuck, (1 - taken).argmax(axis, keepdim=True), best)
        taken = taken + positions.eq(best)
        chosen.append(best)
    indices = concat(chosen, axis)
    return TopK(_gather_along(x, axis, indices), indices)
