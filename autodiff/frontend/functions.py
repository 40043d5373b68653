"""Free functions of the tracing API: creation, matmul, concat/stack, where."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..ir import ops as O
from ..ir.ops import Op
from .program import current_program
from ..ir.dtypes import FLOAT, INT
from .tensor import Tensor, TensorLike, _shape_arg, as_tensor, broadcast_operands, constant, is_scalar
from .checks import check_indices
from .trace import broadcast_shapes, make_leaf, make_node, normalize_axis, trace_error


# --- creation: persistent tensors -------------------------------------------------

def zeros(*shape: Any, dtype: str = FLOAT, name: str | None = None) -> Tensor:
    return Tensor(np.zeros(_shape_arg(shape), dtype), name=name)


def ones(*shape: Any, dtype: str = FLOAT, name: str | None = None) -> Tensor:
    return Tensor(np.ones(_shape_arg(shape), dtype), name=name)


def full(shape: Sequence[int], value: float, dtype: str = FLOAT, name: str | None = None) -> Tensor:
    return Tensor(np.full(tuple(shape), value, dtype), name=name)


def randn(*shape: Any, name: str | None = None) -> Tensor:
    """Standard normal values drawn from the program's generator (see manual_seed)."""
    return Tensor(current_program().rng.standard_normal(_shape_arg(shape)).astype(np.float32), name=name)


def rand(*shape: Any, name: str | None = None) -> Tensor:
    return Tensor(current_program().rng.random(_shape_arg(shape)).astype(np.float32), name=name)


def arange(start: float, stop: float | None = None, step: float = 1, dtype: str | None = None,
           name: str | None = None) -> Tensor:
    if stop is None:
        start, stop = 0, start
    values = np.arange(start, stop, step)
    dtype = dtype or (INT if values.dtype.kind in "iu" else FLOAT)
    return Tensor(values.astype(dtype), name=name, requires_grad=False)


def zeros_like(t: Tensor) -> Tensor:
    """A traced zero tensor of t's shape and dtype (a constant, not persistent)."""
    return constant(0, t.shape, t.dtype)


def ones_like(t: Tensor) -> Tensor:
    return constant(1, t.shape, t.dtype)


def full_like(t: Tensor, value: float) -> Tensor:
    return constant(value, t.shape, t.dtype)


def iota(shape: Sequence[int], dim: int, dtype: str = INT) -> Tensor:
    """A traced tensor whose value is its index along `dim` (e.g. class ids for one-hot)."""
    shape = tuple(shape)
    axis = normalize_axis("iota", dim, len(shape))
    return Tensor._wrap(make_leaf(Op.IOTA, shape, dtype, O.AxisArgs(axis)))


# --- combining ------------------------------------------------------------------

def matmul(a: TensorLike, b: TensorLike) -> Tensor:
    """numpy-style matmul: 1-D operands, batch broadcasting."""
    a, b = as_tensor(a), as_tensor(b)
    a, b = a.float(), b.float()
    if a.ndim == 0 or b.ndim == 0:
        raise trace_error("matmul", f"both operands need at least 1 dim, got {a.shape} and {b.shape}")
    squeeze_rows, squeeze_cols = a.ndim == 1, b.ndim == 1
    if squeeze_rows:
        a = a.reshape(1, a.shape[0])
    if squeeze_cols:
        b = b.reshape(b.shape[0], 1)
    if a.shape[-1] != b.shape[-2]:
        raise trace_error("matmul", f"shapes {a.shape} and {b.shape}: inner sizes "
                          f"{a.shape[-1]} and {b.shape[-2]} differ")
    if b.ndim == 2 and a.ndim > 2:
        # (..., M, K) @ (K, N) is one 2-D product over all rows: no batch copies of b
        rows = a.reshape(-1, a.shape[-1])
        out = Tensor._wrap(make_node(Op.DOT, [rows.node, b.node], O.NO_ARGS, "matmul"))
        out = out.reshape(a.shape[:-1] + (b.shape[-1],))
    else:
        batch = broadcast_shapes("matmul", a.shape[:-2], b.shape[:-2])
        a = a.expand_to(batch + a.shape[-2:], "matmul")
        b = b.expand_to(batch + b.shape[-2:], "matmul")
        out = Tensor._wrap(make_node(Op.DOT, [a.node, b.node], O.NO_ARGS, "matmul"))
    if squeeze_rows:
        out = out.squeeze(-2)
    if squeeze_cols:
        out = out.squeeze(-1)
    return out


def concat(tensors: Sequence[TensorLike], dim: int = 0) -> Tensor:
    tensors = [as_tensor(t) for t in tensors]
    if not tensors:
        raise trace_error("concat", "needs at least one tensor")
    if len(tensors) == 1:
        return tensors[0]
    if any(t.dtype != tensors[0].dtype for t in tensors):
        tensors = [t.float() for t in tensors]
    axis = normalize_axis("concat", dim, tensors[0].ndim)
    return Tensor._wrap(make_node(Op.CONCAT, [t.node for t in tensors], O.AxisArgs(axis), "concat"))


cat = concat


def stack(tensors: Sequence[TensorLike], dim: int = 0) -> Tensor:
    tensors = [as_tensor(t) for t in tensors]
    if not tensors:
        raise trace_error("stack", "needs at least one tensor")
    axis = normalize_axis("stack", dim, tensors[0].ndim + 1)
    if any(t.shape != tensors[0].shape for t in tensors):
        raise trace_error("stack", "needs equal shapes, got " + ", ".join(str(t.shape) for t in tensors))
    return concat([t.unsqueeze(axis) for t in tensors], axis)


def where(condition: TensorLike, x: TensorLike, y: TensorLike) -> Tensor:
    """x where `condition` is nonzero, else y, elementwise (like torch.where)."""
    if is_scalar(condition):
        # like torch.where, the condition must be a tensor: a Python bool here was decided
        # while tracing (e.g. by comparing non-tensors), so it cannot vary per element
        raise trace_error("where", f"the condition is a Python {type(condition).__name__} "
                          f"({condition!r}), not a tensor; choose in Python with "
                          "`x if condition else y`, or pass a tensor condition")
    cond = as_tensor(condition)
    # a Python scalar branch takes the other branch's dtype, not the condition's
    like = x if isinstance(x, Tensor) else y if isinstance(y, Tensor) else cond
    cond, x, y = broadcast_operands("where", [cond, x, y], like)
    if x.dtype != y.dtype:
        x, y = x.float(), y.float()
    return Tensor._wrap(make_node(Op.WHERE, [cond.node, x.node, y.node], O.NO_ARGS, "where"))


def maximum(a: TensorLike, b: TensorLike) -> Tensor:
    return as_tensor(a, b if isinstance(b, Tensor) else None).maximum(b)


def minimum(a: TensorLike, b: TensorLike) -> Tensor:
    return as_tensor(a, b if isinstance(b, Tensor) else None).minimum(b)


def gather_rows(table: Tensor, indices: Tensor, opname: str = "gather", check: bool = True) -> Tensor:
    """table[indices] for a (V, D) table and int32 indices of any shape: (..., D); an index
    outside the table raises at run time (checks.py)."""
    if check and indices.dtype == INT and table.ndim >= 1:
        check_indices(indices, table.shape[0], opname)
    return Tensor._wrap(make_node(Op.GATHER, [table.node, indices.node], O.NO_ARGS, "gather"))


def scatter_add_rows(indices: Tensor, values: Tensor, rows: int) -> Tensor:
    """Zeros (rows, D) with values[i] added into row indices[i] (repeats add up)."""
    return Tensor._wrap(make_node(Op.SCATTER_ADD, [indices.node, values.node], O.ScatterArgs(rows),
                                  "scatter_add"))


def pad(x: Tensor, low: Sequence[int], high: Sequence[int]) -> Tensor:
    """Zero padding: `low[i]` before and `high[i]` after axis i."""
    return Tensor._wrap(make_node(Op.PAD, [x.node], O.PadArgs(tuple(low), tuple(high)), "pad"))


def window(x: Tensor, starts: Sequence[int], stops: Sequence[int]) -> Tensor:
    """The unit-step slice x[starts[0]:stops[0], ...]."""
    starts, stops = tuple(starts), tuple(stops)
    if starts == (0,) * x.ndim and stops == x.shape:
        return x
    return Tensor._wrap(make_node(Op.SLICE, [x.node], O.SliceArgs(starts, stops), "slice"))


def random_uniform(shape: Sequence[int]) -> Tensor:
    """Uniform [0, 1) numbers, new at each execution (counter-based, seeded by manual_seed)."""
    seed = current_program().next_random_seed()
    return Tensor._wrap(make_leaf(Op.RANDOM, tuple(shape), FLOAT, O.RandomArgs(seed)))


# functional forms of the methods (ad.exp(x) like torch.exp(x))
def exp(x: Tensor) -> Tensor: return as_tensor(x).exp()
def log(x: Tensor) -> Tensor: return as_tensor(x).log()
def sqrt(x: Tensor) -> Tensor: return as_tensor(x).sqrt()
def rsqrt(x: Tensor) -> Tensor: return as_tensor(x).rsqrt()
def sin(x: Tensor) -> Tensor: return as_tensor(x).sin()
def cos(x: Tensor) -> Tensor: return as_tensor(x).cos()
def tanh(x: Tensor) -> Tensor: return as_tensor(x).tanh()
def sigmoid(x: Tensor) -> Tensor: return as_tensor(x).sigmoid()
def relu(x: Tensor) -> Tensor: return as_tensor(x).relu()
def abs(x: Tensor) -> Tensor: return as_tensor(x).abs()  # noqa: A001 - mirrors torch.abs
