"""VJP rules: one per op, keyed by `Op`, written with traced Tensor operations.

A rule gets the node, its inputs and output as Tensors, the incoming gradient
`g` (shaped like the output) and which inputs need a gradient; it returns one
gradient (or None) per input. Because the rules trace ordinary ops, gradients
are graph nodes like any other, and differentiating them gives higher orders.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .collectives import collective_vjp
from .functions import concat, gather_rows, pad, scatter_add_rows, where, window
from ..ir.ops import Op
from ..ir.graph import Node
from .tensor import Tensor

Grads = list[Tensor | None]
VjpRule = Callable[[Node, list[Tensor], Tensor, Tensor, list[bool]], Grads]


def _no_inputs(node: Node, xs: list[Tensor], out: Tensor, g: Tensor, needs: list[bool]) -> Grads:
    return []


def _not_differentiable(node: Node, xs: list[Tensor], out: Tensor, g: Tensor, needs: list[bool]) -> Grads:
    return [None] * len(xs)


def _unsupported(node: Node, xs: list[Tensor], out: Tensor, g: Tensor, needs: list[bool]) -> Grads:
    raise TypeError(f"no VJP rule for {node.op.value}: effects and loops are not differentiated")


def _tie_share(a: Tensor, b: Tensor) -> Tensor:
    """d max(a, b) / da: 1 where a wins, 1/2 on ties (PyTorch's rule), else 0."""
    return a.gt(b) + a.eq(b) * 0.5


def _expand_vjp(node, xs, out, g, needs):
    in_shape = xs[0].shape
    axes = tuple(i for i, (a, b) in enumerate(zip(in_shape, node.shape)) if a != b)
    return [g.sum(axes, keepdim=True) if axes else g]


def _slice_vjp(node, xs, out, g, needs):
    low = node.args.starts
    high = tuple(n - hi for n, hi in zip(xs[0].shape, node.args.stops))
    return [pad(g, low, high)]


def _pad_vjp(node, xs, out, g, needs):
    stops = tuple(lo + n for lo, n in zip(node.args.low, xs[0].shape))
    return [window(g, node.args.low, stops)]


def _concat_vjp(node, xs, out, g, needs):
    axis, grads, offset = node.args.axis, [], 0
    for x in xs:
        starts = [0] * g.ndim
        stops = list(g.shape)
        starts[axis], stops[axis] = offset, offset + x.shape[axis]
        grads.append(window(g, starts, stops))
        offset += x.shape[axis]
    return grads


def _max_vjp(node, xs, out, g, needs):
    # shared evenly among ties, like torch.amax
    mask = xs[0].eq(out.expand_to(xs[0].shape, "max"))
    count = mask.sum(node.args.axes, keepdim=True)
    return [mask * (g / count).expand_to(xs[0].shape, "max")]


def _dot_vjp(node, xs, out, g, needs):
    a, b = xs
    return [g @ b.mT if needs[0] else None, a.mT @ g if needs[1] else None]


def _pow_vjp(node, xs, out, g, needs):
    a, b = xs
    ga = g * b * a.pow(b - 1) if needs[0] else None
    # d/db a**b = a**b log a; where a == 0 the product is 0 (torch's value), not 0 * -inf
    gb = g * out * where(a.eq(0), 1.0, a).log() if needs[1] else None
    return [ga, gb]


VJP_RULES: dict[Op, VjpRule] = {
    **{op: _no_inputs for op in (Op.CONST, Op.IOTA, Op.READ, Op.FEEDER, Op.LOOP_INDEX, Op.RANDOM)},
    **{op: _not_differentiable for op in (Op.LT, Op.GT, Op.EQ, Op.ARGMAX, Op.CAST, Op.DETACH)},
    **{op: _unsupported for op in (Op.RECEIVER, Op.ASSIGN, Op.FOR)},
    Op.NEG: lambda n, xs, out, g, needs: [-g],
    Op.EXP: lambda n, xs, out, g, needs: [g * out],
    Op.LOG: lambda n, xs, out, g, needs: [g / xs[0]],
    Op.SQRT: lambda n, xs, out, g, needs: [g / (out * 2)],
    Op.RECIP: lambda n, xs, out, g, needs: [-(g * out * out)],
    Op.SIN: lambda n, xs, out, g, needs: [g * xs[0].cos()],
    Op.COS: lambda n, xs, out, g, needs: [-(g * xs[0].sin())],
    Op.TANH: lambda n, xs, out, g, needs: [g * (1 - out * out)],
    Op.ERF: lambda n, xs, out, g, needs: [g * (-(xs[0] * xs[0])).exp() * (2 / math.sqrt(math.pi))],
    Op.ADD: lambda n, xs, out, g, needs: [g, g],
    Op.SUB: lambda n, xs, out, g, needs: [g, -g],
    Op.MUL: lambda n, xs, out, g, needs: [g * xs[1] if needs[0] else None,
                                           g * xs[0] if needs[1] else None],
    Op.DIV: lambda n, xs, out, g, needs: [g / xs[1], -(g / xs[1]) * out],
    Op.POW: _pow_vjp,
    Op.MAXIMUM: lambda n, xs, out, g, needs: [g * _tie_share(xs[0], xs[1]), g * _tie_share(xs[1], xs[0])],
    Op.MINIMUM: lambda n, xs, out, g, needs: [g * _tie_share(xs[1], xs[0]), g * _tie_share(xs[0], xs[1])],
    Op.WHERE: lambda n, xs, out, g, needs: [None, where(xs[0], g, 0) if needs[1] else None,
                                             where(xs[0], 0, g) if needs[2] else None],
    Op.SUM: lambda n, xs, out, g, needs: [g.expand_to(xs[0].shape, "sum")],
    Op.MAX: _max_vjp,
    Op.DOT: _dot_vjp,
    Op.RESHAPE: lambda n, xs, out, g, needs: [g.reshape(xs[0].shape)],
    Op.PERMUTE: lambda n, xs, out, g, needs: [g.permute(tuple(int(i) for i in np.argsort(n.args.perm)))],
    Op.EXPAND: _expand_vjp,
    Op.SLICE: _slice_vjp,
    Op.PAD: _pad_vjp,
    Op.CONCAT: _concat_vjp,
    Op.GATHER: lambda n, xs, out, g, needs: [scatter_add_rows(xs[1], g, xs[0].shape[0]), None],
    Op.SCATTER_ADD: lambda n, xs, out, g, needs: [None, gather_rows(g, xs[0], check=False)],
    Op.COLLECTIVE: collective_vjp,
}
