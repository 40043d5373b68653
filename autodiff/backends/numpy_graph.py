"""The numpy device: runs the graph IR directly, the executable specification.

Blocks run in program order; a FOR runs its body `count` times; Feeders are
called when reached; Receivers deliver when reached (honouring `every`);
ASSIGN replaces a persistent tensor's value (arrays are never mutated in place,
so a READ taken before an update keeps the old value, as the graph says).
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from .. import comm
from ..ir.ops import Op
from ..ir.graph import Block, Node
from .registry import Backend, register
from .host import Failure, call_feeder, loop_in_step, receive_now, receiver_due
from ..ir.reference import REFERENCE, random_uniform


class NumpyGraphExecutor:
    """Evaluates a block tree with numpy; persistent values live in the Variables."""

    def __init__(self, root: Block) -> None:
        self.root = root
        self.random_counters: dict[int, int] = {}   # RANDOM node id -> executions so far
        self.iterations: list[int] = []              # iteration of each enclosing loop
        self.ops_executed = 0
        self.env: dict[int, np.ndarray] = {}

    def run(self) -> None:
        self.env = {}
        self.iterations = []
        self.failure = Failure()
        self._run_block(self.root)
        self.env = {}

    def _run_block(self, block: Block) -> None:
        for node in block.nodes:
            self._run_node(node)

    def _run_node(self, node: Node) -> None:
        handler = EFFECTS.get(node.op)
        if handler is not None:
            handler(self, node)
        else:
            self.env[node.id] = REFERENCE[node.op]([self.env[i.id] for i in node.inputs], node)
        self.ops_executed += 1

    # --- profiling (autodiff/profiler.py): a timed block loop, on the instance only --------
    def start_profile(self, recorder: Any) -> None:
        """Time every node the run evaluates (a loop as one span on the host track)."""
        def run_block(block: Block) -> None:
            for node in block.nodes:
                at = time.perf_counter()
                self._run_node(node)
                if node.op is Op.FOR:
                    recorder.span(f"for %{node.id} ({node.args.count} iterations)", "loop", "host", at,
                                  time.perf_counter())
                elif node.op not in (Op.FEEDER, Op.RECEIVER):   # those are timed as host calls
                    recorder.op(node, at, time.perf_counter(), "numpy")
        self._run_block = run_block

    def stop_profile(self, recorder: Any) -> None:
        self.__dict__.pop("_run_block", None)

    # --- effects and leaves that need the runtime --------------------------
    def _read(self, node: Node) -> None:
        self.env[node.id] = node.args.var.value

    def _assign(self, node: Node) -> None:
        var = node.args.var
        var.value = np.array(self.env[node.inputs[0].id], dtype=var.value.dtype, order="C")

    def _loop_index(self, node: Node) -> None:
        self.env[node.id] = np.array(self.iterations[-1], np.int32)

    def _random(self, node: Node) -> None:
        count = self.random_counters.get(node.id, 0)
        self.random_counters[node.id] = count + 1
        self.env[node.id] = random_uniform(node.args.seed, count, node.shape)

    def _feeder(self, node: Node) -> None:
        value = call_feeder(node.args.fn, node.args.name, node.shape, node.dtype, self.iterations)
        self.env[node.id] = value.copy()

    def _receiver(self, node: Node) -> None:
        if self.failure.error is None and receiver_due(node.args.every, self.iterations):
            values = [np.array(self.env[i.id]) for i in node.inputs]
            receive_now(node.args.fn, node.args.name, values, self.iterations, self.failure)

    def _collective(self, node: Node) -> None:
        args = node.args
        parts = [np.asarray(self.env[i.id]) for i in node.inputs]
        value = parts[0] if len(parts) == 1 else np.concatenate([p.reshape(-1) for p in parts])
        self.env[node.id] = comm.run(args.kind, value, args.op, args.root)

    def _for(self, node: Node) -> None:
        """Loops stop after a failure where `host.Failure` says, as on every backend."""
        body = node.args.body
        loop_in_step(node.args.count, self.iterations, self.failure, lambda i: self._run_block(body))


EFFECTS: dict[Op, Callable[[NumpyGraphExecutor, Node], None]] = {
    Op.READ: NumpyGraphExecutor._read,
    Op.ASSIGN: NumpyGraphExecutor._assign,
    Op.LOOP_INDEX: NumpyGraphExecutor._loop_index,
    Op.RANDOM: NumpyGraphExecutor._random,
    Op.FEEDER: NumpyGraphExecutor._feeder,
    Op.RECEIVER: NumpyGraphExecutor._receiver,
    Op.FOR: NumpyGraphExecutor._for,
    Op.COLLECTIVE: NumpyGraphExecutor._collective,
}


register(Backend(
    name="numpy", executor=lambda ir, plan, disable: NumpyGraphExecutor(ir), takes_proc=False,
    problem=lambda: None, preference=80, fallback=True,
    description="the optimized graph run with numpy: the executable specification"))
