"""cse: compute structurally identical nodes once ("repeat optimization").

Two nodes merge when they have the same op, arguments, shape, dtype and (already
merged) inputs, and the earlier one is visible where the later one is (its block
encloses the later one's block). That merges across the forward and backward
passes and across modules, and hoists loop-invariant copies inside a loop body onto
the node before the loop.

Never merged: Feeders (each call is new host data), RANDOM (each is a new draw),
Receivers, updates and loops (effects), loop indices. Reads of a persistent tensor
merge only within one *version* of it: every update, and every loop that updates it,
starts a new version, and inside such a loop the body sees a version of its own.
"""
from __future__ import annotations

import math
from typing import Hashable

from ..ir.ops import COMMUTATIVE_OPS, EFFECT_OPS, Op
from ..ir.graph import Node
from .rewrite import Graph, GraphBuilder, assigned_variables, rebuild

NEVER_MERGED = EFFECT_OPS + (Op.LOOP_INDEX,)


class _CommonSubexpressions:
    def __init__(self) -> None:
        self.table: dict[Hashable, Node] = {}
        self.version: dict[int, int] = {}   # variable id -> current version
        self._versions_made = 0

    def _new_version(self, var_ids: list[int]) -> None:
        for var_id in var_ids:
            self._versions_made += 1
            self.version[var_id] = self._versions_made

    # loop hooks: a body that updates a tensor reads a new version of it, and so does
    # the code after the loop
    def enter_loop(self, builder: GraphBuilder, old_for: Node) -> None:
        self._new_version(assigned_variables(old_for.args.body))

    def exit_loop(self, builder: GraphBuilder, old_for: Node) -> None:
        self._new_version(assigned_variables(old_for.args.body))

    def key(self, old: Node, inputs: tuple[Node, ...]) -> Hashable:
        if old.op is Op.READ:
            var_id = old.args.var.id
            args_key: Hashable = ("var", var_id, self.version.get(var_id, 0))
        elif old.op is Op.CONST:
            value = old.args.value
            # repr keeps -0.0 apart from 0.0 and lets nan equal nan
            args_key = repr(float(value)) if isinstance(value, float) else value
        else:
            args_key = old.args
        input_ids = tuple(i.id for i in inputs)
        if old.op in COMMUTATIVE_OPS:
            input_ids = tuple(sorted(input_ids))   # a + b is b + a
        return (old.op, args_key, old.shape, old.dtype, input_ids)

    def visit(self, builder: GraphBuilder, old: Node, inputs: tuple[Node, ...]) -> Node:
        if old.op in NEVER_MERGED:
            if old.op is Op.ASSIGN:
                self._new_version([old.args.var.id])
            return builder.copy(old, inputs)
        key = self.key(old, inputs)
        found = self.table.get(key)
        if found is not None and found.block.encloses(builder.block):
            return found
        node = builder.copy(old, inputs)
        self.table[key] = node
        return node


def cse(graph: Graph) -> Graph:
    state = _CommonSubexpressions()
    return Graph(rebuild(graph.root, state.visit, hooks=state), graph.variables)
