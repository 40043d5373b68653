"""Shape and dtype rules: one per op, keyed by `Op`.

A rule takes the input (shape, dtype) pairs and the op's argument record and
returns the output (shape, dtype), or raises `ShapeMismatch` with a message
that names the shapes; the tracer adds the op name and the user's source line.
"""
from __future__ import annotations

from typing import Callable

from .dtypes import FLOAT, INT
from .ops import (BINARY_OPS, COMPARISON_OPS, Op, UNARY_OPS, AxesArgs, AxisArgs, CastArgs, PadArgs,
                  PermuteArgs, ShapeArgs, SliceArgs)

Shape = tuple[int, ...]
TypedShape = tuple[Shape, str]
ShapeRule = Callable[[list[TypedShape], object], TypedShape]



class ShapeMismatch(ValueError):
    pass


def _same(ins: list[TypedShape], what: str) -> None:
    shapes = [s for s, _ in ins]
    if any(s != shapes[0] for s in shapes):
        raise ShapeMismatch(f"{what} needs equal shapes, got " + " and ".join(map(str, shapes)))


def _unary(ins: list[TypedShape], args: object) -> TypedShape:
    return ins[0]


def _float_unary(ins: list[TypedShape], args: object) -> TypedShape:
    if ins[0][1] != FLOAT:
        raise ShapeMismatch(f"needs a float32 input, got {ins[0][1]} {ins[0][0]}")
    return ins[0]


def _binary(ins: list[TypedShape], args: object) -> TypedShape:
    _same(ins, "elementwise op")
    if ins[0][1] != ins[1][1]:
        raise ShapeMismatch(f"needs equal dtypes, got {ins[0][1]} and {ins[1][1]}")
    return ins[0]


def _comparison(ins: list[TypedShape], args: object) -> TypedShape:
    shape, dtype = _binary(ins, args)
    return shape, dtype  # 0/1 in the inputs' dtype


def _where(ins: list[TypedShape], args: object) -> TypedShape:
    _same(ins, "where")
    if ins[1][1] != ins[2][1]:
        raise ShapeMismatch(f"needs equal dtypes for both branches, got {ins[1][1]} and {ins[2][1]}")
    return ins[1]


def _reduce(ins: list[TypedShape], args: AxesArgs) -> TypedShape:
    shape, dtype = ins[0]
    for axis in args.axes:
        if not 0 <= axis < len(shape):
            raise ShapeMismatch(f"axis {axis} out of range for shape {shape}")
    return tuple(1 if i in args.axes else n for i, n in enumerate(shape)), dtype


def _argmax(ins: list[TypedShape], args: AxisArgs) -> TypedShape:
    shape, _ = ins[0]
    if not 0 <= args.axis < len(shape):
        raise ShapeMismatch(f"axis {args.axis} out of range for shape {shape}")
    return tuple(1 if i == args.axis else n for i, n in enumerate(shape)), INT


def _dot(ins: list[TypedShape], args: object) -> TypedShape:
    (a, adt), (b, bdt) = ins
    if len(a) < 2 or len(b) < 2 or len(a) != len(b) or a[:-2] != b[:-2] or a[-1] != b[-2]:
        raise ShapeMismatch(f"cannot multiply {a} by {b}")
    if adt != FLOAT or bdt != FLOAT:
        raise ShapeMismatch(f"needs float32 operands, got {adt} and {bdt}")
    return a[:-1] + (b[-1],), FLOAT


def _reshape(ins: list[TypedShape], args: ShapeArgs) -> TypedShape:
    shape, dtype = ins[0]
    if _numel(shape) != _numel(args.shape):
        raise ShapeMismatch(f"cannot reshape {shape} into {args.shape}")
    return args.shape, dtype


def _permute(ins: list[TypedShape], args: PermuteArgs) -> TypedShape:
    shape, dtype = ins[0]
    if sorted(args.perm) != list(range(len(shape))):
        raise ShapeMismatch(f"{args.perm} is not a permutation of the axes of {shape}")
    return tuple(shape[p] for p in args.perm), dtype


def _expand(ins: list[TypedShape], args: ShapeArgs) -> TypedShape:
    shape, dtype = ins[0]
    ok = len(shape) == len(args.shape) and all(a == b or a == 1 for a, b in zip(shape, args.shape))
    if not ok:
        raise ShapeMismatch(f"cannot expand {shape} to {args.shape}")
    return args.shape, dtype


def _slice(ins: list[TypedShape], args: SliceArgs) -> TypedShape:
    shape, dtype = ins[0]
    ok = len(args.starts) == len(args.stops) == len(shape) and all(
        0 <= lo <= hi <= n for lo, hi, n in zip(args.starts, args.stops, shape))
    if not ok:
        raise ShapeMismatch(f"window {args.starts}:{args.stops} does not fit {shape}")
    return tuple(hi - lo for lo, hi in zip(args.starts, args.stops)), dtype


def _pad(ins: list[TypedShape], args: PadArgs) -> TypedShape:
    shape, dtype = ins[0]
    if len(args.low) != len(shape) or len(args.high) != len(shape) or min(args.low + args.high, default=0) < 0:
        raise ShapeMismatch(f"bad padding {args.low}/{args.high} for {shape}")
    return tuple(lo + n + hi for lo, n, hi in zip(args.low, shape, args.high)), dtype


def _concat(ins: list[TypedShape], args: AxisArgs) -> TypedShape:
    first, dtype = ins[0]
    for shape, dt in ins[1:]:
        same_rest = len(shape) == len(first) and all(
            a == b for i, (a, b) in enumerate(zip(shape, first)) if i != args.axis)
        if not same_rest or dt != dtype:
            raise ShapeMismatch(f"cannot concatenate {first} {dtype} and {shape} {dt} along axis {args.axis}")
    total = sum(shape[args.axis] for shape, _ in ins)
    return first[:args.axis] + (total,) + first[args.axis + 1:], dtype


def _gather(ins: list[TypedShape], args: object) -> TypedShape:
    (table, tdt), (idx, idt) = ins
    if len(table) != 2 or idt != INT:
        raise ShapeMismatch(f"needs a (V, D) table and int32 indices, got {table} {tdt} and {idx} {idt}")
    return idx + (table[1],), tdt


def _scatter_add(ins: list[TypedShape], args) -> TypedShape:
    (idx, idt), (grad, gdt) = ins
    if idt != INT or grad[:-1] != idx:
        raise ShapeMismatch(f"needs int32 indices {idx} and values of shape {idx} + (D,), got {grad}")
    return (args.rows, grad[-1]), gdt


def _cast(ins: list[TypedShape], args: CastArgs) -> TypedShape:
    return ins[0][0], args.dtype


def _leaf(ins: list[TypedShape], args: object) -> TypedShape:
    raise AssertionError("leaf shapes are given by their constructor")


def _effect(ins: list[TypedShape], args: object) -> TypedShape:
    return (), FLOAT  # effects have no value


def _collective(ins: list[TypedShape], args) -> TypedShape:
    """all_reduce and broadcast keep the shape; all_gather stacks the ranks' values on axis 0;
    an all_reduce of several inputs (one bucket of gradients) is their flattened concatenation."""
    if len(ins) > 1:
        if args.kind != "all_reduce" or any(d != ins[0][1] for _, d in ins):
            raise ShapeMismatch(f"only an all_reduce takes several inputs, of one dtype; got {args.kind} of "
                                + ", ".join(f"{d}{list(s)}" for s, d in ins))
        return (sum(_numel(s) for s, _ in ins),), ins[0][1]
    (shape, dtype), = ins
    if args.kind != "all_gather":
        return shape, dtype
    return ((args.world * shape[0],) + shape[1:] if shape else (args.world,)), dtype


def _numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


SHAPE_RULES: dict[Op, ShapeRule] = {
    **{op: _float_unary for op in UNARY_OPS},
    Op.NEG: _unary, Op.CAST: _cast, Op.DETACH: _unary,
    **{op: _binary for op in BINARY_OPS},
    **{op: _comparison for op in COMPARISON_OPS},
    Op.WHERE: _where,
    Op.SUM: _reduce, Op.MAX: _reduce, Op.ARGMAX: _argmax,
    Op.DOT: _dot,
    Op.RESHAPE: _reshape, Op.PERMUTE: _permute, Op.EXPAND: _expand, Op.SLICE: _slice,
    Op.PAD: _pad, Op.CONCAT: _concat,
    Op.GATHER: _gather, Op.SCATTER_ADD: _scatter_add,
    Op.CONST: _leaf, Op.IOTA: _leaf, Op.READ: _leaf, Op.FEEDER: _leaf, Op.LOOP_INDEX: _leaf,
    Op.RANDOM: _leaf,
    Op.RECEIVER: _effect, Op.ASSIGN: _effect, Op.FOR: _effect,
    Op.COLLECTIVE: _collective,
}
