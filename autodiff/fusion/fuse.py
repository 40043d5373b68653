"""Kernel fusion: inline a producer kernel into the loads of its consumers.

A load of the producer's buffer is replaced by the producer's value expression
with its output variables set to the load's access expressions; the producer
kernel (and its buffer) disappears. Three kinds, each switchable by name:

- elementwise_fusion: a cheap producer (no reduction inside) into elementwise
  consumers, any number of them, broadcasts included (recomputing a few
  elementwise ops per consumer element costs less than a round trip to memory);
- reduce_fusion: a cheap producer into a reduction body it is read one-to-one by
  (the prologue, `sum(exp(x - m))`), and a reduction into the one elementwise
  consumer that reads each of its elements once (the epilogue, `mean`);
- dot_fusion: a dot product into the one consumer reading each element once
  (bias, activation, scaling, and `p - lr * grad` writing straight into p).

Rules against harmful fusion, and what each protects:
- a producer with a reduction inside is inlined only into one load that reads
  each element once: otherwise every consumer element would redo the reduction;
- nothing but views is inlined into a dot product's operands: an operand element
  is read once per output column, so any op there would run N times, and plain
  loads keep the operands vectorizable;
- producers and consumers must be in the same loop body: inlining into a loop
  would redo the work every iteration, and inlining out of one is not possible;
- a producer is not moved past a command that writes a buffer it reads (an
  update of a parameter, a new Feeder batch): it must see the values of its place;
- a producer that a Receiver reads keeps its buffer;
- expressions stay below MAX_EXPRESSION nodes, so generated kernels stay small.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..proc.index import Index
from ..proc.ir import (Command, Expr, FeedCmd, Kernel, KernelCmd, Load, LoopCmd, ProcProgram, ReceiveCmd,
                       Reduce, children, expr_size, map_expr, substitute_vars, walk_expr)

FUSION_KINDS = ("elementwise_fusion", "reduce_fusion", "dot_fusion")
MAX_EXPRESSION = 160


@dataclass
class _Use:
    kernel: Kernel
    position: int
    loads: list[tuple[Load, bool]]   # each load of the producer and whether it sits in a reduction


def _loads_with_context(expr: Expr) -> list[tuple[Load, bool]]:
    """Every load in `expr` with whether it is inside a Reduce body (iterative)."""
    out: list[tuple[Load, bool]] = []
    stack: list[tuple[Expr, bool]] = [(expr, False)]
    while stack:
        e, inside = stack.pop()
        if isinstance(e, Load):
            out.append((e, inside))
        stack.extend((c, inside or isinstance(e, Reduce)) for c in children(e))
    return out


def _has_reduce(expr: Expr) -> bool:
    return any(isinstance(e, Reduce) for e in walk_expr(expr))


def _written(cmd: Command) -> list[int]:
    """Buffers a command writes (a loop: everything its body writes)."""
    if isinstance(cmd, KernelCmd):
        return [cmd.kernel.out.id]
    if isinstance(cmd, FeedCmd):
        return [cmd.buffer.id]
    if isinstance(cmd, LoopCmd):
        return [b for c in cmd.body for b in _written(c)]
    return []


def _received(commands: list[Command]) -> set[int]:
    out: set[int] = set()
    stack = list(commands)
    while stack:
        cmd = stack.pop()
        if isinstance(cmd, ReceiveCmd):
            out.update(b.id for b in cmd.buffers)
        elif isinstance(cmd, LoopCmd):
            stack.extend(cmd.body)
    return out


def _readers_elsewhere(program: ProcProgram, block: list[Command]) -> set[int]:
    """Buffers read by kernels outside `block` itself (nested loops included): those keep
    their buffers, since inlining into a loop body would redo the work every iteration."""
    members = {id(c) for c in block}
    out: set[int] = set()
    for cmd in program.walk():
        if isinstance(cmd, KernelCmd) and id(cmd) not in members:
            out.update(load.buffer_id for load, _ in _loads_with_context(cmd.kernel.value))
    return out


class Fusion:
    def __init__(self, program: ProcProgram, disable: frozenset[str]) -> None:
        self.program = program
        self.enabled = {k for k in FUSION_KINDS if k not in disable and "fusion" not in disable}
        self.received = _received(program.commands)

    def kind_allowed(self, producer: Kernel, use_inside_reduce: bool) -> str | None:
        """The fusion kind this inlining is, or None when a rule forbids it."""
        if _has_reduce(producer.value):
            if use_inside_reduce:
                return None
            return "dot_fusion" if producer.kind == "matmul" else "reduce_fusion"
        return "reduce_fusion" if use_inside_reduce else "elementwise_fusion"

    def can_inline(self, producer: Kernel, at: int, block: list[Command], uses: list[_Use],
                   outside_readers: set[int]) -> bool:
        out = producer.out
        if out.kind != "temp" or out.id in self.received or out.id in outside_readers or not uses:
            return False
        expensive = _has_reduce(producer.value)
        if expensive and (len(uses) != 1 or len(uses[0].loads) != 1):
            return False
        read = {load.buffer_id for load, _ in _loads_with_context(producer.value)}
        for use in uses:
            # nothing in between may write what the producer reads
            for cmd in block[at + 1:use.position]:
                if read.intersection(_written(cmd)):
                    return False
            for load, inside in use.loads:
                kind = self.kind_allowed(producer, inside)
                if kind is None or kind not in self.enabled:
                    return False
                if inside and not load.one_to_one:
                    return False           # a dot operand or a broadcast inside a reduction
                if expensive and not load.one_to_one:
                    return False
            grown = expr_size(use.kernel.value) + len(use.loads) * expr_size(producer.value)
            if grown > MAX_EXPRESSION:
                return False
        return True

    def inline(self, producer: Kernel, consumer: Kernel) -> None:
        target = producer.out.id

        def replace(load: Load) -> Expr | None:
            if load.buffer_id != target:
                return None
            mapping = dict(zip(producer.variables, load.indices))
            value = substitute_vars(producer.value, mapping)
            if not load.one_to_one:   # read many times: so is everything it reads
                value = map_expr(value, replace_load=lambda l: Load(l.buffer_id, l.indices, l.dtype, False))
            return value

        consumer.value = map_expr(consumer.value, replace_load=replace)
        consumer.sources = producer.sources + consumer.sources
        consumer.ops = producer.ops + consumer.ops
        if producer.kind == "matmul" or consumer.kind == "matmul":
            consumer.kind = "matmul" if consumer.kind not in ("assign",) else consumer.kind
        elif producer.kind == "reduce" and consumer.kind == "elementwise":
            consumer.kind = "reduce"

    def fuse_block(self, block: list[Command]) -> list[Command]:
        outside = _readers_elsewhere(self.program, block)
        removed: set[int] = set()
        for at, cmd in enumerate(block):
            if isinstance(cmd, LoopCmd):
                cmd.body = self.fuse_block(cmd.body)
                continue
            if not isinstance(cmd, KernelCmd):
                continue
            producer = cmd.kernel
            uses = []
            for pos in range(at + 1, len(block)):
                other = block[pos]
                if pos in removed or not isinstance(other, KernelCmd):
                    continue
                loads = [(l, inside) for l, inside in _loads_with_context(other.kernel.value)
                         if l.buffer_id == producer.out.id]
                if loads:
                    uses.append(_Use(other.kernel, pos, loads))
            if self.can_inline(producer, at, block, uses, outside):
                for use in uses:
                    self.inline(producer, use.kernel)
                removed.add(at)
        return [cmd for i, cmd in enumerate(block) if i not in removed]


def fuse(program: ProcProgram, disable: frozenset[str] = frozenset()) -> ProcProgram:
    """Merge kernels of the procedural program (in place); returns it."""
    fusion = Fusion(program, disable)
    if fusion.enabled:
        program.commands = fusion.fuse_block(program.commands)
    used = {b.id for b in _live_buffers(program)}
    program.buffers = [b for b in program.buffers if b.kind != "temp" or b.id in used]
    for kernel in program.kernels():
        kernel.name = kernel_name(kernel)
    return program


def _live_buffers(program: ProcProgram):
    for cmd in program.walk():
        if isinstance(cmd, KernelCmd):
            yield cmd.kernel.out
        elif isinstance(cmd, ReceiveCmd):
            yield from cmd.buffers


def kernel_name(kernel: Kernel) -> str:
    """What it computes, e.g. fused_matmul_add_relu_12 (12: the last graph node it computes)."""
    ops = []
    for op in kernel.ops:
        name = {"dot": "matmul", "where": "select"}.get(op, op)
        if name not in ops:
            ops.append(name)
    prefix = "fused_" if len(kernel.sources) > 1 else ""
    return f"{prefix}{'_'.join(ops[:4])}_{kernel.sources[-1] if kernel.sources else 0}"
