"""The numpy device: runs the graph IR directly, the executable specification.

Blocks run in program order; a FOR runs its body `count` times; Feeders are
called when reached; Receivers deliver when reached (honouring `every`);
ASSIGN replaces a persistent tensor's value (arrays are never mutated in place,
so a READ taken before an update keeps the old value, as the graph says).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import FeederError, ReceiverError
from ..graph.ops import Op
from ..graph.program import Block, Node
from .numpy_ops import REFERENCE, random_uniform


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
        self._run_block(self.root)
        self.env = {}

    def _run_block(self, block: Block) -> None:
        env = self.env
        for node in block.nodes:
            handler = EFFECTS.get(node.op)
            if handler is not None:
                handler(self, node)
            else:
                env[node.id] = REFERENCE[node.op]([env[i.id] for i in node.inputs], node)
            self.ops_executed += 1

    def where(self) -> str:
        if not self.iterations:
            return "outside any loop"
        return "iteration " + ", ".join(str(i) for i in self.iterations)

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
        name = node.args.name
        try:
            value = node.args.fn()
        except Exception as err:
            raise FeederError(f"Feeder '{name}' raised at {self.where()}: {err!r}") from err
        if not isinstance(value, np.ndarray) or value.shape != node.shape or str(value.dtype) != node.dtype:
            got = (f"shape {value.shape} dtype {value.dtype}" if isinstance(value, np.ndarray)
                   else f"a {type(value).__name__}")
            raise FeederError(f"Feeder '{name}' returned {got} at {self.where()}; expected a numpy "
                              f"array of shape {node.shape} dtype {node.dtype} (convert with "
                              f"np.asarray(x, np.{node.dtype}).reshape({node.shape}))")
        self.env[node.id] = value.copy()

    def _receiver(self, node: Node) -> None:
        every = node.args.every
        if self.iterations and (self.iterations[-1] + 1) % every:
            return
        values = [np.array(self.env[i.id]) for i in node.inputs]
        try:
            node.args.fn(*values)
        except Exception as err:
            raise ReceiverError(f"Receiver '{node.args.name}' raised at {self.where()}: {err!r}; "
                                "persistent tensors keep the values computed so far",
                                node.args.name) from err

    def _for(self, node: Node) -> None:
        body = node.args.body
        self.iterations.append(0)
        try:
            for i in range(node.args.count):
                self.iterations[-1] = i
                self._run_block(body)
        finally:
            self.iterations.pop()


EFFECTS: dict[Op, Callable[[NumpyGraphExecutor, Node], None]] = {
    Op.READ: NumpyGraphExecutor._read,
    Op.ASSIGN: NumpyGraphExecutor._assign,
    Op.LOOP_INDEX: NumpyGraphExecutor._loop_index,
    Op.RANDOM: NumpyGraphExecutor._random,
    Op.FEEDER: NumpyGraphExecutor._feeder,
    Op.RECEIVER: NumpyGraphExecutor._receiver,
    Op.FOR: NumpyGraphExecutor._for,
}
