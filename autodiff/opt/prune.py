"""prune: keep only what a Receiver, an update of a persistent tensor or a Feeder needs.

Roots are the effects: RECEIVER, ASSIGN, FEEDER and RANDOM. Feeders stay even when their
value is unused: their host functions often advance shared state (an iterator, the labels
that go with the images just drawn), so skipping a call would put the host out of step.
RANDOM nodes stay so that the random stream does not depend on what the graph uses.
A loop whose body keeps nothing is dropped.

One reverse sweep suffices: a value never crosses iterations except through persistent
tensors, whose updates are roots.
"""
from __future__ import annotations

from typing import Iterator

from ..ir.ops import Op
from ..ir.graph import Block, Node
from .rewrite import Graph, GraphBuilder, rebuild

ROOT_OPS = (Op.RECEIVER, Op.ASSIGN, Op.FEEDER, Op.RANDOM)


def live_nodes(root: Block) -> set[int]:
    """Ids of the nodes some root depends on (FOR nodes whose body keeps something included)."""
    live: set[int] = set()
    # frames: (reversed iterator over a block, the FOR owning it or None)
    stack: list[tuple[Iterator[Node], Node | None]] = [(reversed(root.nodes), None)]
    while stack:
        nodes, owner = stack[-1]
        node = next(nodes, None)
        if node is None:
            stack.pop()
            if owner is not None and any(n.id in live for n in owner.args.body.nodes):
                live.add(owner.id)
            continue
        if node.op is Op.FOR:
            stack.append((reversed(node.args.body.nodes), node))
            continue
        if node.op in ROOT_OPS or node.id in live:
            live.add(node.id)
            live.update(i.id for i in node.inputs)
    return live


def prune(graph: Graph) -> Graph:
    live = live_nodes(graph.root)

    def visit(builder: GraphBuilder, old: Node, inputs: tuple[Node, ...]) -> Node:
        return builder.copy(old, inputs)

    return Graph(rebuild(graph.root, visit, keep=lambda node: node.id in live), graph.variables)
