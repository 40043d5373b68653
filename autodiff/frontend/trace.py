"""Creating nodes while tracing: shape checks, user source lines, broadcasting.

Every node is made by `make_node` (ops with inputs) or `make_leaf`, so shape
errors are raised at trace time with the op's name, the shapes and the line of
the user's program that asked for the op.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from ..ir.ops import NO_ARGS, Op, OpArgs
from ..ir.graph import Node
from ..errors import TraceError
from .program import current_program, user_source_line
from ..ir.shapes import SHAPE_RULES, ShapeMismatch

if TYPE_CHECKING:
    from .tensor import Tensor


def trace_error(opname: str, message: str) -> TraceError:
    return TraceError(f"{opname}: {message} (at {user_source_line()})")


def make_node(op: Op, inputs: Sequence[Node], args: OpArgs = NO_ARGS, opname: str | None = None) -> Node:
    """Append a node computing `op(inputs)` to the current block, checking shapes."""
    program = current_program()
    block = program.block
    for node in inputs:
        if not node.block.encloses(block):
            raise trace_error(opname or op.value, (
                f"input %{node.id} {list(node.shape)} was computed inside an ir_for body (or in "
                "another program) and cannot be used here; to keep a value across iterations "
                "assign it to a persistent tensor, to look at it use a Receiver"))
    try:
        shape, dtype = SHAPE_RULES[op]([(n.shape, n.dtype) for n in inputs], args)
    except ShapeMismatch as err:
        raise trace_error(opname or op.value, str(err)) from None
    return program.add_node(op, tuple(inputs), tuple(shape), dtype, args, user_source_line())


def make_leaf(op: Op, shape: Sequence[int], dtype: str, args: OpArgs = NO_ARGS) -> Node:
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise trace_error(op.value, f"negative size in shape {shape}")
    return current_program().add_node(op, (), shape, dtype, args, user_source_line())


def broadcast_shapes(opname: str, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    """numpy broadcasting, raising a trace error that names every shape."""
    rank = max(len(s) for s in shapes)
    out = []
    for axis in range(rank):
        sizes = [s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0]
        target = 0 if 0 in sizes else max(sizes)   # size 1 broadcasts to anything, even 0
        if any(d != target and d != 1 for d in sizes):
            raise trace_error(opname, "shapes " + " and ".join(str(tuple(s)) for s in shapes)
                              + " cannot be broadcast together")
        out.append(target)
    return tuple(out)


def normalize_axis(opname: str, axis: int, rank: int) -> int:
    if not -max(rank, 1) <= axis < max(rank, 1):
        raise trace_error(opname, f"dim {axis} is out of range for a tensor of rank {rank}")
    return axis % max(rank, 1)
