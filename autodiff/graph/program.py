"""The graph IR: nodes, blocks, persistent variables and the program that owns them.

A program is a root `Block`: an ordered list of nodes in the order they were
traced. That order is a valid topological order (a node's inputs are always
created before it) and it is also the order of effects: Feeders are called,
Receivers deliver and persistent tensors are updated in block order. A `FOR`
node owns a body block that runs `count` times; body nodes may read values of
enclosing blocks (loop-invariant), never the other way round.

A persistent tensor is a `Variable`. Reading it is a `READ` node, created lazily
in the block where it is used; an in-place update is an `ASSIGN` node, after
which the next use creates a fresh `READ`. So a `READ` always means "the value
at this point of the block", and the numpy reference only has to run the block
in order.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .ops import Op, OpArgs


class TraceError(ValueError):
    """A user error found while tracing: names the op, the shapes and the user's line."""


@dataclass(eq=False)
class Node:
    id: int
    op: Op
    inputs: tuple["Node", ...]
    shape: tuple[int, ...]
    dtype: str
    args: OpArgs
    block: "Block"
    where: str = ""

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * 4  # float32 and int32 only

    def __repr__(self) -> str:
        return f"%{self.id}:{self.op.value}{list(self.shape)}"


@dataclass(eq=False)
class Block:
    """An ordered list of nodes; the root of a program or the body of a FOR."""
    parent: "Block | None" = None
    nodes: list[Node] = field(default_factory=list)
    owner: "Node | None" = None   # the FOR node whose body this is

    def encloses(self, other: "Block") -> bool:
        """True when `other` is this block or nested inside it."""
        block: Block | None = other
        while block is not None:
            if block is self:
                return True
            block = block.parent
        return False

    def walk(self) -> Iterator[Node]:
        """Every node of this block and its nested bodies, in program order."""
        stack: list[Iterator[Node]] = [iter(self.nodes)]
        while stack:
            node = next(stack[-1], None)
            if node is None:
                stack.pop()
                continue
            yield node
            if node.op is Op.FOR:
                stack.append(iter(node.args.body.nodes))


@dataclass(eq=False)
class Variable:
    """A persistent device tensor: a parameter, optimizer state, or any user tensor."""
    id: int
    name: str
    value: np.ndarray
    requires_grad: bool = True
    grad: object = None   # the Tensor accumulated by backward() since zero_grad, or None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    @property
    def dtype(self) -> str:
        return str(self.value.dtype)

    @property
    def nbytes(self) -> int:
        return int(self.value.nbytes)


class Program:
    """A traced training program. Use as `with ad.Program() as p: ...; p.execute()`."""

    def __init__(self) -> None:
        self.root = Block()
        self.variables: list[Variable] = []
        self._block_stack: list[Block] = [self.root]
        self._next_id = 0
        # (block, variable id) -> the READ node that holds the variable's value there
        self._reads: dict[tuple[int, int], Node] = {}
        self.rng = np.random.default_rng(0)
        self._random_seeds = 0
        self._previous: list[Program] = []

    # --- blocks -------------------------------------------------------------
    @property
    def block(self) -> Block:
        return self._block_stack[-1]

    def push_block(self, block: Block) -> None:
        self._block_stack.append(block)

    def pop_block(self) -> Block:
        return self._block_stack.pop()

    # --- nodes --------------------------------------------------------------
    def add_node(self, op: Op, inputs: tuple[Node, ...], shape: tuple[int, ...], dtype: str,
                 args: OpArgs, where: str) -> Node:
        node = Node(self._next_id, op, inputs, shape, dtype, args, self.block, where)
        self._next_id += 1
        self.block.nodes.append(node)
        return node

    def new_variable(self, value: np.ndarray, name: str | None) -> Variable:
        var = Variable(len(self.variables), name or f"t{len(self.variables)}", value)
        self.variables.append(var)
        return var

    def cached_read(self, var: Variable) -> Node | None:
        return self._reads.get((id(self.block), var.id))

    def remember_read(self, var: Variable, node: Node) -> None:
        self._reads[(id(self.block), var.id)] = node

    def forget_reads(self, var_ids: list[int] | None = None) -> None:
        """After an update (or a loop that updates), later uses must read again."""
        key_block = id(self.block)
        for key in list(self._reads):
            if key[0] == key_block and (var_ids is None or key[1] in var_ids):
                del self._reads[key]

    def next_random_seed(self) -> int:
        self._random_seeds += 1
        return int(self.rng.integers(0, 2**31 - 1)) ^ self._random_seeds

    # --- context ------------------------------------------------------------
    def __enter__(self) -> "Program":
        _program_stack.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _program_stack.pop()

    def execute(self, device: str | None = None, **options):  # -> Report
        from ..runtime import execute_program
        return execute_program(self, device, **options)

    def compile(self, device: str | None = None, **options):
        from ..runtime import compile_program
        return compile_program(self, device, **options)


_program_stack: list[Program] = [Program()]


def current_program() -> Program:
    return _program_stack[-1]


def reset() -> None:
    """Forget the default program (all traced nodes and persistent tensors)."""
    _program_stack[0] = Program()


def manual_seed(seed: int) -> None:
    """Make random initialisation (randn, rand, module init) and random ops reproducible."""
    program = current_program()
    program.rng = np.random.default_rng(seed)
    program._random_seeds = 0


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_source_line() -> str:
    """file:line of the innermost caller outside the autodiff package."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep):
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"
