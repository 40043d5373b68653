"""Collectives across data-parallel ranks as graph nodes (one COLLECTIVE primitive).

They trace like any op, so they print in every stage, take part in liveness and memory
planning, and are differentiable where the math allows (the total loss being the sum of the
ranks' losses). On one process the executors run them as identities.
"""
from __future__ import annotations

import numpy as np

from .. import comm
from ..ir import ops as O
from ..ir.ops import Op
from .tensor import Tensor, as_tensor
from .trace import make_node, trace_error


def collective(xs: Tensor | list[Tensor], kind: str, op: str = "sum", root: int = 0) -> Tensor:
    """One COLLECTIVE node; a list of tensors (all_reduce only) is reduced as one flat buffer."""
    xs = [as_tensor(x) for x in xs] if isinstance(xs, (list, tuple)) else [as_tensor(xs)]
    x = xs[0]
    if kind not in comm.KINDS:
        raise trace_error(kind, f"unknown collective; known: {', '.join(comm.KINDS)}")
    if op not in comm.REDUCE_OPS:
        raise trace_error(kind, f"unknown reduction {op!r}; known: {', '.join(comm.REDUCE_OPS)}")
    if not 0 <= root < comm.world_size():
        raise trace_error(kind, f"root {root} is not a rank of a world of {comm.world_size()}")
    if op == "mean" and x.dtype != "float32":
        raise trace_error(kind, f"a mean needs a float32 tensor, got {x.dtype}")
    args = O.CollectiveArgs(kind, op, root, comm.world_size())
    return Tensor._wrap(make_node(Op.COLLECTIVE, [t.node for t in xs], args, kind))


def all_reduce(x: Tensor, op: str = "sum") -> Tensor:
    """The elementwise sum, mean or max of `x` over every rank, on every rank."""
    return collective(x, "all_reduce", op)


def all_reduce_flat(tensors: list[Tensor], op: str = "sum") -> Tensor:
    """One all_reduce of several tensors (a DDP bucket): their flattened concatenation,
    reduced. Each input keeps its own buffer: no copy into a bucket on the device (the host
    concatenates what it reads back), and their producers stay the kernels they are."""
    return collective(list(tensors), "all_reduce", op)


def broadcast(x: Tensor, root: int = 0) -> Tensor:
    """Rank `root`'s value of `x`, on every rank."""
    return collective(x, "broadcast", root=root)


def all_gather(x: Tensor) -> Tensor:
    """Every rank's `x`, concatenated along axis 0 in rank order (a 0-d x gives (world,))."""
    return collective(x, "all_gather")


def collective_vjp(node, xs, out, g, needs):
    """Gradients with the total loss the sum of the ranks' losses."""
    args = node.args
    if args.kind == "all_reduce":
        if args.op == "max":
            raise TypeError("no VJP rule for all_reduce(op='max'): use sum or mean where a gradient is needed")
        reduced = all_reduce(g, args.op)
        if len(xs) == 1:
            return [reduced]
        grads, offset = [], 0
        for x in xs:
            grads.append(reduced[offset:offset + x.numel()].reshape(x.shape))
            offset += x.numel()
        return grads
    total = all_reduce(g, "sum")
    if args.kind == "broadcast":
        # the root's input reaches every rank: its gradient is the sum, the others' zero; the
        # mask is data (a persistent tensor), not a constant, so that no rank folds its
        # collective away and every rank keeps issuing the same ones
        mask = Tensor(np.array(float(comm.rank() == args.root), np.float32), name="is_broadcast_root")
        return [total * mask]
    rows = xs[0].shape[0] if xs[0].shape else 1
    start = comm.rank() * rows
    part = total[start:start + rows]
    return [part.reshape(xs[0].shape)]
