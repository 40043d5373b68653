"""Host transfers and loops: `Feeder`, `Receiver`, `ir_for`."""
from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable, Sequence

import numpy as np

from .. import comm
from ..ir import ops as O
from ..ir.ops import Op
from ..ir.graph import Block
from .program import current_program
from ..ir.dtypes import FLOAT, INT
from .tensor import Tensor, as_tensor
from .trace import make_leaf, make_node, trace_error


def Feeder(fn: Callable[[], Any], shape: Sequence[int], dtype: Any = np.float32,
           name: str | None = None, shard: bool = False) -> Tensor:
    """A tensor whose value is `fn()`, called on the host each time the program reaches it.

    Inside `ir_for` that is once per iteration, in program order. The array must
    have exactly `shape` and `dtype` (no silent conversion: a float64 array is
    an error that says so). Integers are int32 on the device: `dtype=np.int64` (what
    numpy and torch give labels and indices) is accepted and means int32, and an int32
    Feeder accepts integer arrays of any width whose values fit in int32 (checked at
    every call: a value that does not fit is a FeederError).

    `shard=True` (data parallelism, autodiff.distributed): `fn` returns the global batch of
    `shape`, the same on every rank (same seed), and each rank gets its own slice of
    `shape[0] // world_size` rows; the tensor has that local shape.
    """
    if shard and comm.world_size() > 1:
        fn, shape = _shard_feeder(fn, tuple(shape))
    dtype = str(np.dtype(dtype))
    if np.dtype(dtype).kind in "iu":
        dtype = INT
    if dtype not in (FLOAT, INT):
        raise trace_error("Feeder", f"dtype must be float32 or an integer type (int32 on the device), "
                                    f"not {dtype}")
    if not callable(fn):
        raise trace_error("Feeder", f"needs a function returning an array, got {type(fn).__name__}")
    program = current_program()
    name = name or f"feeder{sum(1 for n in program.root.walk() if n.op is Op.FEEDER)}"
    return Tensor._wrap(make_leaf(Op.FEEDER, tuple(shape), dtype, O.FeederArgs(fn, name)))


def _shard_feeder(fn: Callable[[], Any], shape: tuple[int, ...]) -> tuple[Callable[[], Any], tuple[int, ...]]:
    """This rank's rows of each global batch `fn` returns."""
    world, rank = comm.world_size(), comm.rank()
    if not shape or shape[0] % world:
        raise trace_error("Feeder", f"shard=True needs a leading batch axis divisible by the {world} ranks, "
                                    f"got shape {shape}")
    rows = shape[0] // world

    def local() -> Any:
        return np.asarray(fn())[rank * rows:(rank + 1) * rows]
    return local, (rows,) + shape[1:]


def Receiver(fn: Callable[..., Any], tensors: Tensor | Sequence[Tensor], name: str | None = None,
             every: int = 1, ranks: int | Sequence[int] | str = 0) -> None:
    """Once `tensors` are computed, copy them to the host and call `fn(*arrays)`.

    Calls happen in program order. Inside `ir_for`, `every=k` delivers only on
    every k-th iteration of the enclosing loop (iterations k-1, 2k-1, ...); `ir_for`
    warns when k exceeds its count, as such a Receiver is never called.

    Under data parallelism (autodiff.distributed) `fn` is called on rank 0 only, unless
    `ranks` says otherwise ("all", a rank or a list of ranks); every rank still traces it,
    so the programs, and the collectives they issue, stay the same on every rank.
    """
    tensors = [tensors] if isinstance(tensors, Tensor) else list(tensors)
    if not callable(fn):
        raise trace_error("Receiver", f"needs a callable, got {type(fn).__name__}")
    if int(every) < 1:
        raise trace_error("Receiver", f"every must be >= 1, got {every}")
    name = name or getattr(fn, "__name__", "receiver")
    if not _receives_here(ranks):
        fn = _ignore
    if any(t is None for t in tensors):
        # as_tensor(None) would be a nan constant: a .grad that backward() never set
        raise trace_error("Receiver", f"got None in position {[t is None for t in tensors].index(True)} "
                          "(a .grad is None until backward() reaches that tensor)")
    nodes = [as_tensor(t).node for t in tensors]
    make_node(Op.RECEIVER, nodes, O.ReceiverArgs(fn, name, int(every)), "Receiver")


def _receives_here(ranks: int | Sequence[int] | str) -> bool:
    if ranks == "all":
        return True
    if isinstance(ranks, str):
        raise trace_error("Receiver", f"ranks must be 'all', a rank or a list of ranks, got {ranks!r}")
    return comm.rank() in ((ranks,) if isinstance(ranks, int) else tuple(ranks))


def _ignore(*arrays: Any) -> None:
    """A Receiver's callback on the ranks it was not asked for."""


def ir_for(range_or_count: int | range, body: Callable[..., Any]) -> None:
    """Trace `body` once and run it on the device once per element of the range.

    A body taking one parameter receives the loop index as a 0-d int32 tensor.
    Persistent tensors updated in the body carry their values between iterations.
    """
    loop = range(range_or_count) if isinstance(range_or_count, int) else range_or_count
    if not isinstance(loop, range):
        raise trace_error("ir_for", f"needs an int or a range, got {type(range_or_count).__name__}")
    program = current_program()
    outer = program.block
    body_block = Block(parent=outer)
    program.push_block(body_block)
    try:
        counter = make_leaf(Op.LOOP_INDEX, (), INT)
        wants_index = _takes_an_argument(body)
        if wants_index:
            index = Tensor._wrap(counter)
            if loop.start != 0 or loop.step != 1:
                index = index * loop.step + loop.start
            body(index)
        else:
            body()
    finally:
        program.pop_block()
    _warn_silent_receivers(body_block, len(loop))
    for_node = make_node(Op.FOR, [], O.ForArgs(len(loop), loop.start, loop.step, body_block, counter), "ir_for")
    body_block.owner = for_node
    # values of persistent tensors updated in the body are new after the loop
    updated = [n.args.var.id for n in body_block.walk() if n.op is Op.ASSIGN]
    program.forget_reads(updated)


def _warn_silent_receivers(body: Block, count: int) -> None:
    """A Receiver with every=k delivers on iterations k-1, 2k-1, ... of its innermost loop:
    in a loop of fewer than k iterations it is never called, which is almost surely a mistake."""
    for node in body.nodes:   # only this loop's own Receivers: nested loops checked themselves
        if node.op is Op.RECEIVER and count > 0 and node.args.every > count:
            warnings.warn(f"Receiver '{node.args.name}' (at {node.where}) has every={node.args.every} "
                          f"but its loop runs {count} iterations, so it is never called",
                          stacklevel=3)


def _takes_an_argument(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.default is p.empty]
    return len(positional) >= 1 or any(p.kind is p.VAR_POSITIONAL for p in params)
