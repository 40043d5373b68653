"""Vector lanes: where a kernel (or one reduction in it) can be written with float vectors.

A variable `v` of extent E is spread over W lanes by substituting `W*v' + lane` for it
(v' of extent E/W, lane of extent W), and the access expressions are simplified as
usual. A load whose flat offset steps by one with the lane reads W floats at once
(vloadW); a load that does not depend on the lane is one float, which vector arithmetic
widens. Anything else stays scalar: a load that strides or wraps inside the vector,
gathers, guards (padding, concatenation) whose condition changes across the lanes, argmax,
random bits, integers and casts. A guard whose condition holds for all lanes or none (the
rows of a concatenation, vectors along its columns) is one scalar test around vector work.
Used for the outputs of kernels (vector.py: a sum or max inside such a kernel
accumulates a vector, e.g. a bias gradient summing rows) and for the innermost axis of
sums and maxima (renderer.py).
"""
from __future__ import annotations

from ..ir.ops import Op
from ..proc.index import Index, Var, flat_index
from ..proc.ir import Alu, Const, Expr, Guard, IndexValue, Load, Reduce, substitute_vars, walk_expr

VECTOR_WIDTHS = (16, 8, 4)   # the float vector types OpenCL C has (a language keeps those its device suits)
SELECTIONS = (Op.LT, Op.GT, Op.EQ, Op.WHERE, Op.MAXIMUM, Op.MINIMUM)


def without_lane(form: Index, lane: Var) -> Index:
    return form.substitute(lambda atom: Index.of(0) if atom == lane else None)


def lane_step(form: Index, lane: Var) -> int | None:
    """1 if `form` steps by one with the lane, 0 if it does not depend on it, else None."""
    difference = form - without_lane(form, lane)
    if difference == Index.of(0):
        return 0
    if difference == Index.of(lane):
        return 1
    return None


def spread(expr: Expr, var: Var, width: int) -> tuple[Expr, Var, Var]:
    """`expr` with `var` written as width*outer + lane, and the two new variables."""
    outer = Var(f"{var.name}_v", var.extent // width)
    lane = Var(f"{var.name}_lane", width)
    return substitute_vars(expr, {var: Index.of(outer) * width + lane}), outer, lane


def vectorizes(value: Expr, lane: Var, buffers: dict) -> bool:
    """Whether every node of `value` can be computed across the lanes of `lane` at once."""
    for e in walk_expr(value):
        if getattr(e, "dtype", None) != "float32":
            return False
        if isinstance(e, Load):
            if e.buffer_id not in buffers or lane_step(flat_index(e.indices, buffers[e.buffer_id].shape),
                                                       lane) is None:
                return False
        elif isinstance(e, IndexValue):
            if lane in e.index.variables():
                return False
        elif isinstance(e, Alu):
            if e.op is Op.CAST:
                return False
        elif isinstance(e, Reduce):
            if e.op not in (Op.SUM, Op.MAX):
                return False    # a sum or max of vectors is a vector accumulator; argmax is not
        elif isinstance(e, Guard):
            if any(lane_step(form, lane) != 0 for form, _, _ in e.valid.ranges):
                return False    # valid in some lanes only
        elif not isinstance(e, Const):
            return False        # RandomBits
    return True


def widest(extent: int, fits, widths: tuple[int, ...] = VECTOR_WIDTHS) -> int:
    """The widest of `widths` dividing `extent` for which `fits(width)`, else 1."""
    for width in widths:
        if extent % width == 0 and extent >= width and fits(width):
            return width
    return 1
