"""Values on demand: reading a tensor runs the part of the trace it needs, as torch would.

The trace is lazy. `t.numpy()`, `t.item()`, `float(t)`, `print(t)` on an intermediate
run, on the default device, the nodes its value needs together with every effect traced
and not yet run (updates of persistent tensors, Receivers, Feeders, loops), each exactly
once; the value is then *known* (kept with its node), so the trace goes on from it: later
parts read it as an input. The first such read makes the program interactive; from then
on reading a persistent tensor runs the pending updates first, `execute()` runs what is
pending, and `zero_grad()` (a `.grad` set to None) ends a training step: the next op
traced first runs the step. Each run goes through the structural compile cache
(structural.py), so a loop that traces the same step every iteration compiles it once.

What a run hands back: the values asked for, and every intermediate the user still holds
(a live Tensor) that it can compute, so that later reads and backward() need not
recompute them. Nodes nobody holds are recomputed when a later part needs them (the
forward of a loss read before backward()), which is exact as long as what they read is
unchanged: a read of a persistent tensor updated since by a run is stale, and needing it
is a TraceError (torch's "modified by an inplace operation").

A program that never reads an intermediate is untouched: it is compiled as a whole by
`execute()`, as before.
"""
from __future__ import annotations

import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..errors import TraceError
from ..ir.graph import Node
from ..ir.ops import EFFECT_OPS, Op
from .program import Program
from .structural import Part, prepare, run_prepared

# a value read in interactive use is kept with its node (a node nobody holds drops it)
_known: "weakref.WeakKeyDictionary[Node, np.ndarray]" = weakref.WeakKeyDictionary()

# A step that zero_grad() ended runs on this thread while Python traces the next one (the
# device works while the host traces); every read, run and jit call waits for it first, so
# runs keep program order. AUTODIFF_SYNC_STEPS=1 runs steps on the caller's thread.
_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autodiff-step")


def read_value(tensor: Any) -> np.ndarray:
    """The value of a tensor (Tensor.numpy()): see the module docstring."""
    program = tensor._program
    wait(program)
    if tensor.is_persistent:
        if program.eager and program.block is program.root:
            flush_pending(program)
        return tensor._var.value.copy()
    node = tensor._node
    value = _known.get(node)
    if value is None:
        _check_readable(program, node, tensor)
        program.eager = True
        flush(program, [node])
        value = _known[node]
    return value.copy()


def value_or_none(tensor: Any) -> np.ndarray | None:
    """The value where reading it is allowed now (repr), else None."""
    try:
        return read_value(tensor)
    except TraceError:
        return None


def _check_readable(program: Program, node: Node, tensor: Any) -> None:
    if program.block is not program.root:
        raise TraceError(f"{tensor._describe()} has no value while an ir_for body (or an ad.jit function) "
                         "is traced: the body runs many times, so there is no one value to read now; "
                         "pass it to a Receiver to get its value each time it is computed")
    if node.block is not program.root:
        raise TraceError(f"{tensor._describe()} was computed inside an ir_for body (made at {node.where}) "
                         "and has no value after the loop; pass it to a Receiver inside the body, or "
                         "assign it to a persistent tensor")


def flush_pending(program: Program, background: bool = False) -> Any:
    """Run the effects traced and not yet run (if any); the Report of the run, or None
    (also when it runs in the background)."""
    wait(program)
    pending = program.root.nodes[program.run_upto:]
    if not any(n.op in EFFECT_OPS for n in pending):
        return None
    return flush(program, [], background=background)


def wait(program: Program) -> None:
    """Wait for the step running in the background; its values become known (its error is
    raised here)."""
    future = program.inflight
    if future is not None:
        program.inflight = None
        _known_from(future.result())


def flush(program: Program, wanted: list[Node], device: str | None = None, background: bool = False) -> Any:
    """Run the pending effects and the nodes `wanted` needs; their values become known."""
    wait(program)
    pending = program.root.nodes[program.run_upto:]
    effects = [n for n in pending if n.op in EFFECT_OPS]
    # every intermediate the user still holds comes back too (if this run can compute it)
    held = [n for n in sorted((t._node for t in list(program.live)), key=lambda n: n.id)
            if n not in _known and n.block is program.root and n.op is not Op.CONST]
    randoms = [n for n in pending if n.op is Op.RANDOM]   # a draw is kept
    outputs = list(dict.fromkeys(wanted + held + randoms))
    nodes, inputs = _needed(program, outputs + effects)
    if any(n.id < program.fresh_from for n in nodes):
        # made before the last run: some may read values that run overwrote (the usual step
        # has none, and skips this walk)
        checker = _Validity(program)
        for node in wanted + effects:
            checker.require(node)
        outputs = list(dict.fromkeys(wanted + [n for n in held + randoms if checker.computable(n)]))
        nodes, inputs = _needed(program, outputs + effects)
    report = None
    if nodes or outputs:
        part = Part(nodes, outputs, inputs)
        found, binding = prepare(part, device)   # compiles here, on the caller's thread
        if background and not os.environ.get("AUTODIFF_SYNC_STEPS"):
            program.inflight = _worker.submit(_run, found, binding, part)
        else:
            report = _known_from(_run(found, binding, part))
    _finish(program)
    return report


def _run(found: Any, binding: Any, part: Part) -> tuple[Part, list[np.ndarray], Any]:
    values, report = run_prepared(found, binding, part)
    return part, values, report


def _known_from(result: tuple[Part, list[np.ndarray], Any]) -> Any:
    """Keep what a run computed: its outputs and the values its Feeders gave."""
    part, values, report = result
    for node, value in zip(part.outputs, values):
        _known[node] = value
    for node, value in part.inputs.items():
        if node.op is Op.FEEDER:
            _known[node] = value
    return report


class _Validity:
    """Whether a node can be computed now: every read it needs still sees the value it did."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.pending = {id(n) for n in program.root.nodes[program.run_upto:]}
        self.memo: dict[int, str | None] = {}   # id(node) -> why not (None: computable)

    def computable(self, node: Node) -> bool:
        return self.why_not(node) is None

    def require(self, node: Node) -> None:
        why = self.why_not(node)
        if why is not None:
            raise TraceError(why)

    def why_not(self, start: Node) -> str | None:
        stack, order = [start], []
        while stack:   # iterative: the graph of a long step is deep
            node = stack.pop()
            if id(node) in self.memo or node in _known:
                continue
            self.memo[id(node)] = None
            order.append(node)
            stack.extend(_dependencies(node))
        order.sort(key=lambda n: n.id)   # ids are a topological order: inputs first
        for node in order:
            why = self._own(node)
            for dep in _dependencies(node):
                if why is None and dep not in _known:
                    why = self.memo.get(id(dep))
            self.memo[id(node)] = why
        return self.memo.get(id(start))

    def _own(self, node: Node) -> str | None:
        if node.op is Op.READ:
            var = node.args.var
            seen = self.program.read_epoch.get(node, 0)
            if seen < self.program.assigns_run.get(var.id, 0):
                return (f"the value of '{var.name}' read at {node.where} is gone: an in-place update of "
                        f"'{var.name}' traced after that read has run since (torch: a variable needed "
                        "for gradient computation has been modified by an inplace operation); read "
                        "the values you need before the update runs")
        elif node.op in EFFECT_OPS and id(node) not in self.pending:
            return (f"the {node.op.value} at {node.where} ran in an earlier run (execute() or a read) "
                    "and its value was not kept; use a Receiver in that program to see it")
        return None


def _dependencies(node: Node) -> list[Node]:
    """A node's inputs; of a loop, also the nodes of enclosing blocks its body uses."""
    if node.op is not Op.FOR:
        return list(node.inputs)
    body = node.args.body
    return list(node.inputs) + [i for n in body.walk() for i in n.inputs if not body.encloses(i.block)]


def _needed(program: Program, roots: list[Node]) -> tuple[list[Node], dict[Node, np.ndarray]]:
    """The root-level nodes the roots need, in program order, and the known values they read."""
    seen: dict[int, Node] = {}
    inputs: dict[Node, np.ndarray] = {}
    stack = list(roots)
    while stack:
        node = stack.pop()
        if id(node) in seen or node in inputs:
            continue
        value = _known.get(node)
        if value is not None:
            inputs[node] = value
            continue
        seen[id(node)] = node
        stack.extend(_dependencies(node))
    return sorted(seen.values(), key=lambda n: n.id), inputs


def _finish(program: Program) -> None:
    """After a run: everything pending ran; reads made before it see the old values."""
    program.assigns_run = dict(program.assigns)
    program.fresh_from = program._next_id
    del program.root.nodes[program.run_upto:]
    program.forget_block_reads(program.root)
    program.boundary = False
    _drop_dead_variables(program)


def _drop_dead_variables(program: Program) -> None:
    """Forget the persistent tensors nothing refers to any more (the arrays a step fed in)."""
    refs = [weakref.ref(v) for v in program.variables]
    program.variables = []
    program.variables = [v for v in (r() for r in refs) if v is not None]


def after_program_run(program: Program, nodes_run: int) -> None:
    """`execute()` ran the first `nodes_run` root nodes: reads they made of a tensor updated
    after them see old values; the others (no update after them) see the host's value."""
    if program.internal:
        return
    program.fresh_from = program._next_id
    program.run_upto = max(program.run_upto, nodes_run)
    ran = program.root.nodes[:nodes_run]
    assigned = list(dict.fromkeys(n.args.var.id for top in ran for n in _walk_one(top) if n.op is Op.ASSIGN))
    for var_id in assigned:
        program.assigns[var_id] = program.assigns.get(var_id, 0) + 1
        program.assigns_run[var_id] = program.assigns[var_id]
    updated_later: set[int] = set()
    for node in reversed(ran):
        if node.op is Op.ASSIGN:
            updated_later.add(node.args.var.id)
        elif node.op is Op.FOR:
            updated_later.update(n.args.var.id for n in _walk_one(node) if n.op is Op.ASSIGN)
        elif node.op is Op.READ and node.args.var.id not in updated_later:
            program.read_epoch[node] = program.assigns.get(node.args.var.id, 0)


def _walk_one(node: Node) -> list[Node]:
    """A node, and if it is a loop every node of its body."""
    return [node] + (list(node.args.body.walk()) if node.op is Op.FOR else [])


def note_updates(program: Program, var_ids: list[int]) -> None:
    """A program of its own (ad.jit) updated these tensors now: earlier reads see old values."""
    wait(program)
    program.fresh_from = program._next_id
    var_ids = list(dict.fromkeys(var_ids))
    for var_id in var_ids:
        program.assigns[var_id] = program.assigns.get(var_id, 0) + 1
        program.assigns_run[var_id] = program.assigns[var_id]
    program.forget_reads(var_ids)


def execute_pending(program: Program, device: str | None = None) -> Any:
    """`execute()` of an interactive program: run what is pending (the Report, or None)."""
    if program.block is not program.root:
        raise TraceError("execute() while an ir_for body is traced")
    return flush(program, [], device)
