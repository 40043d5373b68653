"""Helpers for pass tests: trace small programs and compare graphs structurally."""
from __future__ import annotations

from typing import Callable

import autodiff as ad
from autodiff.ir.ops import Op
from autodiff.ir.graph import Block
from autodiff.opt import Graph


def trace(build: Callable[[], None]) -> Graph:
    """Trace `build()` into a fresh program and return its graph."""
    with ad.Program() as program:
        ad.manual_seed(0)
        build()
    return Graph(program.root, program.variables)


def structure(block: Block) -> list[tuple]:
    """A comparable description: (op, args, shape, dtype, input positions), loops nested.

    Node ids, source lines and object identities are left out; persistent tensors
    are named by their name, Feeders and Receivers by theirs.
    """
    position: dict[int, int] = {}
    for i, node in enumerate(block.walk()):
        position[node.id] = i

    def describe(nodes) -> list[tuple]:
        out = []
        for node in nodes:
            if node.op is Op.FOR:
                out.append(("for", node.args.count, describe(node.args.body.nodes)))
                continue
            if node.op in (Op.READ, Op.ASSIGN):
                args = (node.args.var.name, getattr(node.args, "in_place", None))
            elif node.op in (Op.FEEDER, Op.RECEIVER):
                args = node.args.name
            else:
                args = repr(node.args)
            out.append((node.op.value, args, node.shape, node.dtype,
                        tuple(position[i.id] - position[node.id] for i in node.inputs)))
        return out

    return describe(block.nodes)


def ops_of(graph: Graph) -> list[str]:
    return [n.op.value for n in graph.root.walk()]
