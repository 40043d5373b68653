"""The program being traced: the root block, its persistent variables, the block stack.

`Program.execute()`/`compile()` reach the compiler through `entry.compiler()`, an
entry point the compiler registers when `autodiff` is imported, so the frontend
never imports a stage below it.
"""
from __future__ import annotations

import contextvars
import os
import sys
import threading
import weakref

import numpy as np

from ..ir.graph import Block, Node, Variable
from ..ir.ops import Op, OpArgs
from . import entry


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
        # node id -> source line of the backward() that differentiated through it without
        # retain_graph=True: a second backward() through that node is an error, as in torch
        # node -> the backward() that differentiated it; weak: an interactive loop's old steps go
        self.freed_by_backward: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        # --- interactive use (lazy.py): what reading a value needs to know --------------
        self._next_var = 0                         # variable ids stay unique when lazy.py drops dead ones
        self.live: weakref.WeakSet = weakref.WeakSet()   # intermediate Tensors the user may still hold
        self.assigns: dict[int, int] = {}          # variable id -> updates traced so far
        self.assigns_run: dict[int, int] = {}      # variable id -> updates that have run (host value)
        self.read_epoch: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # READ -> assigns before it
        self.run_upto = 0                          # root nodes [0, run_upto) belong to a program already run
        self.eager = False                         # a value was read: later reads run what is pending
        self.boundary = False                      # zero_grad() in eager mode: flush before the next op
        self.inflight: object = None               # lazy.py: a step's run still going (a Future)
        self.internal = False                      # a copy lazy.py or jit.py compiles: runs note nothing
        self.fresh_from = 0                        # nodes from this id on were made after the last run

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
        if self.boundary and self.block is self.root:
            self.boundary = False
            from .lazy import flush_pending   # lazy.py builds on this module
            flush_pending(self, background=True)
        node = Node(self._next_id, op, inputs, shape, dtype, args, self.block, where)
        self._next_id += 1
        self.block.nodes.append(node)
        return node

    def new_variable(self, value: np.ndarray, name: str | None) -> Variable:
        var = Variable(self._next_var, name or f"t{self._next_var}", value)
        self._next_var += 1
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

    def forget_block_reads(self, block: Block) -> None:
        """A block's cached reads are out of date (lazy.py ran what was traced)."""
        self._reads = {key: node for key, node in self._reads.items() if key[0] != id(block)}

    def next_random_seed(self) -> int:
        self._random_seeds += 1
        return int(self.rng.integers(0, 2**31 - 1)) ^ self._random_seeds

    # --- context ------------------------------------------------------------
    def __enter__(self) -> "Program":
        _program_stack.set(_program_stack.get() + (self,))
        return self

    def __exit__(self, *exc: object) -> None:
        stack = _program_stack.get()
        assert stack and stack[-1] is self, "Program contexts must be exited in the order they were entered"
        _program_stack.set(stack[:-1])

    def execute(self, device: str | None = None, **options):  # -> compiler.Report
        """Compile and run this program once (see `autodiff.execute`)."""
        return entry.compiler().execute_program(self, device, **options)

    def compile(self, device: str | None = None, **options):  # -> compiler.CompiledProgram
        """Compile this program without running it (see `autodiff.compile`)."""
        return entry.compiler().compile_program(self, device, **options)


# The programs entered with `with Program():`, innermost last. A ContextVar, so that two
# threads (or asyncio tasks) tracing at once each see their own stack; a tuple, so that a
# context copied from another never shares a list that one of them mutates.
_program_stack: contextvars.ContextVar[tuple[Program, ...]] = contextvars.ContextVar(
    "autodiff_program_stack", default=())


class _DefaultProgram(threading.local):
    """The program traced into outside any `with Program():`, one per thread (made on first use)."""
    program: Program | None = None


_default = _DefaultProgram()


def current_program() -> Program:
    stack = _program_stack.get()
    if stack:
        return stack[-1]
    if _default.program is None:
        _default.program = Program()
    return _default.program


def reset() -> None:
    """Forget this thread's default program (all traced nodes and persistent tensors)."""
    _default.program = Program()


def manual_seed(seed: int) -> None:
    """Make random initialisation (randn, rand, module init) and random ops reproducible."""
    program = current_program()
    program.rng = np.random.default_rng(seed)
    program._random_seeds = 0


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_source_line() -> str:
    """file:line of the innermost caller outside the autodiff package."""
    frame = sys._getframe(1)
    inside = _inside_package   # looked up here, not called per frame: ~7 frames per traced op
    while frame is not None:
        filename = frame.f_code.co_filename
        flag = inside.get(filename)
        if flag is None:
            flag = _in_package(filename)
        if not flag:
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"


_inside_package: dict[str, bool] = {}   # file name -> whether it is part of autodiff


def _in_package(filename: str) -> bool:
    inside = _inside_package.get(filename)
    if inside is None:   # abspath per frame was a tenth of the time of tracing a step
        inside = _inside_package[filename] = os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep)
    return inside


def called_from_package(depth: int = 2) -> bool:
    """Whether the caller `depth` frames up is autodiff's own code (an error message being
    written, say), not the user's."""
    return _in_package(sys._getframe(depth).f_code.co_filename)
