"""The one traversal every graph pass is built on: copy a block tree in program order.

A pass never mutates its input (the user's traced program stays as traced);
it calls `rebuild` with a `visit` function that decides, node by node, what
the new graph holds in its place: a new node, an existing one (merging), or
nothing (dropping). The walk is iterative (a stack of block frames) and
linear in the number of nodes.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

from ..ir.ops import ForArgs, Op, OpArgs
from ..ir.graph import Block, Node


@dataclass
class Graph:
    """A program's graph IR as a pass sees it: the root block and the persistent tensors."""
    root: Block
    variables: list = field(default_factory=list)

    def nodes(self) -> list[Node]:
        return list(self.root.walk())

    def count(self) -> int:
        return sum(1 for _ in self.root.walk())


class GraphBuilder:
    """Appends new nodes to the block being rebuilt, numbering them in creation order."""

    def __init__(self) -> None:
        self.root = Block()
        self.block = self.root
        self._next_id = 0

    def emit(self, op: Op, inputs: tuple[Node, ...], shape: tuple[int, ...], dtype: str,
             args: OpArgs, where: str = "") -> Node:
        for node in inputs:
            assert node.block.encloses(self.block), f"{op.value}: input %{node.id} is not visible here"
        node = Node(self._next_id, op, tuple(inputs), tuple(shape), dtype, args, self.block, where)
        self._next_id += 1
        self.block.nodes.append(node)
        return node

    def copy(self, old: Node, inputs: tuple[Node, ...], args: OpArgs | None = None) -> Node:
        """The old node, re-created over the new inputs."""
        return self.emit(old.op, inputs, old.shape, old.dtype, old.args if args is None else args, old.where)


Visit = Callable[[GraphBuilder, Node, tuple[Node, ...]], "Node | None"]


class LoopHooks(Protocol):
    def enter_loop(self, builder: GraphBuilder, old_for: Node) -> None: ...
    def exit_loop(self, builder: GraphBuilder, old_for: Node) -> None: ...


@dataclass
class _Frame:
    old_nodes: list[Node]
    at: int
    new_block: Block
    old_for: Node | None   # the FOR whose body this frame rebuilds


def rebuild(root: Block, visit: Visit, hooks: LoopHooks | None = None,
            keep: Callable[[Node], bool] | None = None) -> Block:
    """A new block tree: `visit(builder, old, new_inputs)` gives each old node's replacement.

    Nodes for which `keep` says False are dropped without a visit. A FOR is re-made
    after its body; a body left empty drops its loop.
    """
    builder = GraphBuilder()
    mapped: dict[int, Node | None] = {}
    stack = [_Frame(root.nodes, 0, builder.root, None)]
    while stack:
        frame = stack[-1]
        if frame.at == len(frame.old_nodes):
            stack.pop()
            if frame.old_for is not None:
                _finish_loop(builder, frame, mapped, hooks)
            continue
        old = frame.old_nodes[frame.at]
        frame.at += 1
        if old.op is Op.FOR:
            if hooks:
                hooks.enter_loop(builder, old)
            body = Block(parent=builder.block)
            builder.block = body
            stack.append(_Frame(old.args.body.nodes, 0, body, old))
            continue
        if keep is not None and not keep(old):
            mapped[old.id] = None
            continue
        inputs = []
        for i in old.inputs:
            new_input = mapped.get(i.id)
            if new_input is None:
                raise AssertionError(f"%{old.id} {old.op.value} uses %{i.id}, which the pass dropped")
            inputs.append(new_input)
        mapped[old.id] = visit(builder, old, tuple(inputs))
    return builder.root


def _finish_loop(builder: GraphBuilder, frame: _Frame, mapped: dict[int, Node | None],
                 hooks: LoopHooks | None) -> None:
    body, old_for = frame.new_block, frame.old_for
    builder.block = body.parent
    if body.nodes:
        old_args: ForArgs = old_for.args
        index = mapped.get(old_args.index.id) if old_args.index is not None else None
        new_for = builder.emit(Op.FOR, (), old_for.shape, old_for.dtype,
                               replace(old_args, body=body, index=index), old_for.where)
        body.owner = new_for
        mapped[old_for.id] = new_for
    if hooks:
        hooks.exit_loop(builder, old_for)


def assigned_variables(block: Block) -> list[int]:
    """Ids of the persistent tensors updated anywhere in `block` (loops included)."""
    out: dict[int, None] = {}
    for node in block.walk():
        if node.op is Op.ASSIGN:
            out[node.args.var.id] = None
    return list(out)


def copy_graph(graph: Graph) -> Graph:
    return Graph(rebuild(graph.root, lambda b, old, ins: b.copy(old, ins)), graph.variables)
