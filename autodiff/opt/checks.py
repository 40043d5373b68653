"""drop_index_checks: remove the index checks the tracer added (disable={"index_check"}).

They are Receivers marked `check`; prune, which runs after, removes the work only they
needed. Runs only when the checks are switched off: an explicit trade of safety for speed.
"""
from __future__ import annotations

from ..ir.graph import Node
from ..ir.ops import Op
from .rewrite import Graph, GraphBuilder, rebuild


def drop_index_checks(graph: Graph) -> Graph:
    def visit(builder: GraphBuilder, old: Node, inputs: tuple[Node, ...]) -> Node:
        return builder.copy(old, inputs)

    def keep(node: Node) -> bool:
        return not (node.op is Op.RECEIVER and node.args.check)

    return Graph(rebuild(graph.root, visit, keep=keep), graph.variables)
