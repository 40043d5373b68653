"""The op table: every primitive op of the graph IR, defined once.

Composite operations (mean, softmax, layer_norm, relu, ...) are decomposed into
these primitives while tracing, so every later stage (passes, lowering,
backends) only ever sees the ops listed here.

Each concern keeps its own registry keyed by `Op`, next to the code of that
concern: shape rules in `shapes.py`, numpy reference semantics in
`reference.py`, VJP rules in `frontend/vjp.py`, C renderings of elementwise ops in
`codegen/renderer.py` (`C_EXPRESSIONS` or a language's `math` table).
`py_test/test_registries.py` fails when an op lacks an entry in any of them.

An op's arguments are a small frozen dataclass (one per op kind that needs
them), never a positional tuple.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable


class Op(enum.Enum):
    # members are singletons compared by identity: hash them by identity in C (Enum's own
    # __hash__ is Python code, and op lookups run for every node traced and compiled)
    __hash__ = object.__hash__

    # leaves
    CONST = "const"            # a tensor filled with one scalar
    IOTA = "iota"              # index along one axis: out[..., i, ...] = i
    READ = "read"              # current value of a persistent tensor
    FEEDER = "feeder"          # host data, fetched each time the program reaches it
    LOOP_INDEX = "loop_index"  # the enclosing ir_for's index (0-d int32)
    RANDOM = "random"          # counter-based uniform [0, 1) numbers (seeded, per iteration)
    # unary elementwise
    NEG = "neg"
    EXP = "exp"
    LOG = "log"
    SQRT = "sqrt"
    RECIP = "recip"
    SIN = "sin"
    COS = "cos"
    TANH = "tanh"
    ERF = "erf"
    CAST = "cast"
    DETACH = "detach"          # identity whose gradient is zero (stop_gradient)
    # binary elementwise (inputs have equal shapes: broadcasting is explicit EXPANDs)
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"
    POW = "pow"
    MAXIMUM = "maximum"
    MINIMUM = "minimum"
    LT = "lt"
    GT = "gt"
    EQ = "eq"
    # ternary elementwise
    WHERE = "where"
    # reductions (keep reduced axes with size 1; the API reshapes them away)
    SUM = "sum"
    MAX = "max"
    ARGMAX = "argmax"
    # contraction: (..., M, K) @ (..., K, N) with equal batch dims
    DOT = "dot"
    # movement
    RESHAPE = "reshape"
    PERMUTE = "permute"
    EXPAND = "expand"          # broadcast size-1 axes (same rank)
    SLICE = "slice"            # unit-step window per axis
    PAD = "pad"                # zero padding per axis (the VJP of SLICE)
    CONCAT = "concat"
    # indexing
    GATHER = "gather"          # rows of a table: table (V, D), idx (...) -> (..., D)
    SCATTER_ADD = "scatter_add"  # the VJP of GATHER: rows of g added into (V, D) zeros
    # effects and control flow
    RECEIVER = "receiver"      # copy values to the host and call back
    ASSIGN = "assign"          # in-place update of a persistent tensor
    FOR = "for"                # a loop whose body is a Block, run `count` times
    # data parallelism (autodiff.distributed): the same value on every rank afterwards
    COLLECTIVE = "collective"  # all_reduce / broadcast / all_gather across MPI ranks (all_reduce of
                               # several inputs: of their flattened concatenation, a DDP bucket)


LEAF_OPS = (Op.CONST, Op.IOTA, Op.READ, Op.FEEDER, Op.LOOP_INDEX, Op.RANDOM)
UNARY_OPS = (Op.NEG, Op.EXP, Op.LOG, Op.SQRT, Op.RECIP, Op.SIN, Op.COS, Op.TANH,
             Op.ERF, Op.CAST, Op.DETACH)
BINARY_OPS = (Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.POW, Op.MAXIMUM, Op.MINIMUM,
              Op.LT, Op.GT, Op.EQ)
COMPARISON_OPS = (Op.LT, Op.GT, Op.EQ)
COMMUTATIVE_OPS = (Op.ADD, Op.MUL, Op.MAXIMUM, Op.MINIMUM, Op.EQ)
ELEMENTWISE_OPS = UNARY_OPS + BINARY_OPS + (Op.WHERE,)
REDUCE_OPS = (Op.SUM, Op.MAX, Op.ARGMAX)
MOVEMENT_OPS = (Op.RESHAPE, Op.PERMUTE, Op.EXPAND, Op.SLICE, Op.PAD, Op.CONCAT)
EFFECT_OPS = (Op.FEEDER, Op.RANDOM, Op.RECEIVER, Op.ASSIGN, Op.FOR)
"""Ops that must never be merged, dropped for being 'unused' by value, or reordered
across each other: they talk to the host, draw random numbers or mutate state."""


# --- argument records -------------------------------------------------------


@dataclass(frozen=True)
class ConstArgs:
    value: float | int


@dataclass(frozen=True)
class AxisArgs:
    """IOTA, ARGMAX, CONCAT: one axis."""
    axis: int


@dataclass(frozen=True)
class AxesArgs:
    """SUM and MAX: the reduced axes (sorted, non-negative)."""
    axes: tuple[int, ...]


@dataclass(frozen=True)
class CastArgs:
    dtype: str


@dataclass(frozen=True)
class ShapeArgs:
    """RESHAPE and EXPAND: the output shape."""
    shape: tuple[int, ...]


@dataclass(frozen=True)
class PermuteArgs:
    perm: tuple[int, ...]


@dataclass(frozen=True)
class SliceArgs:
    starts: tuple[int, ...]
    stops: tuple[int, ...]


@dataclass(frozen=True)
class PadArgs:
    low: tuple[int, ...]
    high: tuple[int, ...]


@dataclass(frozen=True)
class ScatterArgs:
    rows: int   # V, the number of rows of the table the gradient is for


@dataclass(frozen=True)
class RandomArgs:
    seed: int   # fixed at trace time; the iteration counters make each draw new


@dataclass(frozen=True, eq=False)
class ReadArgs:
    var: Any    # graph.program.Variable (kept Any to avoid an import cycle)


@dataclass(frozen=True, eq=False)
class AssignArgs:
    var: Any
    # set by the in-place marking pass: no reader of the old value runs after this update,
    # so lowering may write the new value straight into the persistent tensor's storage
    in_place: bool = False


def internal_callback(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a Feeder or Receiver function as autodiff's own (ad.jit's arguments and results,
    an interactive run's values, index checks): it reads no persistent tensor, so a device
    program whose callbacks are all such may leave its persistent tensors on the device
    between runs (backends.base.DeviceValue)."""
    fn.autodiff_internal = True
    return fn


def is_internal_callback(fn: Callable[..., Any]) -> bool:
    return getattr(fn, "autodiff_internal", False)


@dataclass(frozen=True, eq=False)
class FeederArgs:
    fn: Callable[[], Any]
    name: str


@dataclass(frozen=True, eq=False)
class ReceiverArgs:
    fn: Callable[..., Any]
    name: str
    every: int
    check: bool = False   # an index check the tracer added (dropped with disable={"index_check"})


@dataclass(frozen=True, eq=False)
class ForArgs:
    count: int
    start: int
    step: int
    body: Any   # graph.program.Block
    index: Any  # the body's LOOP_INDEX node (None once pruned away)


@dataclass(frozen=True)
class CollectiveArgs:
    """COLLECTIVE: which one, its reduction ("sum", "mean", "max"), the broadcast root, and
    the world size when traced (it shapes an all_gather; every rank traces the same)."""
    kind: str      # "all_reduce" | "broadcast" | "all_gather"
    op: str = "sum"
    root: int = 0
    world: int = 1


@dataclass(frozen=True)
class NoArgs:
    pass


NO_ARGS = NoArgs()

OpArgs = Any  # one of the records above
