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
- expressions stay below MAX_EXPRESSION nodes, so generated kernels stay small;
- a dot product of TILED_DOT_WORK or more multiply-adds is not inlined into a kernel that
  already has a reduction: a kernel with one product and an epilogue runs as the tiled
  matmul kernel, one with two (attention's q, k and v gradients summed) as a per-output
  loop, measured 10-20x slower on the larger transformer; nor into a consumer with an op of
  `HEAVY_EPILOGUE_OPS` (erf: GELU), which is cheaper as a vector kernel of its own.
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from ..loggers import get_logger
from ..proc.cost import TILED_DOT_WORK, has_heavy_epilogue_op, reduce_work
from ..proc.index import Index, Var
from ..proc.ir import (Buffer, CollectiveStartCmd, CollectiveWaitCmd, Command, Expr, FeedCmd, Kernel, KernelCmd, Load, LoopCmd, ProcProgram,
                       ReceiveCmd, Reduce, children, expr_size, map_expr, substitute_vars, walk_expr)

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
    if isinstance(cmd, CollectiveWaitCmd):
        return [cmd.collective.out.id]
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
        elif isinstance(cmd, CollectiveStartCmd):
            out.update(b.id for b in cmd.collective.sources)
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
        # id(expression) -> (the expression, its loads): a kernel that nothing was inlined
        # into keeps its value, and each pass over a block asked for every kernel's loads again
        self._loads: dict[int, tuple[Expr, list[tuple[Load, bool]]]] = {}

    def loads(self, expr: Expr) -> list[tuple[Load, bool]]:
        """`_loads_with_context(expr)`, remembered per expression (expressions are not changed
        in place: inlining makes a new one)."""
        known = self._loads.get(id(expr))
        if known is None or known[0] is not expr:
            known = self._loads[id(expr)] = (expr, _loads_with_context(expr))
        return known[1]

    def kind_allowed(self, producer: Kernel, use_inside_reduce: bool) -> str | None:
        """The fusion kind this inlining is, or None when a rule forbids it."""
        if _has_reduce(producer.value):
            if use_inside_reduce:
                return None
            return "dot_fusion" if producer.kind == "matmul" else "reduce_fusion"
        return "reduce_fusion" if use_inside_reduce else "elementwise_fusion"

    def can_inline(self, producer: Kernel, at: int, uses: list[_Use], outside_readers: set[int],
                   writes: dict[int, list[int]]) -> bool:
        out = producer.out
        if out.kind != "temp" or out.id in self.received or out.id in outside_readers or not uses:
            return False
        expensive = _has_reduce(producer.value)
        # equal loads are one read: the renderer computes an equal expression once
        if expensive and (len(uses) != 1 or len(set(load for load, _ in uses[0].loads)) != 1):
            return False
        read = {load.buffer_id for load, _ in self.loads(producer.value)}
        large_dot = producer.kind == "matmul" and reduce_work(producer) >= TILED_DOT_WORK
        for use in uses:
            if large_dot and (_has_reduce(use.kernel.value) or has_heavy_epilogue_op(use.kernel.value)):
                return False
            # nothing in between may write what the producer reads (positions are ascending:
            # the first write after `at` decides)
            for b in read:
                positions = writes.get(b, ())
                after = bisect_right(positions, at)
                if after < len(positions) and positions[after] < use.position:
                    return False
            for load, inside in use.loads:
                kind = self.kind_allowed(producer, inside)
                if kind is None or kind not in self.enabled:
                    return False
                if inside and not load.one_to_one:
                    return False           # a dot operand or a broadcast inside a reduction
                if expensive and not load.one_to_one:
                    return False
            distinct = len(set(load for load, _ in use.loads))
            if expr_size(use.kernel.value) + distinct * expr_size(producer.value) > MAX_EXPRESSION:
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
        if consumer.kind not in ("assign", "copy", "snapshot"):
            if producer.kind == "matmul":
                consumer.kind = "matmul"
            elif producer.kind == "reduce" and consumer.kind == "elementwise":
                consumer.kind = "reduce"

    def fuse_block(self, block: list[Command]) -> list[Command]:
        """Inline producers forward through the block until nothing changes."""
        for cmd in block:
            if isinstance(cmd, LoopCmd):
                cmd.body = self.fuse_block(cmd.body)
        outside = _readers_elsewhere(self.program, block)
        while True:
            block, changed = self._one_pass(block, outside)
            if not changed:
                return block

    def _one_pass(self, block: list[Command], outside: set[int]) -> tuple[list[Command], bool]:
        loads_at: dict[int, list[tuple[Load, bool]]] = {}
        readers: dict[int, list[int]] = {}       # buffer id -> positions of kernels loading it
        writes: dict[int, list[int]] = {}        # buffer id -> positions of commands writing it
        for pos, cmd in enumerate(block):
            for b in _written(cmd):
                writes.setdefault(b, []).append(pos)
            if isinstance(cmd, KernelCmd):
                loads_at[pos] = self.loads(cmd.kernel.value)
                for b in dict.fromkeys(load.buffer_id for load, _ in loads_at[pos]):
                    readers.setdefault(b, []).append(pos)
        removed: set[int] = set()
        for at, cmd in enumerate(block):
            if not isinstance(cmd, KernelCmd):
                continue
            producer = cmd.kernel
            positions = sorted(set(p for p in readers.get(producer.out.id, ()) if p > at and p not in removed))
            uses = [_Use(block[p].kernel, p, [(l, i) for l, i in loads_at[p] if l.buffer_id == producer.out.id])
                    for p in positions]
            if self.can_inline(producer, at, uses, outside, writes):
                for use in uses:
                    self.inline(producer, use.kernel)
                    loads_at[use.position] = self.loads(use.kernel.value)
                    for b in dict.fromkeys(load.buffer_id for load, _ in loads_at[use.position]):
                        if use.position not in readers.setdefault(b, []):
                            readers[b].append(use.position)
                removed.add(at)
        return [cmd for i, cmd in enumerate(block) if i not in removed], bool(removed)


def separate_self_reads(program: ProcProgram) -> None:
    """A kernel that reads its own output buffer anywhere but at the element it writes
    (p.copy_(p.T), p -= p @ p) would race with itself: it writes a temporary instead,
    and a copy kernel moves the result into place."""
    stack: list[list[Command]] = [program.commands]
    while stack:
        block = stack.pop()
        at = 0
        while at < len(block):
            cmd = block[at]
            if isinstance(cmd, LoopCmd):
                stack.append(cmd.body)
            elif isinstance(cmd, KernelCmd) and _reads_elsewhere(cmd.kernel):
                kernel = cmd.kernel
                target = kernel.out
                temp = Buffer(max(b.id for b in program.buffers) + 1, f"new_{target.name}", target.shape,
                              target.dtype, "temp")
                program.buffers.append(temp)
                kernel.out = temp
                variables = tuple(Var(f"{v.name}c", v.extent) for v in kernel.variables)
                copy = Kernel(f"copy_{target.name}", target, variables,
                              Load(temp.id, tuple(Index.of(v) for v in variables), temp.dtype),
                              "copy", list(kernel.sources[-1:]), ["copy"])
                block.insert(at + 1, KernelCmd(copy))
                at += 1
            at += 1


def _reads_elsewhere(kernel: Kernel) -> bool:
    identity = tuple(Index.of(v) for v in kernel.variables)
    return any(load.buffer_id == kernel.out.id and (inside or load.indices != identity)
               for load, inside in _loads_with_context(kernel.value))


def fuse(program: ProcProgram, disable: frozenset[str] = frozenset()) -> ProcProgram:
    """Merge kernels of the procedural program (in place); returns it."""
    fusion = Fusion(program, disable)
    before = len(program.kernels())
    if fusion.enabled:
        program.commands = fusion.fuse_block(program.commands)
    separate_self_reads(program)
    _drop_empty_kernels(program.commands)
    used = {b.id for b in _live_buffers(program)}
    program.buffers = [b for b in program.buffers if b.kind != "temp" or b.id in used]
    for kernel in program.kernels():
        kernel.name = kernel_name(kernel)
    get_logger("fusion").info("%d kernels -> %d", before, len(program.kernels()))
    return program


def _drop_empty_kernels(commands: list[Command]) -> None:
    """A kernel writing a zero-size buffer computes nothing: no launch at all."""
    commands[:] = [c for c in commands if not (isinstance(c, KernelCmd) and c.kernel.out.size == 0)]
    for cmd in commands:
        if isinstance(cmd, LoopCmd):
            _drop_empty_kernels(cmd.body)


def _live_buffers(program: ProcProgram):
    buffers = {b.id: b for b in program.buffers}
    for cmd in program.walk():
        if isinstance(cmd, KernelCmd):
            yield cmd.kernel.out
            for load, _ in _loads_with_context(cmd.kernel.value):
                yield buffers[load.buffer_id]
        elif isinstance(cmd, ReceiveCmd):
            yield from cmd.buffers
        elif isinstance(cmd, (CollectiveStartCmd, CollectiveWaitCmd)):
            yield from cmd.collective.sources + [cmd.collective.out]


def kernel_name(kernel: Kernel) -> str:
    """What it computes, e.g. fused_matmul_add_relu_12 (12: the last graph node it computes)."""
    ops = []
    for op in kernel.ops:
        name = {"dot": "matmul", "where": "select"}.get(op, op)
        if name not in ops:
            ops.append(name)
    prefix = "fused_" if len(kernel.sources) > 1 else ""
    return f"{prefix}{'_'.join(ops[:4])}_{kernel.sources[-1] if kernel.sources else 0}"
