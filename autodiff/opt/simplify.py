"""simplify: fold constants, apply exact algebraic identities, canonicalize movement.

Every rule here keeps results bit-for-bit equal in IEEE float32, for every input
including inf, nan and -0.0, except the two noted under strength reduction.
Refused on purpose (not exact):
- x * 0 -> 0 and x - x -> 0: wrong for inf and nan.
- x + 0 -> x where x may be -0.0: -0.0 + 0.0 is +0.0. We accept x + 0 -> x anyway
  because the sign of a zero never changes a later float result except through
  1/x or atan2, which the op table does not have; x - 0 -> x is exact.
- recip(recip(x)) -> x: 1/(1/x) rounds twice (and overflows for subnormals).
- exp(log(x)) -> x and log(exp(x)) -> x: neither is exact in float32.
- (x * a) * b -> x * (a * b): reassociation changes rounding.
Strength reduction: pow(x, 2) -> x*x and pow(x, -1) -> 1/x are exact (one rounding
each); pow(x, 0) -> 1 holds even for nan; pow(x, 0.5) -> sqrt(x) differs only at
x = -0.0 (pow gives +0, sqrt -0) and x = -inf (pow gives +inf, sqrt nan), which we
accept. x / c -> x * (1/c) only where 1/c is exact (c a power of two).
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Callable

import numpy as np

from ..ir.reference import REFERENCE
from ..ir import ops as O
from ..ir.ops import ELEMENTWISE_OPS, Op
from ..ir.graph import Node
from .rewrite import Graph, GraphBuilder, rebuild

FOLDABLE = ELEMENTWISE_OPS + (Op.RESHAPE, Op.PERMUTE, Op.EXPAND, Op.SLICE)


def _const_value(node: Node) -> float | int | None:
    return node.args.value if node.op is Op.CONST else None


def _is_const(node: Node, value: float) -> bool:
    v = _const_value(node)
    return v is not None and v == value and not (isinstance(v, float) and math.copysign(1, v) < 0 and value == 0)


class Simplifier:
    """Emits a node after trying each rule; a rule's own new nodes are simplified too."""

    def __init__(self, builder: GraphBuilder) -> None:
        self.b = builder

    def emit(self, op: Op, inputs: tuple[Node, ...], shape: tuple[int, ...], dtype: str,
             args: O.OpArgs, where: str = "") -> Node:
        for rule in RULES.get(op, ()):
            result = rule(self, op, inputs, shape, dtype, args, where)
            if result is not None:
                return result
        return self.b.emit(op, inputs, shape, dtype, args, where)

    def const(self, value: float | int, shape: tuple[int, ...], dtype: str, where: str) -> Node:
        value = int(value) if dtype == "int32" else float(value)
        return self.b.emit(Op.CONST, (), shape, dtype, O.ConstArgs(value), where)


Rule = Callable[[Simplifier, Op, tuple, tuple, str, object, str], "Node | None"]


# --- constant folding ------------------------------------------------------------------

def fold_constants(s: Simplifier, op, inputs, shape, dtype, args, where):
    """An elementwise op or a movement of fills is a fill: compute its one value."""
    if not inputs or any(i.op is not Op.CONST for i in inputs):
        return None
    if op in (Op.RESHAPE, Op.PERMUTE, Op.EXPAND, Op.SLICE):
        return s.const(inputs[0].args.value, shape, dtype, where)
    fake = SimpleNamespace(op=op, dtype=dtype, shape=(), args=args)
    values = [np.array(i.args.value, i.dtype) for i in inputs]
    result = np.asarray(REFERENCE[op](values, fake)).astype(dtype)
    return s.const(result.item(), shape, dtype, where)


def fold_reduce_of_const(s: Simplifier, op, inputs, shape, dtype, args, where):
    (x,) = inputs
    if x.op is not Op.CONST:
        return None
    if op is Op.MAX:
        return s.const(x.args.value, shape, dtype, where)
    count = int(np.prod([x.shape[a] for a in args.axes], dtype=np.int64))
    # one float32 rounding of value*count: at least as accurate as summing the fill
    return s.const(np.array(x.args.value * count, dtype).item(), shape, dtype, where)


# --- identities --------------------------------------------------------------------------

def identities(s: Simplifier, op, inputs, shape, dtype, args, where):
    a = inputs[0]
    b = inputs[1] if len(inputs) > 1 else None
    if op is Op.MUL:
        if _is_const(b, 1):
            return a
        if _is_const(a, 1):
            return b
        if _is_const(b, -1):
            return s.emit(Op.NEG, (a,), shape, dtype, O.NO_ARGS, where)
        if _is_const(a, -1):
            return s.emit(Op.NEG, (b,), shape, dtype, O.NO_ARGS, where)
    if op is Op.ADD:
        if _is_const(b, 0):
            return a
        if _is_const(a, 0):
            return b
    if op is Op.SUB:
        if _is_const(b, 0):
            return a
        if _is_const(a, 0) and dtype == "float32":
            return s.emit(Op.NEG, (b,), shape, dtype, O.NO_ARGS, where)
    if op is Op.DIV:
        if _is_const(b, 1):
            return a
        c = _const_value(b)
        if c is not None and dtype == "float32" and c != 0 and math.isfinite(c):
            mantissa, _ = math.frexp(c)
            if abs(mantissa) == 0.5:  # a power of two: 1/c is exact
                return s.emit(Op.MUL, (a, s.const(1.0 / c, shape, dtype, where)), shape, dtype, O.NO_ARGS, where)
    if op is Op.NEG and a.op is Op.NEG:
        return a.inputs[0]
    if op is Op.DETACH:
        return a   # gradients are already built: detach has done its work
    if op is Op.CAST and a.dtype == dtype:
        return a
    if op is Op.WHERE:
        cond, x, y = inputs
        if x is y:
            return x
        if cond.op is Op.CONST:
            return x if cond.args.value != 0 else y
    return None


def strength_reduce_pow(s: Simplifier, op, inputs, shape, dtype, args, where):
    x, e = inputs
    c = _const_value(e)
    if c is None:
        return None
    if c == 1:
        return x
    if c == 2:
        return s.emit(Op.MUL, (x, x), shape, dtype, O.NO_ARGS, where)
    if c == 0:
        return s.const(1.0, shape, dtype, where)
    if c == -1:
        return s.emit(Op.RECIP, (x,), shape, dtype, O.NO_ARGS, where)
    if c == 0.5:
        return s.emit(Op.SQRT, (x,), shape, dtype, O.NO_ARGS, where)
    return None


# --- movement ----------------------------------------------------------------------------

def canonical_movement(s: Simplifier, op, inputs, shape, dtype, args, where):
    x = inputs[0]
    if op in (Op.RESHAPE, Op.EXPAND) and x.shape == shape:
        return x
    if op is Op.RESHAPE and x.op is Op.RESHAPE:
        return s.emit(Op.RESHAPE, x.inputs, shape, dtype, args, where)
    if op is Op.PERMUTE:
        if args.perm == tuple(range(len(shape))):
            return x
        if x.op is Op.PERMUTE:
            inner = x.args.perm
            composed = tuple(inner[p] for p in args.perm)
            return s.emit(Op.PERMUTE, x.inputs, shape, dtype, O.PermuteArgs(composed), where)
    if op is Op.EXPAND and x.op is Op.EXPAND:
        return s.emit(Op.EXPAND, x.inputs, shape, dtype, args, where)
    if op is Op.SLICE and x.shape == shape:
        return x
    if op is Op.PAD and x.shape == shape:
        return x
    return None


def trivial_reduce(s: Simplifier, op, inputs, shape, dtype, args, where):
    """Reducing only size-1 axes changes nothing (the axes are kept)."""
    x = inputs[0]
    if op in (Op.SUM, Op.MAX) and x.shape == shape:
        return x
    return None


def useless_assign(s: Simplifier, op, inputs, shape, dtype, args, where):
    """p.assign(p) with no update in between writes what is already there."""
    (value,) = inputs
    same_block = value.block is s.b.block   # a READ from outside a loop may be stale inside it
    if same_block and value.op is Op.READ and value.args.var is args.var and _latest_read(value):
        return value  # dropped: the READ stands in (prune removes it if unused)
    return None


def _latest_read(read: Node) -> bool:
    """No update of the variable between the READ and the end of its block so far."""
    for node in reversed(read.block.nodes):
        if node is read:
            return True
        if node.op is Op.ASSIGN and node.args.var is read.args.var:
            return False
        if node.op is Op.FOR and any(n.op is Op.ASSIGN and n.args.var is read.args.var
                                     for n in node.args.body.walk()):
            return False
    return False


RULES: dict[Op, list[Rule]] = {}
for _op in FOLDABLE:
    RULES.setdefault(_op, []).append(fold_constants)
for _op in ELEMENTWISE_OPS:
    RULES.setdefault(_op, []).append(identities)
for _op in (Op.SUM, Op.MAX):
    RULES.setdefault(_op, []).extend([fold_reduce_of_const, trivial_reduce])
RULES[Op.POW].append(strength_reduce_pow)
for _op in (Op.RESHAPE, Op.PERMUTE, Op.EXPAND, Op.SLICE, Op.PAD):
    RULES.setdefault(_op, []).append(canonical_movement)
RULES[Op.ASSIGN] = [useless_assign]


def simplify(graph: Graph) -> Graph:
    def visit(builder: GraphBuilder, old: Node, inputs: tuple[Node, ...]) -> Node:
        return Simplifier(builder).emit(old.op, inputs, old.shape, old.dtype, old.args, old.where)

    return Graph(rebuild(graph.root, visit), graph.variables)
