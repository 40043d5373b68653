"""The procedural IR: buffers, kernels with scalar value expressions, and commands.

A kernel computes one output buffer over its iteration space (the output shape,
one variable per axis). Its value is a scalar expression tree: loads through
access expressions, constants, index values, elementwise ops (the graph's op
table, reused), and reductions that loop over variables of their own. Fusion is
substitution: a load of a producer's buffer is replaced by the producer's
expression with the producer's output variables set to the load's indices.

Commands run in order: kernels, loops (a body run `count` times, its index a
variable kernels may use), feeds (host -> device), receives (device -> host) and
collectives across ranks (a start and a wait, with independent kernels in between).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Callable, Iterator, Union

from ..ir.dtypes import itemsize
from ..ir.ops import Op
from .index import DynAtom, Index, Var


# --- buffers -------------------------------------------------------------------------

class BufferKind(StrEnum):
    TEMP = "temp"                # a temporary, at its planned offset in the arena
    PERSISTENT = "persistent"    # a Variable's value, outside the arena
    FEED = "feed"                # a Feeder's staging buffer, outside the arena


@dataclass(eq=False)
class Buffer:
    """Device storage; `kind` says where it lives (a string of `BufferKind` is accepted)."""
    id: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: BufferKind
    var: object = None          # the graph Variable of a persistent buffer

    def __post_init__(self) -> None:
        self.kind = BufferKind(self.kind)   # a misspelt kind fails here, not in a runtime

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.size * itemsize(self.dtype)

    def __repr__(self) -> str:
        return f"{self.name}"


# --- value expressions ------------------------------------------------------------------

@dataclass(frozen=True)
class Valid:
    """low <= form < high, all of them: where a padded or concatenated load is defined."""
    ranges: tuple[tuple[Index, int, int], ...]


@dataclass(frozen=True)
class Load:
    """buffer[indices] (one index per buffer axis)."""
    buffer_id: int
    indices: tuple[Index, ...]
    dtype: str
    one_to_one: bool = True     # each element of the buffer is read at most once per kernel


@dataclass(frozen=True)
class Guard:
    """`body` where `valid` holds, else `otherwise` (padding, concatenation).

    Devices evaluate `body` only where valid, so its loads may be out of range elsewhere.
    """
    valid: Valid
    body: "Expr"
    otherwise: "Expr"
    dtype: str


@dataclass(frozen=True)
class Const:
    value: float | int
    dtype: str


@dataclass(frozen=True)
class IndexValue:
    """An access expression used as a value (IOTA, loop indices)."""
    index: Index
    dtype: str


@dataclass(frozen=True)
class Alu:
    """An elementwise op of the op table over sub-expressions."""
    op: Op
    args: tuple["Expr", ...]
    dtype: str


@dataclass(frozen=True)
class Reduce:
    """Reduce `body` over `variables` (own variables, each with its extent)."""
    op: Op                       # SUM, MAX or ARGMAX (index of the first maximum along one variable)
    variables: tuple[Var, ...]
    body: "Expr"
    dtype: str


@dataclass(frozen=True)
class RandomBits:
    """Uniform [0, 1) from hash(seed, counter, element): counter counts executions."""
    seed: int
    counter: Index
    element: Index
    dtype: str = "float32"


Expr = Union[Load, Guard, Const, IndexValue, Alu, Reduce, RandomBits]


def children(expr: Expr) -> tuple[Expr, ...]:
    if isinstance(expr, Alu):
        return expr.args
    if isinstance(expr, Reduce):
        return (expr.body,)
    if isinstance(expr, Guard):
        return _dyn_values(f for f, _, _ in expr.valid.ranges) + (expr.body, expr.otherwise)
    if isinstance(expr, Load):
        return _dyn_values(expr.indices)
    if isinstance(expr, (IndexValue, RandomBits)):
        forms = [expr.index] if isinstance(expr, IndexValue) else [expr.counter, expr.element]
        return _dyn_values(forms)
    return ()


def _dyn_values(forms) -> tuple:
    """Run-time values inside access expressions (gather indices), outermost first."""
    stack = [form for form in forms if form.dynamic]
    if not stack:
        return ()
    out: list = []
    while stack:
        form = stack.pop()
        for atom, _ in form.terms:
            if isinstance(atom, DynAtom):
                out.append(atom.value)
            elif hasattr(atom, "form"):
                stack.append(atom.form)
    return tuple(out)


def walk_expr(expr: Expr) -> Iterator[Expr]:
    """Every distinct sub-expression once (iterative, deterministic order)."""
    seen: set[int] = set()
    stack = [expr]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack.extend(reversed(children(e)))


def post_order(expr: Expr) -> Iterator[Expr]:
    """Every distinct sub-expression once, each after its children (iterative, deterministic)."""
    emitted: set[int] = set()
    stack: list[tuple[Expr, bool]] = [(expr, False)]
    while stack:
        e, expanded = stack.pop()
        if id(e) in emitted:
            continue
        if not expanded:
            stack.append((e, True))
            stack.extend((c, False) for c in reversed(children(e)) if id(c) not in emitted)
            continue
        emitted.add(id(e))
        yield e


def loads_of(expr: Expr) -> list[Load]:
    return [e for e in walk_expr(expr) if isinstance(e, Load)]


def expr_size(expr: Expr) -> int:
    return sum(1 for _ in walk_expr(expr))


def map_expr(expr: Expr, replace_load: Callable[[Load], Expr | None] | None = None,
             map_index: Callable[[Index], Index] | None = None,
             replace: Callable[[Expr], Expr | None] | None = None) -> Expr:
    """Rebuild `expr` bottom-up, applying `map_index` to every access expression,
    `replace_load` to every (rebuilt) load and `replace` to every (rebuilt) node; None from
    either keeps the node.

    Post-order with memoization, so shared sub-expressions stay shared.
    """
    done: dict[int, Expr] = {}

    def form(index: Index) -> Index:
        index = _sub_dyn(index, done)
        return map_index(index) if map_index is not None else index

    for e in post_order(expr):
        if isinstance(e, Alu):
            new: Expr = Alu(e.op, tuple(done[id(a)] for a in e.args), e.dtype)
        elif isinstance(e, Reduce):
            new = Reduce(e.op, e.variables, done[id(e.body)], e.dtype)
        elif isinstance(e, Guard):
            valid = Valid(tuple((form(f), lo, hi) for f, lo, hi in e.valid.ranges))
            new = Guard(valid, done[id(e.body)], done[id(e.otherwise)], e.dtype)
        elif isinstance(e, Load):
            new = Load(e.buffer_id, tuple(form(i) for i in e.indices), e.dtype, e.one_to_one)
            if replace_load is not None:
                new = replace_load(new) or new
        elif isinstance(e, IndexValue):
            new = IndexValue(form(e.index), e.dtype)
        elif isinstance(e, RandomBits):
            new = RandomBits(e.seed, form(e.counter), form(e.element))
        else:
            new = e
        if replace is not None:
            new = replace(new) or new
        done[id(e)] = new
    return done[id(expr)]


def replace_expr(value: Expr, target: Expr, with_expr: Expr) -> Expr:
    """`value` with every sub-expression equal to `target` replaced by `with_expr` (equal
    copies too: fusion inlines a producer once per use)."""
    return map_expr(value, replace=lambda e: with_expr if type(e) is type(target) and e == target else None)


def substitute_vars(expr: Expr, mapping: dict[Var, Index]) -> Expr:
    """`expr` with each variable in `mapping` replaced by its access expression."""
    memo: dict[Index, Index] = {}
    return map_expr(expr, map_index=lambda index: index.substitute(mapping.get, memo))


def _sub_dyn(index: Index, done: dict[int, Expr]) -> Index:
    """Point run-time values inside `index` at their rebuilt expressions."""
    if not index.dynamic:
        return index

    def mapping(atom):
        if isinstance(atom, DynAtom) and id(atom.value) in done:
            return Index.of(DynAtom(done[id(atom.value)], atom.low, atom.high))
        return None
    return index.substitute(mapping)


# --- kernels and commands ------------------------------------------------------------------

class KernelKind(StrEnum):
    """What a kernel computes, as lowering made it (fusion keeps the consumer's kind)."""
    ELEMENTWISE = "elementwise"
    REDUCE = "reduce"
    MATMUL = "matmul"
    GATHER = "gather"
    COPY = "copy"
    ASSIGN = "assign"
    SNAPSHOT = "snapshot"


@dataclass(eq=False)
class Kernel:
    name: str
    out: Buffer
    variables: tuple[Var, ...]          # one per output axis
    value: Expr
    kind: KernelKind                     # a string of `KernelKind` is accepted
    sources: list[int] = field(default_factory=list)   # graph node ids it computes
    ops: list[str] = field(default_factory=list)       # their op names, in program order

    def __post_init__(self) -> None:
        self.kind = KernelKind(self.kind)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.out.shape


@dataclass(eq=False)
class KernelCmd:
    kernel: Kernel


@dataclass(eq=False)
class FeedCmd:
    buffer: Buffer
    fn: Callable
    name: str


@dataclass(eq=False)
class ReceiveCmd:
    buffers: list[Buffer]
    fn: Callable
    name: str
    every: int


@dataclass(eq=False)
class LoopCmd:
    count: int
    variable: Var                        # the iteration number 0 .. count-1
    body: list["Command"]


@dataclass(eq=False)
class Collective:
    """A collective across data-parallel ranks (autodiff.distributed): `sources` read back to
    the host (several: concatenated flat, a bucket of gradients), combined with the other
    ranks' through MPI, written into `out`."""
    kind: str                            # "all_reduce" | "broadcast" | "all_gather"
    op: str                              # "sum" | "mean" | "max" (all_reduce)
    root: int                            # broadcast's root rank
    sources: list[Buffer]
    out: Buffer
    name: str


@dataclass(eq=False)
class CollectiveStartCmd:
    """Read `sources` back and start the collective; placed right after they are computed
    so that the kernels up to the matching wait run while it is under way."""
    collective: Collective


@dataclass(eq=False)
class CollectiveWaitCmd:
    """Wait for the collective and write its value into `out`: placed where the graph had it,
    before the first reader of `out`."""
    collective: Collective


Command = Union[KernelCmd, FeedCmd, ReceiveCmd, LoopCmd, CollectiveStartCmd, CollectiveWaitCmd]


@dataclass
class ProcProgram:
    """The procedural program: commands plus every buffer they touch."""
    commands: list[Command]
    buffers: list[Buffer]
    run_counter: Var                     # how many runs came before (for RANDOM counters)
    loop_vars: list[Var] = field(default_factory=list)

    def walk(self) -> Iterator[Command]:
        """Every command in program order, loop bodies included (a loop before its body)."""
        stack: list[Iterator[Command]] = [iter(self.commands)]
        while stack:
            cmd = next(stack[-1], None)
            if cmd is None:
                stack.pop()
                continue
            yield cmd
            if isinstance(cmd, LoopCmd):
                stack.append(iter(cmd.body))

    def kernels(self) -> list[Kernel]:
        return [c.kernel for c in self.walk() if isinstance(c, KernelCmd)]
