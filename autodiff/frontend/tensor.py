"""`Tensor`: the traced value users compute with, and its PyTorch-like methods.

A Tensor is either *persistent* (made from data with `Tensor(data)`; it lives on
the device across runs and has a value after `execute()`) or an intermediate
(a graph node). Composite methods (mean, softmax, sigmoid, ...) decompose into
primitive ops here, so nothing below the tracer knows about them.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..ir import ops as O
from ..ir.ops import Op
from ..ir.graph import Node, Variable
from ..errors import TraceError
from .program import called_from_package, current_program
from ..ir.dtypes import FLOAT, INT
from .trace import broadcast_shapes, make_leaf, make_node, normalize_axis, trace_error

Scalar = int | float
TensorLike = Any  # Tensor, numpy array, list or Python scalar


def _as_array(data: Any, dtype: str | None) -> np.ndarray:
    array = np.asarray(data)
    if dtype is None:
        dtype = INT if array.dtype.kind in "iub" else FLOAT
    if dtype not in (FLOAT, INT):
        raise TypeError(f"autodiff tensors are float32 or int32, not {dtype}")
    return np.array(array, dtype=dtype)  # a copy: later host changes do not leak in


class Tensor:
    """A traced tensor. `Tensor(data, name=None)` makes a persistent device tensor."""

    __array_priority__ = 1000  # numpy_array + tensor calls our __radd__

    def __init__(self, data: TensorLike, name: str | None = None, dtype: str | None = None,
                 requires_grad: bool = True) -> None:
        if isinstance(data, Tensor):
            raise TypeError("Tensor(t) with a Tensor t: use t.detach() or t * 1 for a traced copy")
        program = current_program()
        self._program = program
        self._var: Variable | None = program.new_variable(_as_array(data, dtype), name)
        self._var.requires_grad = requires_grad and self._var.dtype == FLOAT
        self._var.grad = None
        self._node: Node | None = None

    @classmethod
    def _wrap(cls, node: Node) -> "Tensor":
        tensor = cls.__new__(cls)
        tensor._program = current_program()
        tensor._var = None
        tensor._node = node
        tensor._program.live.add(tensor)   # a value the user holds: kept when a read runs the trace
        return tensor

    # --- identity -----------------------------------------------------------
    @property
    def node(self) -> Node:
        """The graph node holding this tensor's value at the current program point."""
        if self._var is None:
            return self._node
        program = current_program()
        if program is not self._program:
            raise TraceError(f"persistent tensor '{self._var.name}' belongs to another program")
        node = program.cached_read(self._var)
        if node is None:
            node = make_leaf(Op.READ, self._var.shape, self._var.dtype, O.ReadArgs(self._var))
            program.remember_read(self._var, node)
            program.read_epoch[node] = program.assigns.get(self._var.id, 0)   # lazy.py: still valid?
        return node

    @property
    def is_persistent(self) -> bool:
        return self._var is not None

    @property
    def name(self) -> str:
        return self._var.name if self._var is not None else f"%{self._node.id}"

    @property
    def shape(self) -> tuple[int, ...]:
        return self._var.shape if self._var is not None else self._node.shape

    @property
    def dtype(self) -> str:
        return self._var.dtype if self._var is not None else self._node.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def size(self, dim: int | None = None) -> tuple[int, ...] | int:
        return self.shape if dim is None else self.shape[normalize_axis("size", dim, self.ndim)]

    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def dim(self) -> int:
        return self.ndim

    def __len__(self) -> int:
        return self.shape[0]

    def _describe(self) -> str:
        """What the tensor is, without its value (error messages; repr where no value can be had)."""
        kind = f"persistent '{self._var.name}'" if self._var is not None else f"node %{self._node.id}"
        return f"Tensor({kind}, shape={self.shape}, dtype={self.dtype})"

    def __repr__(self) -> str:
        """An intermediate's value where it can be had now (interactive use, lazy.py), else what
        it is. Never the value for autodiff's own messages: writing one must not run anything."""
        if self._var is not None or called_from_package():
            return self._describe()
        from .lazy import value_or_none
        value = value_or_none(self)
        if value is None:
            return self._describe()
        body = np.array2string(value, separator=", ", prefix="tensor(")
        return f"tensor({body})" if self.dtype == FLOAT else f"tensor({body}, dtype={self.dtype})"

    def __format__(self, spec: str) -> str:
        """`f"{loss:.4f}"` formats the value of a one-element tensor, as torch does."""
        return format(self.item(), spec) if spec else repr(self)

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        value = self.numpy()
        return value if dtype is None else value.astype(dtype)

    def __bool__(self) -> bool:
        # `if t:`, `and`/`or`/`not` and `x in list` (through ==) would need the value now,
        # but a traced tensor only has one when the program runs
        raise trace_error("bool", f"{self._describe()} has no value while tracing, so Python control flow "
                          "(if, while, and, or, not, `in` on a list, which compares with ==) cannot "
                          "branch on it; use ad.where(cond, a, b) to choose per element, `is` to "
                          "compare tensors by identity, or a Receiver to look at the value")

    # --- values and gradients ----------------------------------------------
    def numpy(self) -> np.ndarray:
        """The value, as torch gives it. Of a persistent tensor: the value the last run left
        (in interactive use, after the updates traced so far run). Of an intermediate: the
        part of the trace it needs runs now, with the updates traced before it (lazy.py)."""
        from .lazy import read_value
        return read_value(self)

    def item(self) -> float:
        if self.numel() != 1:   # torch's rule and message
            raise ValueError(f"a Tensor with {self.numel()} elements cannot be converted to Scalar")
        return self.numpy().item()

    @property
    def grad(self) -> "Tensor | None":
        """The gradient accumulated by backward() since the last zero_grad (a graph node)."""
        return self._var.grad if self._var is not None else None

    @grad.setter
    def grad(self, value: "Tensor | None") -> None:
        if self._var is None:
            raise TraceError(".grad is kept only for persistent tensors; use ad.grad for intermediates")
        self._var.grad = value
        if value is None and self._program.eager:
            self._program.boundary = True   # zero_grad(): a training step ends; run it before the next op

    @property
    def requires_grad(self) -> bool:
        return self._var.requires_grad if self._var is not None else True

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        if self._var is None:
            raise TraceError("requires_grad can be set only on persistent tensors")
        self._var.requires_grad = bool(value) and self._var.dtype == FLOAT

    def backward(self, grad: TensorLike | None = None, retain_graph: bool = False) -> None:
        """Append the gradient of this tensor to the graph; accumulate into `.grad`.

        As in torch: `grad` may be omitted only for a one-element tensor, and a second
        backward() through the same nodes needs `retain_graph=True` in the first.
        """
        from .autodiff import backward
        backward(self, grad, retain_graph)

    def detach(self) -> "Tensor":
        return _unary(Op.DETACH, self)

    # --- in-place updates of persistent tensors ------------------------------
    def assign(self, value: TensorLike) -> "Tensor":
        """Overwrite a persistent tensor with `value` (an in-place update node)."""
        if self._var is None:
            raise TraceError(f"assign: {self._describe()} is not persistent; only persistent tensors "
                             "(made with ad.Tensor(data)) can be updated in place")
        value = as_tensor(value, self)
        if value.dtype != self.dtype:
            value = value.to(self.dtype)
        value = value.expand_to(self.shape, "assign")
        make_node(Op.ASSIGN, [value.node], O.AssignArgs(self._var))
        program = current_program()
        program.forget_reads([self._var.id])
        program.assigns[self._var.id] = program.assigns.get(self._var.id, 0) + 1
        return self

    def copy_(self, value: TensorLike) -> "Tensor":
        return self.assign(value)

    def add_(self, other: TensorLike) -> "Tensor":
        return self._updated(self + other, "add_")

    def sub_(self, other: TensorLike) -> "Tensor":
        return self._updated(self - other, "sub_")

    def mul_(self, other: TensorLike) -> "Tensor":
        return self._updated(self * other, "mul_")

    def div_(self, other: TensorLike) -> "Tensor":
        return self._updated(self / other, "div_")

    def zero_(self) -> "Tensor":
        return self.assign(0)

    def _inplace(self, result: "Tensor", opname: str) -> "Tensor":
        # `p -= x` updates a persistent tensor; on an intermediate it rebinds the name
        return self._updated(result, opname) if self._var is not None else result

    def _updated(self, result: "Tensor", opname: str) -> "Tensor":
        """`self.assign(result)` for the arithmetic in-place ops (add_, +=, ...)."""
        if self._var is not None and self.dtype == INT and result.dtype == FLOAT:
            # torch: "result type Float can't be cast to the desired output type Int"
            raise trace_error(opname, f"the result is float32 and cannot be stored in the int32 "
                              f"tensor {self._var.name!r} {self.shape} in place; use "
                              "t.assign(value) to store it truncated, or a float32 tensor")
        return self.assign(result)

    def __iadd__(self, other: TensorLike) -> "Tensor":
        return self._inplace(self + other, "+=")

    def __isub__(self, other: TensorLike) -> "Tensor":
        return self._inplace(self - other, "-=")

    def __imul__(self, other: TensorLike) -> "Tensor":
        return self._inplace(self * other, "*=")

    def __itruediv__(self, other: TensorLike) -> "Tensor":
        return self._inplace(self / other, "/=")

    # --- arithmetic -----------------------------------------------------------
    def __add__(self, other: TensorLike) -> "Tensor":
        return _binary(Op.ADD, self, other)

    def __radd__(self, other: TensorLike) -> "Tensor":
        return _binary(Op.ADD, other, self)

    def __sub__(self, other: TensorLike) -> "Tensor":
        return _binary(Op.SUB, self, other)

    def __rsub__(self, other: TensorLike) -> "Tensor":
        return _binary(Op.SUB, other, self)

    def __mul__(self, other: TensorLike) -> "Tensor":
        return _binary(Op.MUL, self, other)

    def __rmul__(self, other: TensorLike) -> "Tensor":
        return _binary(Op.MUL, other, self)

    def __truediv__(self, other: TensorLike) -> "Tensor":
        return _binary(Op.DIV, self, other, float_only=True)

    def __rtruediv__(self, other: TensorLike) -> "Tensor":
        return _binary(Op.DIV, other, self, float_only=True)

    def __floordiv__(self, other: TensorLike) -> "Tensor":
        """Integer division of int32 tensors (truncates toward zero, like C)."""
        a, b = broadcast_operands("floordiv", [self, other])
        if a.dtype != INT or b.dtype != INT:
            raise trace_error("floordiv", f"needs int32 operands, got {a.dtype} and {b.dtype}")
        return Tensor._wrap(make_node(Op.DIV, [a.node, b.node], O.NO_ARGS, "floordiv"))

    def __pow__(self, other: TensorLike) -> "Tensor":
        return self.pow(other)

    def __rpow__(self, other: TensorLike) -> "Tensor":
        if self.dtype == INT and not _is_float_operand(other):
            raise trace_error("pow", f"{other!r} ** an int32 tensor {self.shape} is not supported "
                              "(torch gives an integer power); write float(base) ** e for float32")
        return _binary(Op.POW, other, self, float_only=True)

    def __neg__(self) -> "Tensor":
        return _unary(Op.NEG, self)

    def __matmul__(self, other: TensorLike) -> "Tensor":
        from .functions import matmul
        return matmul(self, other)

    def __rmatmul__(self, other: TensorLike) -> "Tensor":
        from .functions import matmul
        return matmul(other, self)

    def __lt__(self, other: TensorLike) -> "Tensor":
        return self.lt(other)

    def __gt__(self, other: TensorLike) -> "Tensor":
        return self.gt(other)

    def __le__(self, other: TensorLike) -> "Tensor":
        return self.le(other)

    def __ge__(self, other: TensorLike) -> "Tensor":
        return self.ge(other)

    def __eq__(self, other: object) -> "Tensor":  # type: ignore[override]
        # elementwise like torch; anything that is not tensor-like compares by identity
        return self.eq(other) if _is_tensor_like(other) else NotImplemented

    def __ne__(self, other: object) -> "Tensor":  # type: ignore[override]
        return self.ne(other) if _is_tensor_like(other) else NotImplemented

    # hashing stays by identity, so tensors can still be dict keys and set members; but
    # `t in some_list` now compares elementwise (and raises, via bool): search with `is`
    __hash__ = object.__hash__

    def pow(self, exponent: TensorLike) -> "Tensor":
        if self.dtype == INT and not _is_float_operand(exponent):
            return self._int_pow(exponent)
        return _binary(Op.POW, self, exponent, float_only=True)

    def _int_pow(self, exponent: TensorLike) -> "Tensor":
        """int32 ** int: an int32 result, as in torch, by exact repeated squaring."""
        if isinstance(exponent, Tensor) or not is_scalar(exponent):
            raise trace_error("pow", f"int32 {self.shape} ** an int32 tensor is not supported (torch "
                              "gives an integer power, which the devices cannot compute exactly in "
                              "general); write x.float() ** e for a float32 power")
        n = int(exponent)
        if n < 0:
            raise trace_error("pow", "Integers to negative integer powers are not allowed "
                              f"(int32 {self.shape} ** {n}); write x.float() ** {n}")
        result: Tensor | None = None
        square: Tensor = self
        while n:   # binary exponentiation: about 2*log2(n) multiplies, each exact (wrapping) int32
            if n & 1:
                result = square if result is None else result * square
            n >>= 1
            if n:
                square = square * square
        return result if result is not None else constant(1, self.shape, INT)

    def maximum(self, other: TensorLike) -> "Tensor":
        return _binary(Op.MAXIMUM, self, other)

    def minimum(self, other: TensorLike) -> "Tensor":
        return _binary(Op.MINIMUM, self, other)

    def lt(self, other: TensorLike) -> "Tensor":
        return _binary(Op.LT, self, other)

    def gt(self, other: TensorLike) -> "Tensor":
        return _binary(Op.GT, self, other)

    def eq(self, other: TensorLike) -> "Tensor":
        return _binary(Op.EQ, self, other)

    def le(self, other: TensorLike) -> "Tensor":
        # lt + eq, not 1 - gt: both are 0 when either side is nan, so nan <= x is 0 as in torch
        return self.lt(other) + self.eq(other)

    def ge(self, other: TensorLike) -> "Tensor":
        return self.gt(other) + self.eq(other)

    def ne(self, other: TensorLike) -> "Tensor":
        return 1 - self.eq(other)

    def where(self, condition: TensorLike, other: TensorLike) -> "Tensor":
        """`self` where `condition` is nonzero, else `other` (like torch.Tensor.where)."""
        from .functions import where
        return where(condition, self, other)

    # --- unary ----------------------------------------------------------------
    def exp(self) -> "Tensor":
        return _unary(Op.EXP, self)

    def log(self) -> "Tensor":
        return _unary(Op.LOG, self)

    def sqrt(self) -> "Tensor":
        return _unary(Op.SQRT, self)

    def rsqrt(self) -> "Tensor":
        return _unary(Op.RECIP, _unary(Op.SQRT, self))

    def reciprocal(self) -> "Tensor":
        return _unary(Op.RECIP, self)

    def sin(self) -> "Tensor":
        return _unary(Op.SIN, self)

    def cos(self) -> "Tensor":
        return _unary(Op.COS, self)

    def tanh(self) -> "Tensor":
        return _unary(Op.TANH, self)

    def erf(self) -> "Tensor":
        return _unary(Op.ERF, self)

    def sigmoid(self) -> "Tensor":
        # exp(min(x, 0)) / (1 + exp(-|x|)): both exponents are <= 0, so nothing overflows
        # (no inf/inf in the gradient) and the lower tail keeps its relative precision
        # (log(sigmoid(-25)) is -25, not -inf)
        return self.minimum(0).exp() / ((self.minimum(-self)).exp() + 1)

    def relu(self) -> "Tensor":
        # torch's definition, where(x <= 0, 0, x): nan <= 0 is false, so relu(nan) is nan with
        # gradient 1 (torch's threshold_backward); the gradient at x == 0 is 0; +-inf are exact
        from .functions import where
        return where(self.le(0), 0, self)

    def sign(self) -> "Tensor":
        return self.gt(0) - self.lt(0)

    def abs(self) -> "Tensor":
        return self * self.sign()  # gradient sign(x): 0 at 0, as in PyTorch

    def square(self) -> "Tensor":
        return self * self

    def log1p(self) -> "Tensor":
        from .composites import log1p
        return log1p(self)

    def expm1(self) -> "Tensor":
        from .composites import expm1
        return expm1(self)

    def clamp(self, min: TensorLike | None = None, max: TensorLike | None = None) -> "Tensor":  # noqa: A002
        from .composites import clamp
        return clamp(self, min, max)

    clip = clamp

    def masked_fill(self, mask: "Tensor", value: TensorLike) -> "Tensor":
        from .composites import masked_fill
        return masked_fill(self, mask, value)

    def tril(self, diagonal: int = 0) -> "Tensor":
        from .composites import tril
        return tril(self, diagonal)

    def triu(self, diagonal: int = 0) -> "Tensor":
        from .composites import triu
        return triu(self, diagonal)

    def softmax(self, dim: int, dtype: Any = None) -> "Tensor":
        from .composites import softmax
        return softmax(self, dim, dtype=dtype)

    def log_softmax(self, dim: int, dtype: Any = None) -> "Tensor":
        from .composites import log_softmax
        return log_softmax(self, dim, dtype=dtype)

    def to(self, dtype: Any) -> "Tensor":
        dtype = str(np.dtype(dtype))
        if dtype == self.dtype:
            return self
        if dtype not in (FLOAT, INT):
            raise trace_error("to", f"autodiff tensors are float32 or int32, not {dtype}")
        return Tensor._wrap(make_node(Op.CAST, [self.node], O.CastArgs(dtype), "to"))

    def float(self) -> "Tensor":
        return self.to(FLOAT)

    def int(self) -> "Tensor":
        return self.to(INT)

    # --- reductions -------------------------------------------------------------
    def sum(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> "Tensor":
        return self._reduce(Op.SUM, "sum", dim, keepdim)

    def mean(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> "Tensor":
        axes = self._axes("mean", dim)
        count = int(np.prod([self.shape[a] for a in axes], dtype=np.int64))
        return self.float().sum(axes, keepdim) * _reciprocal(count)

    def var(self, dim: int | Sequence[int] | None = None, keepdim: bool = False,
            unbiased: bool = True, correction: int | None = None) -> "Tensor":
        axes = self._axes("var", dim)
        count = int(np.prod([self.shape[a] for a in axes], dtype=np.int64))
        ddof = correction if correction is not None else (1 if unbiased else 0)
        centered = self - self.mean(axes, keepdim=True)
        return (centered * centered).sum(axes, keepdim) * _reciprocal(count - ddof)

    def max(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> "Tensor":
        """Values of the maximum (gradient shared evenly among ties, like torch.amax)."""
        return self._reduce(Op.MAX, "max", dim, keepdim)

    def min(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> "Tensor":
        return -((-self).max(dim, keepdim))

    def argmax(self, dim: int | None = None, keepdim: bool = False) -> "Tensor":
        if dim is None:
            return self.reshape(-1).argmax(0, keepdim=False)
        axis = normalize_axis("argmax", dim, self.ndim)
        if self.ndim == 0:   # torch: the only index of a 0-d tensor, 0-d even with keepdim
            return constant(0, (), INT)
        if self.shape[axis] == 0:
            raise trace_error("argmax", f"cannot take the argmax over the empty dim {dim} of shape "
                              f"{self.shape}")
        out = Tensor._wrap(make_node(Op.ARGMAX, [self.node], O.AxisArgs(axis), "argmax"))
        return out if keepdim else out.squeeze(axis)

    def logsumexp(self, dim: int | Sequence[int], keepdim: bool = False) -> "Tensor":
        from .composites import logsumexp
        return logsumexp(self, dim, keepdim)

    def cumsum(self, dim: int, dtype: Any = None) -> "Tensor":
        from .composites import cumsum
        return cumsum(self, dim, dtype=dtype)

    def topk(self, k: int, dim: int = -1, largest: bool = True, sorted: bool = True) -> Any:  # noqa: A002
        """(values, indices) of the k largest along `dim`; see indexing.topk."""
        from .indexing import topk
        return topk(self, k, dim, largest, sorted)

    def _axes(self, opname: str, dim: int | Sequence[int] | None) -> tuple[int, ...]:
        if dim is None:
            return tuple(range(self.ndim))
        dims = [dim] if isinstance(dim, int) else list(dim)
        return tuple(sorted({normalize_axis(opname, d, self.ndim) for d in dims}))

    def _reduce(self, op: Op, opname: str, dim: Any, keepdim: bool) -> "Tensor":
        axes = self._axes(opname, dim)
        if self.ndim == 0:
            return self
        if op is not Op.SUM and any(self.shape[a] == 0 for a in axes):
            # the maximum of nothing has no value: torch raises (a sum over an empty axis is 0,
            # which the lowering gives, keeping the gradient's graph connected)
            raise trace_error(opname, f"cannot reduce over an empty dim: dims {list(axes)} of "
                              f"shape {self.shape}")
        out = Tensor._wrap(make_node(op, [self.node], O.AxesArgs(axes), opname))
        if keepdim:
            return out
        return out.reshape(tuple(n for i, n in enumerate(self.shape) if i not in axes))

    # --- movement ----------------------------------------------------------------
    def reshape(self, *shape: Any) -> "Tensor":
        shape = _shape_arg(shape)
        if shape.count(-1) > 1:
            raise trace_error("reshape", f"only one -1 allowed in {shape}")
        if -1 in shape:
            known = int(np.prod([d for d in shape if d != -1], dtype=np.int64))
            if known == 0 or self.numel() % known:
                raise trace_error("reshape", f"cannot reshape {self.shape} into {shape}")
            shape = tuple(self.numel() // known if d == -1 else d for d in shape)
        if shape == self.shape:
            return self
        if self.node.op is Op.CONST and int(np.prod(shape, dtype=np.int64)) == self.numel():
            return constant(self.node.args.value, shape, self.dtype)
        return Tensor._wrap(make_node(Op.RESHAPE, [self.node], O.ShapeArgs(shape), "reshape"))

    view = reshape

    def permute(self, *dims: Any) -> "Tensor":
        dims = _shape_arg(dims)
        if len(dims) != self.ndim:
            raise trace_error("permute", f"{dims} does not name every axis of {self.shape}")
        perm = tuple(normalize_axis("permute", d, self.ndim) for d in dims)
        if perm == tuple(range(self.ndim)):
            return self
        return Tensor._wrap(make_node(Op.PERMUTE, [self.node], O.PermuteArgs(perm), "permute"))

    def transpose(self, dim0: int, dim1: int) -> "Tensor":
        if self.ndim == 0:   # torch accepts dims 0 and -1 of a 0-d tensor: nothing to swap
            normalize_axis("transpose", dim0, 0), normalize_axis("transpose", dim1, 0)
            return self
        perm = list(range(self.ndim))
        a, b = normalize_axis("transpose", dim0, self.ndim), normalize_axis("transpose", dim1, self.ndim)
        perm[a], perm[b] = perm[b], perm[a]
        return self.permute(perm)

    @property
    def T(self) -> "Tensor":
        return self.permute(tuple(reversed(range(self.ndim))))

    @property
    def mT(self) -> "Tensor":
        return self.transpose(-2, -1)

    def unsqueeze(self, dim: int) -> "Tensor":
        axis = normalize_axis("unsqueeze", dim, self.ndim + 1)
        return self.reshape(self.shape[:axis] + (1,) + self.shape[axis:])

    def squeeze(self, dim: int | Sequence[int] | None = None) -> "Tensor":
        """Drop size-1 axes: all of them, or those of `dim` (an int or a tuple, as in torch 2)."""
        if dim is None:
            return self.reshape(tuple(n for n in self.shape if n != 1))
        axes = {normalize_axis("squeeze", d, self.ndim) for d in ([dim] if isinstance(dim, int) else dim)}
        if self.ndim == 0:
            return self
        # a named axis whose size is not 1 is kept, as in torch
        return self.reshape(tuple(n for i, n in enumerate(self.shape) if not (i in axes and n == 1)))

    def narrow(self, dim: int, start: "int | Tensor", length: int) -> "Tensor":
        """Elements start .. start+length-1 along `dim`, like torch.narrow.

        `start` may be a 0-d int32 tensor, known only when the program runs: those rows are
        gathered, and a start outside [-size, size - length] is clamped into range (torch
        raises; a running program cannot).
        """
        if self.ndim == 0:
            raise trace_error("narrow", "narrow() cannot be applied to a 0-dim tensor")
        axis = normalize_axis("narrow", dim, self.ndim)
        size = self.shape[axis]
        if not 0 <= length <= size:
            raise trace_error("narrow", f"length {length} does not fit dim {dim} of size {size} "
                              f"(shape {self.shape})")
        if isinstance(start, Tensor) and start.ndim == 0 and start.node.op is Op.CONST:
            start = start.node.args.value   # a constant is known now: an ordinary slice
        if not isinstance(start, Tensor):
            first = int(start) + size if int(start) < 0 else int(start)
            if not 0 <= first <= size - length:
                raise trace_error("narrow", f"start {start} with length {length} is out of range for "
                                  f"dim {dim} of size {size} (shape {self.shape})")
            index: list[Any] = [slice(None)] * self.ndim
            index[axis] = slice(first, first + length)
            return self[tuple(index)]
        if start.ndim != 0 or start.dtype != INT:
            raise trace_error("narrow", f"start must be an int or a 0-d int32 tensor, got "
                              f"{start.dtype} {start.shape}")
        from .functions import iota, where
        from .indexing import take_along
        first = where(start.lt(0), start + size, start).maximum(0).minimum(size - length)
        rows = first + iota((length,), 0)   # the positions along `dim`, as a gather index
        return take_along(self, axis, rows)

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> "Tensor":
        if self.ndim == 0:
            return self.reshape(1)
        a = normalize_axis("flatten", start_dim, self.ndim)
        b = normalize_axis("flatten", end_dim, self.ndim)
        merged = int(np.prod(self.shape[a:b + 1], dtype=np.int64))
        return self.reshape(self.shape[:a] + (merged,) + self.shape[b + 1:])

    def expand(self, *sizes: Any) -> "Tensor":
        sizes = _shape_arg(sizes)
        if len(sizes) < self.ndim:
            raise trace_error("expand", f"cannot expand {self.shape} to {sizes}")
        lead = len(sizes) - self.ndim
        target = tuple(self.shape[i - lead] if d == -1 else d for i, d in enumerate(sizes))
        return self.expand_to(target, "expand")

    def expand_as(self, other: "Tensor") -> "Tensor":
        return self.expand_to(other.shape, "expand_as")

    def expand_to(self, shape: tuple[int, ...], opname: str) -> "Tensor":
        """Broadcast to `shape` (numpy rules), as explicit RESHAPE + EXPAND nodes."""
        shape = tuple(shape)
        if self.shape == shape:
            return self
        if broadcast_shapes(opname, self.shape, shape) != shape:
            raise trace_error(opname, f"cannot broadcast {self.shape} to {shape}")
        if self.node.op is Op.CONST:  # a broadcast constant is just a bigger constant
            return constant(self.node.args.value, shape, self.dtype)
        x = self
        if x.ndim < len(shape):
            x = x.reshape((1,) * (len(shape) - x.ndim) + x.shape)
        if x.shape == shape:
            return x
        return Tensor._wrap(make_node(Op.EXPAND, [x.node], O.ShapeArgs(shape), opname))

    def flip(self, *dims: Any) -> "Tensor":
        from .indexing import flip
        return flip(self, _shape_arg(dims))

    def repeat(self, *repeats: Any) -> "Tensor":
        from .composites import repeat
        return repeat(self, *repeats)

    def gather(self, dim: int, index: "Tensor") -> "Tensor":
        from .indexing import gather
        return gather(self, dim, index)

    def scatter_add(self, dim: int, index: "Tensor", src: "Tensor") -> "Tensor":
        from .indexing import scatter_add
        return scatter_add(self, dim, index, src)

    def __getitem__(self, index: Any) -> "Tensor":
        from .indexing import getitem
        return getitem(self, index)

    def contiguous(self) -> "Tensor":
        return self


def _reciprocal(count: int) -> float:
    """1/count for a mean over `count` elements; nan for none, as torch's 0/0."""
    return 1.0 / count if count > 0 else float("nan")


def _shape_arg(shape: tuple[Any, ...]) -> tuple[int, ...]:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return tuple(int(d) for d in shape)


def constant(value: Scalar, shape: tuple[int, ...] = (), dtype: str = FLOAT) -> Tensor:
    """A tensor of `shape` filled with `value` (a CONST node, folded by the passes)."""
    value = int(value) if dtype == INT else float(value)
    return Tensor._wrap(make_leaf(Op.CONST, shape, dtype, O.ConstArgs(value)))


def as_tensor(value: TensorLike, like: Tensor | None = None) -> Tensor:
    """Tensors pass through; Python scalars become constants; arrays become persistent tensors."""
    if isinstance(value, Tensor):
        return value
    if is_scalar(value):
        return constant(value, (), as_tensor_dtype(value, like))
    return Tensor(value, name="array", requires_grad=False)


def _unary(op: Op, x: Tensor) -> Tensor:
    if op not in (Op.NEG, Op.DETACH, Op.CAST) and x.dtype != FLOAT:
        x = x.float()
    return Tensor._wrap(make_node(op, [x.node], O.NO_ARGS))


def is_scalar(value: TensorLike) -> bool:
    return isinstance(value, (bool, int, float, np.integer, np.floating))


def _is_tensor_like(value: object) -> bool:
    """What `==` compares elementwise: tensors, scalars, arrays and (nested) lists."""
    return isinstance(value, (Tensor, np.ndarray, list, tuple)) or is_scalar(value)


def _is_float_operand(value: TensorLike) -> bool:
    """Whether an operand makes an int32 operation float32 (torch's promotion)."""
    if isinstance(value, Tensor):
        return value.dtype == FLOAT
    if is_scalar(value):
        return isinstance(value, (float, np.floating))
    return np.asarray(value).dtype.kind not in "iub"


def broadcast_operands(opname: str, values: Sequence[TensorLike], like: Tensor | None = None) -> list[Tensor]:
    """Tensors of one broadcast shape; Python scalars become constants of that shape directly,
    int32 or float32 as `like` (default: the first tensor) and the scalar say."""
    if like is None:
        like = next((v for v in values if isinstance(v, Tensor)), None)
    values = [v if is_scalar(v) else as_tensor(v, like) for v in values]
    shape = broadcast_shapes(opname, *[() if is_scalar(v) else v.shape for v in values])
    # nodes are made in operand order, so `x + 1` reads x before making the constant
    out = []
    for v in values:
        if is_scalar(v):
            out.append(constant(v, shape, as_tensor_dtype(v, like)))
        else:
            expanded = v.expand_to(shape, opname)
            expanded.node  # a persistent tensor's READ is made now, in operand order
            out.append(expanded)
    return out


def as_tensor_dtype(value: TensorLike, like: Tensor | None) -> str:
    is_float = isinstance(value, (float, np.floating)) or like is None or like.dtype == FLOAT
    return FLOAT if is_float else INT


_NUMBERS = (float, int)   # exact types: bool and numpy scalars take the general path


def _binary(op: Op, a: TensorLike, b: TensorLike, float_only: bool = False) -> Tensor:
    """Broadcast, promote int to float where mixed, then make the primitive node."""
    if (isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and a.dtype == b.dtype
            and (a.dtype == FLOAT or not float_only)):
        # nothing to broadcast or promote (most ops of a training step): what the general
        # path does then, without its per-operand work; READs are made in operand order
        return Tensor._wrap(make_node(op, [a.node, b.node], O.NO_ARGS))
    # a float tensor and a Python number (x * 0.9, 1 - x): what the general path makes, directly
    if type(b) in _NUMBERS and isinstance(a, Tensor) and a.dtype == FLOAT:
        x = a.node
        return Tensor._wrap(make_node(op, [x, make_leaf(Op.CONST, x.shape, FLOAT, O.ConstArgs(float(b)))],
                                      O.NO_ARGS))
    if type(a) in _NUMBERS and isinstance(b, Tensor) and b.dtype == FLOAT:
        c = make_leaf(Op.CONST, b.shape, FLOAT, O.ConstArgs(float(a)))
        return Tensor._wrap(make_node(op, [c, b.node], O.NO_ARGS))
    a, b = broadcast_operands(op.value, [a, b])
    if a.dtype != b.dtype or (float_only and a.dtype != FLOAT):
        a, b = a.float(), b.float()
    return Tensor._wrap(make_node(op, [a.node, b.node], O.NO_ARGS))
