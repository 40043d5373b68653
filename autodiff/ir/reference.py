"""Reference semantics of every pure op in numpy, keyed by `Op`.

This table is the executable specification: every other backend is tested
against it. Ops that need the runtime (reads of persistent tensors, Feeders,
loop indices, random numbers, Receivers, updates, loops) are handled by the
executor in `backends/numpy_graph.py`, which has its own table for them.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .ops import Op
from .graph import Node

Reference = Callable[[list[np.ndarray], Node], np.ndarray]


def _erf(x: np.ndarray) -> np.ndarray:
    try:
        from scipy.special import erf
        return erf(x).astype(np.float32)
    except ImportError:  # scipy is optional at run time: math.erf is exact but slow
        import math
        return np.vectorize(math.erf, otypes=[np.float64])(x).astype(np.float32)


def _lowest(dtype: str) -> float | int:
    return -np.inf if dtype == "float32" else np.iinfo(np.int32).min


def _f32(fn: Callable[..., np.ndarray]) -> Reference:
    """Elementwise op computed with numpy and kept in the node's dtype."""
    def run(xs: list[np.ndarray], node: Node) -> np.ndarray:
        with np.errstate(all="ignore"):  # inf/nan follow IEEE like the devices do
            return np.asarray(fn(*xs)).astype(node.dtype, copy=False)
    return run


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # C-style truncating division for int32, like OpenCL and CUDA
    if a.dtype.kind == "i":
        return (np.sign(a) * np.sign(b) * (np.abs(a) // np.maximum(np.abs(b), 1))).astype(a.dtype)
    return a / b


def _gather(xs: list[np.ndarray], node: Node) -> np.ndarray:
    # an index outside the table reads its nearest row, as the kernels do; the index check
    # the tracer adds before every gather reports it (frontend/checks.py)
    table, idx = xs
    return table[np.clip(idx, 0, max(table.shape[0] - 1, 0))]


def _scatter_add(xs: list[np.ndarray], node: Node) -> np.ndarray:
    # an index outside the rows adds nothing, as the kernels (it was reported by the check)
    idx, grad = xs
    out = np.zeros(node.shape, grad.dtype)
    flat, rows = idx.reshape(-1), grad.reshape(-1, grad.shape[-1])
    inside = (flat >= 0) & (flat < node.shape[0])
    np.add.at(out, flat[inside], rows[inside])
    return out


def _iota(xs: list[np.ndarray], node: Node) -> np.ndarray:
    axis = node.args.axis
    idx = np.arange(node.shape[axis], dtype=node.dtype)
    view = [1] * len(node.shape)
    view[axis] = node.shape[axis]
    return np.broadcast_to(idx.reshape(view), node.shape).copy()


def _sum(xs: list[np.ndarray], n: Node) -> np.ndarray:
    """A float sum accumulates in float64: numpy sums pairwise only along a contiguous axis, and
    a column sum over 262,144 rows of 0.1 added row by row in float32 was 0.25% off."""
    if n.dtype != "float32":
        return np.sum(xs[0], axis=n.args.axes, keepdims=True, dtype=n.dtype)
    return np.sum(xs[0], axis=n.args.axes, keepdims=True, dtype=np.float64).astype(np.float32)


def _argmax(xs: list[np.ndarray], node: Node) -> np.ndarray:
    # first index of the maximum, like torch and numpy
    return np.argmax(xs[0], axis=node.args.axis, keepdims=True).astype(np.int32)


REFERENCE: dict[Op, Reference] = {
    Op.CONST: lambda xs, n: np.full(n.shape, n.args.value, n.dtype),
    Op.IOTA: _iota,
    Op.NEG: _f32(np.negative),
    Op.EXP: _f32(np.exp),
    Op.LOG: _f32(np.log),
    Op.SQRT: _f32(np.sqrt),
    Op.RECIP: _f32(np.reciprocal),
    Op.SIN: _f32(np.sin),
    Op.COS: _f32(np.cos),
    Op.TANH: _f32(np.tanh),
    Op.ERF: lambda xs, n: _erf(xs[0]),
    Op.CAST: lambda xs, n: (np.trunc(xs[0]) if n.dtype == "int32" else xs[0]).astype(n.dtype),
    Op.DETACH: lambda xs, n: xs[0],
    Op.ADD: _f32(np.add),
    Op.SUB: _f32(np.subtract),
    Op.MUL: _f32(np.multiply),
    Op.DIV: _f32(_int_div),
    Op.POW: _f32(np.power),
    Op.MAXIMUM: _f32(np.maximum),
    Op.MINIMUM: _f32(np.minimum),
    Op.LT: _f32(np.less),
    Op.GT: _f32(np.greater),
    Op.EQ: _f32(np.equal),
    Op.WHERE: lambda xs, n: np.where(xs[0] != 0, xs[1], xs[2]),
    Op.SUM: _sum,
    # over an empty axis: -inf (the lowest int), as the kernels give
    Op.MAX: lambda xs, n: np.max(xs[0], axis=n.args.axes, keepdims=True, initial=_lowest(n.dtype)),
    Op.ARGMAX: _argmax,
    Op.DOT: lambda xs, n: np.matmul(xs[0], xs[1]),
    Op.RESHAPE: lambda xs, n: xs[0].reshape(n.shape),
    Op.PERMUTE: lambda xs, n: np.transpose(xs[0], n.args.perm),
    Op.EXPAND: lambda xs, n: np.broadcast_to(xs[0], n.shape),
    Op.SLICE: lambda xs, n: xs[0][tuple(slice(a, b) for a, b in zip(n.args.starts, n.args.stops))],
    Op.PAD: lambda xs, n: np.pad(xs[0], list(zip(n.args.low, n.args.high))),
    Op.CONCAT: lambda xs, n: np.concatenate(xs, axis=n.args.axis),
    Op.GATHER: _gather,
    Op.SCATTER_ADD: _scatter_add,
}


def random_uniform(seed: int, counter: int, shape: tuple[int, ...]) -> np.ndarray:
    """Counter-based uniform [0, 1) numbers: a hash of (seed, counter, element index).

    The same integer hash is rendered in the device kernels, so every backend
    draws the same numbers; each execution of a RANDOM node bumps `counter`.
    """
    n = int(np.prod(shape, dtype=np.int64))
    return hash_uniform(seed, np.asarray(counter), np.arange(n)).reshape(shape)


def hash_uniform(seed: int, counter: np.ndarray, element: np.ndarray) -> np.ndarray:
    """uniform [0, 1) = top 24 bits of mix(element ^ mix(seed ^ mix(counter))) * 2^-24."""
    counter = np.asarray(counter).astype(np.int64) & 0xFFFFFFFF
    element = np.asarray(element).astype(np.int64) & 0xFFFFFFFF
    key = _mix32(np.uint32(seed & 0xFFFFFFFF) ^ _mix32(counter.astype(np.uint32)))
    bits = _mix32(element.astype(np.uint32) ^ key)
    return (bits >> np.uint32(8)).astype(np.float32) * np.float32(2.0 ** -24)


def _mix32(x):
    """lowbias32 integer hash (uint32 arithmetic wraps like in C)."""
    x = np.array(x, dtype=np.uint32)
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint32(16))
        x = x * np.uint32(0x7FEB352D)
        x = x ^ (x >> np.uint32(15))
        x = x * np.uint32(0x846CA68B)
        x = x ^ (x >> np.uint32(16))
    return x
