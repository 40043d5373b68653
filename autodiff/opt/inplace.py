"""inplace: mark updates after which nobody reads the old value of the tensor.

An update `ASSIGN(p, value)` is marked `in_place` when no reader of an earlier value
of p runs after it. Lowering may then compute `value` straight into p's storage
(for `p - lr * grad`, each element reads exactly the element it writes), and the
memory planner needs no snapshot of the old p.

A reader "runs after" the update when it comes later in the update's block (or in a
loop nested there), or when the read was taken outside the update's loop and is used
inside it: the next iteration reads it again after this iteration's update.
"""
from __future__ import annotations

from dataclasses import replace

from ..ir.ops import MOVEMENT_OPS, Op
from ..ir.graph import Block, Node
from .rewrite import Graph, GraphBuilder, rebuild


def _positions(root: Block) -> dict[int, int]:
    """Program-order index of every node (a FOR after its whole body)."""
    order: dict[int, int] = {}
    for i, node in enumerate(root.walk()):
        order[node.id] = i
    # walk() yields a FOR before its body: give it the index after its last body node
    for node in root.walk():
        if node.op is Op.FOR:
            last = max((order[n.id] for n in node.args.body.walk()), default=order[node.id])
            order[node.id] = last + 0.5
    return order


def _common_block(a: Block, b: Block) -> Block:
    """The innermost block that encloses both."""
    block: Block | None = a
    while block is not None and not block.encloses(b):
        block = block.parent
    assert block is not None
    return block


def _late_reads(root: Block) -> list[tuple[Node, Node]]:
    """(READ, ASSIGN) pairs where the read's value is still used after the update ran."""
    order = _positions(root)
    readers: dict[int, list[Node]] = {}        # READ id -> nodes that use it
    reads_of: dict[int, list[Node]] = {}       # variable id -> its READ nodes
    updates: list[Node] = []
    # a view (reshape, permute, slice, ...) of a read computes nothing where it stands: it
    # becomes an access expression into the variable's storage, evaluated where the view is
    # used, so the users of a view are users of the read it views (a Receiver of
    # `p.reshape(-1)` traced before `p.sub_(...)` must see the old p)
    viewed: dict[int, list[Node]] = {}         # view node id -> the READs it views
    for node in root.walk():
        if node.op is Op.READ:
            reads_of.setdefault(node.args.var.id, []).append(node)
        elif node.op is Op.ASSIGN:
            updates.append(node)
        for i in node.inputs:
            for read in ([i] if i.op is Op.READ else viewed.get(i.id, [])):
                readers.setdefault(read.id, []).append(node)
                if node.op in MOVEMENT_OPS:
                    viewed.setdefault(node.id, []).append(read)
    pairs = []
    for update in updates:
        at = order[update.id]
        for read in reads_of.get(update.args.var.id, []):
            if order[read.id] > at:
                continue   # reads the new value
            for user in readers.get(read.id, []):
                if user is update:
                    continue
                used_later = order[user.id] > at
                # user and update share a loop the read is outside of: the next iteration
                # uses the read again after this iteration's update
                common = _common_block(user.block, update.block)
                loop_reuse = common is not read.block and read.block.encloses(common)
                if used_later or loop_reuse:
                    pairs.append((read, update))
                    break
    return pairs


def in_place_updates(root: Block) -> set[int]:
    """Ids of the ASSIGN nodes that can write straight into their tensor."""
    late = {update.id for _, update in _late_reads(root)}
    return {n.id for n in root.walk() if n.op is Op.ASSIGN and n.id not in late}


def stale_reads(root: Block) -> set[int]:
    """Ids of the READ nodes whose value must be copied before an update overwrites it."""
    return {read.id for read, _ in _late_reads(root)}


def mark_in_place(graph: Graph) -> Graph:
    marked = in_place_updates(graph.root)

    def visit(builder: GraphBuilder, old: Node, inputs: tuple[Node, ...]) -> Node:
        if old.op is Op.ASSIGN:
            return builder.copy(old, inputs, replace(old.args, in_place=old.id in marked))
        return builder.copy(old, inputs)

    return Graph(rebuild(graph.root, visit), graph.variables)
