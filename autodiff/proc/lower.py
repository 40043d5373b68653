"""Lowering: the optimized graph becomes a procedural program, one kernel per compute node.

Views (reshape, permute, expand, slice, pad, concat), constants, iotas and loop
indices never become kernels or buffers: a consumer reads through them with an
access expression (`read`). Persistent tensors are read in place; a read whose
value is still needed after an update of its tensor is first copied (a snapshot).
Fusion (autodiff/fusion) then merges kernels by inlining producers into loads.
"""
from __future__ import annotations

from ..ir.ops import ELEMENTWISE_OPS, REDUCE_OPS, Op
from ..ir.graph import Block, Node
from ..opt.inplace import stale_reads
from ..opt.rewrite import Graph
from .index import DynAtom, Index, Var, flat_index, unflatten
from .ir import (Alu, Buffer, Collective, CollectiveStartCmd, CollectiveWaitCmd, Command, Const, Expr, FeedCmd, Guard, IndexValue, Kernel, KernelCmd, Load,
                 LoopCmd, ProcProgram, RandomBits, ReceiveCmd, Reduce, Valid)

VIEW_OPS = (Op.RESHAPE, Op.PERMUTE, Op.EXPAND, Op.SLICE, Op.PAD, Op.CONCAT)
INLINE_LEAVES = (Op.CONST, Op.IOTA, Op.LOOP_INDEX)


class Lowering:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.buffers: list[Buffer] = []
        self.buffer_of: dict[int, Buffer] = {}       # node id -> the buffer holding its value
        self.persistent: dict[int, Buffer] = {}      # variable id -> its buffer
        self.loop_vars: list[Var] = []               # enclosing loops, outermost first
        self.loop_counts: list[int] = []
        self.all_loop_vars: list[Var] = []
        self.run_counter = Var("run", 2 ** 31 - 1)
        self.snapshots = stale_reads(graph.root)
        self.collectives: dict[int, Collective] = {}   # COLLECTIVE node id -> its start's record
        self._names = 0
        self._kernel_names: dict[str, int] = {}

    # --- names and buffers --------------------------------------------------------
    def fresh_var(self, prefix: str, extent: int) -> Var:
        self._names += 1
        return Var(f"{prefix}{self._names}", max(int(extent), 1))

    def new_buffer(self, name: str, shape: tuple[int, ...], dtype: str, kind: str, var=None) -> Buffer:
        buffer = Buffer(len(self.buffers), name, tuple(shape), dtype, kind, var)
        self.buffers.append(buffer)
        return buffer

    def persistent_buffer(self, var) -> Buffer:
        if var.id not in self.persistent:
            self.persistent[var.id] = self.new_buffer(var.name, var.shape, var.dtype, "persistent", var)
        return self.persistent[var.id]

    def kernel_name(self, base: str) -> str:
        n = self._kernel_names.get(base, 0)
        self._kernel_names[base] = n + 1
        return f"{base}_{n}"

    # --- reading a node's value at an index -------------------------------------------
    def read(self, node: Node, indices: tuple[Index, ...], one_to_one: bool = True) -> Expr:
        """The value of `node` at `indices`, through views, as an expression."""
        buffer = self.buffer_of.get(node.id)
        if buffer is not None:
            return Load(buffer.id, tuple(indices), buffer.dtype, one_to_one)
        op, args = node.op, node.args
        if op is Op.CONST:
            return Const(args.value, node.dtype)
        if op is Op.IOTA:
            return IndexValue(indices[args.axis], node.dtype)
        if op is Op.LOOP_INDEX:
            return IndexValue(Index.of(self.loop_var_of(node)), node.dtype)
        (source,) = node.inputs if op is not Op.CONCAT else (None,)
        if op is Op.RESHAPE:
            flat = flat_index(indices, node.shape)
            return self.read(source, unflatten(flat, source.shape), one_to_one)
        if op is Op.PERMUTE:
            inner = [Index.of(0)] * len(indices)
            for out_axis, in_axis in enumerate(args.perm):
                inner[in_axis] = indices[out_axis]
            return self.read(source, tuple(inner), one_to_one)
        if op is Op.EXPAND:
            broadcast = [s == 1 and n != 1 for s, n in zip(source.shape, node.shape)]
            inner = tuple(Index.of(0) if b else i for i, b in zip(indices, broadcast))
            return self.read(source, inner, one_to_one and not any(broadcast))
        if op is Op.SLICE:
            return self.read(source, tuple(i + s for i, s in zip(indices, args.starts)), one_to_one)
        if op is Op.PAD:
            inner = tuple(i - lo for i, lo in zip(indices, args.low))
            ranges = tuple((i, lo, lo + n) for i, lo, n, total in zip(indices, args.low, source.shape, node.shape)
                           if lo > 0 or lo + n < total)
            body = self.read(source, inner, one_to_one)
            return _guard(ranges, body, Const(0, node.dtype), node.dtype)
        if op is Op.CONCAT:
            axis, offset = args.axis, 0
            pieces: list[tuple[Index, int, int, Expr]] = []
            for part in node.inputs:
                size = part.shape[axis]
                shifted = tuple(i - offset if a == axis else i for a, i in enumerate(indices))
                pieces.append((indices[axis], offset, offset + size, self.read(part, shifted, one_to_one)))
                offset += size
            value = pieces[-1][3]
            for form, lo, hi, body in reversed(pieces[:-1]):
                value = _guard(((form, lo, hi),), body, value, node.dtype)
            return value
        raise AssertionError(f"{op.value} has no buffer: it should have been lowered to a kernel")

    def loop_var_of(self, node: Node) -> Var:
        depth = 0
        block = node.block
        while block.parent is not None:
            depth += 1
            block = block.parent
        return self.loop_vars[depth - 1]

    # --- compute nodes -------------------------------------------------------------------
    def expression(self, node: Node, out: tuple[Var, ...]) -> tuple[Expr, str]:
        """The kernel value computing `node` at output variables `out`, and the kernel kind."""
        idx = tuple(Index.of(v) for v in out)
        op, args = node.op, node.args
        if op in ELEMENTWISE_OPS:
            return Alu(op, tuple(self.read(i, idx) for i in node.inputs), node.dtype), "elementwise"
        if op in REDUCE_OPS + (Op.DOT, Op.SCATTER_ADD) and _reduces_nothing(node):
            # a reduction over an empty axis is its identity: 0 for a sum (and a product of
            # (m, 0) by (0, n)), -inf for a maximum, as torch; never a loop that writes nothing
            return Const(_EMPTY_REDUCTION[op](node.dtype), node.dtype), "elementwise"
        if op in (Op.SUM, Op.MAX):
            (source,) = node.inputs
            reduced = {a: self.fresh_var("r", source.shape[a]) for a in args.axes}
            inner = tuple(Index.of(reduced[a]) if a in reduced else i for a, i in enumerate(idx))
            body = self.read(source, inner)
            return Reduce(op, tuple(reduced.values()), body, node.dtype), "reduce"
        if op is Op.ARGMAX:
            (source,) = node.inputs
            r = self.fresh_var("r", source.shape[args.axis])
            inner = tuple(Index.of(r) if a == args.axis else i for a, i in enumerate(idx))
            return Reduce(op, (r,), self.read(source, inner), node.dtype), "reduce"
        if op is Op.DOT:
            a, b = node.inputs
            k = self.fresh_var("k", a.shape[-1])
            batch = idx[:-2]
            left = self.read(a, batch + (idx[-2], Index.of(k)), one_to_one=False)
            right = self.read(b, batch + (Index.of(k), idx[-1]), one_to_one=False)
            return Reduce(Op.SUM, (k,), Alu(Op.MUL, (left, right), node.dtype), node.dtype), "matmul"
        if op is Op.GATHER:
            table, indices = node.inputs
            row = self.read(indices, idx[:-1], one_to_one=False)
            row_index = Index.of(DynAtom(row, 0, table.shape[0] - 1))
            return self.read(table, (row_index, idx[-1]), one_to_one=False), "gather"
        if op is Op.SCATTER_ADD:
            indices, grad = node.inputs
            sources = tuple(self.fresh_var("r", n) for n in indices.shape)
            at = tuple(Index.of(v) for v in sources)
            hit = Alu(Op.EQ, (self.read(indices, at, one_to_one=False), IndexValue(idx[0], "int32")), "int32")
            body = Alu(Op.WHERE, (hit, self.read(grad, at + (idx[1],), one_to_one=False),
                                  Const(0.0, node.dtype)), node.dtype)
            return Reduce(Op.SUM, sources, body, node.dtype), "reduce"
        if op is Op.RANDOM:
            return RandomBits(args.seed, self.random_counter(), flat_index(idx, node.shape)), "elementwise"
        raise AssertionError(f"no lowering for {op.value}")

    def random_counter(self) -> Index:
        """Executions of this node so far: run * (iterations per run) + the flat iteration."""
        counter = Index.of(0)
        stride = 1
        for var, count in zip(reversed(self.loop_vars), reversed(self.loop_counts)):
            counter = counter + Index.of(var) * stride
            stride *= count
        return counter + Index.of(self.run_counter) * stride

    def kernel_for(self, node: Node, commands: list[Command]) -> Buffer:
        out_vars = tuple(self.fresh_var("i", n) for n in node.shape)
        value, kind = self.expression(node, out_vars)
        buffer = self.new_buffer(f"t{node.id}", node.shape, node.dtype, "temp")
        commands.append(KernelCmd(Kernel(self.kernel_name(f"{kind}_{node.op.value}"), buffer, out_vars,
                                         value, kind, [node.id], [node.op.value])))
        self.buffer_of[node.id] = buffer
        return buffer

    def copy_kernel(self, node: Node, commands: list[Command], out: Buffer, kind: str) -> None:
        out_vars = tuple(self.fresh_var("i", n) for n in out.shape)
        value = self.read(node, tuple(Index.of(v) for v in out_vars))
        commands.append(KernelCmd(Kernel(self.kernel_name(f"{kind}_{out.name}"), out, out_vars, value,
                                         kind, [node.id], [kind])))

    # --- blocks ------------------------------------------------------------------------------
    def materialized(self, node: Node, commands: list[Command]) -> Buffer:
        """The buffer holding `node`'s value; a view or a constant is copied into one first."""
        if node.id not in self.buffer_of:
            copy = self.new_buffer(f"t{node.id}", node.shape, node.dtype, "temp")
            self.copy_kernel(node, commands, copy, "copy")
            self.buffer_of[node.id] = copy
        return self.buffer_of[node.id]

    def start_collective(self, node: Node, commands: list[Command]) -> None:
        sources = [self.materialized(i, commands) for i in node.inputs]
        out = self.new_buffer(f"t{node.id}", node.shape, node.dtype, "temp")
        args = node.args
        collective = Collective(args.kind, args.op, args.root, sources, out, f"{args.kind}_{node.id}")
        self.collectives[node.id] = collective
        commands.append(CollectiveStartCmd(collective))

    def lower_block(self, block: Block) -> list[Command]:
        """The block's commands in node order, except that a collective starts as early as
        its input allows and is waited for just before its first reader (`collective_starts`,
        `first_readers`): the kernels in between run while the ranks communicate."""
        commands: list[Command] = []
        starts = collective_starts(block)
        readers = first_readers(block)
        for collective in starts.get(-1, ()):
            self.start_collective(collective, commands)
        for at, node in enumerate(block.nodes):
            for collective in readers.get(at, ()):
                commands.append(CollectiveWaitCmd(self.collectives[collective.id]))
            self.lower_node(node, commands)
            for collective in starts.get(at, ()):
                self.start_collective(collective, commands)
        for collective in readers.get(len(block.nodes), ()):
            commands.append(CollectiveWaitCmd(self.collectives[collective.id]))
        return commands

    def lower_node(self, node: Node, commands: list[Command]) -> None:
        op = node.op
        if op in VIEW_OPS or op in INLINE_LEAVES:
            return
        if op is Op.READ:
            buffer = self.persistent_buffer(node.args.var)
            if node.id in self.snapshots:   # its old value is read after an update
                snapshot = self.new_buffer(f"old_{buffer.name}", buffer.shape, buffer.dtype, "temp")
                self.buffer_of[node.id] = buffer
                self.copy_kernel(node, commands, snapshot, "snapshot")
                buffer = snapshot
            self.buffer_of[node.id] = buffer
        elif op is Op.FEEDER:
            buffer = self.new_buffer(f"feed_{node.args.name}", node.shape, node.dtype, "feed")
            commands.append(FeedCmd(buffer, node.args.fn, node.args.name))
            self.buffer_of[node.id] = buffer
        elif op is Op.ASSIGN:
            target = self.persistent_buffer(node.args.var)
            self.copy_kernel(node.inputs[0], commands, target, "assign")
        elif op is Op.RECEIVER:
            buffers = [self.materialized(i, commands) for i in node.inputs]
            commands.append(ReceiveCmd(buffers, node.args.fn, node.args.name, node.args.every))
        elif op is Op.COLLECTIVE:   # started and waited for where lower_block says
            self.buffer_of[node.id] = self.collectives[node.id].out
        elif op is Op.FOR:
            var = self.fresh_var("loop", node.args.count)
            self.all_loop_vars.append(var)
            self.loop_vars.append(var)
            self.loop_counts.append(node.args.count)
            body = self.lower_block(node.args.body)
            self.loop_vars.pop()
            self.loop_counts.pop()
            commands.append(LoopCmd(node.args.count, var, body))
        else:
            self.kernel_for(node, commands)


def collective_starts(block: Block) -> dict[int, list[Node]]:
    """Where each COLLECTIVE of `block` starts: right after the last node of the block its
    input needs (through views), so the work up to the collective's own place (its wait)
    overlaps the communication; -1 (before the block's first node) when nothing of the block
    is needed. Ties keep program order: every rank starts the same collectives in the same
    order."""
    position = {node.id: at for at, node in enumerate(block.nodes)}
    starts: dict[int, list[Node]] = {}
    for at, node in enumerate(block.nodes):
        if node.op is not Op.COLLECTIVE:
            continue
        last = -1
        stack = list(node.inputs)
        while stack:
            dep = stack.pop()
            if dep.id not in position:
                continue          # computed in an enclosing block
            if dep.op in VIEW_OPS or dep.op in INLINE_LEAVES:
                stack.extend(dep.inputs)
            else:
                last = max(last, position[dep.id])
        starts.setdefault(min(last, at - 1), []).append(node)
    return starts


def first_readers(block: Block) -> dict[int, list[Node]]:
    """Before which node of `block` each COLLECTIVE is waited for: the first later node that
    reads it through views, any loop (its body might), or the block's end."""
    waits: dict[int, list[Node]] = {}
    pending: list[Node] = []
    for at, node in enumerate(block.nodes):
        if node.op is Op.FOR:
            due = list(pending)
        elif node.op in VIEW_OPS or node.op in INLINE_LEAVES:
            due = []
        else:
            reached = _through_views(node)
            due = [c for c in pending if c.id in reached]
        if due:
            waits[at] = due
            pending = [c for c in pending if c not in due]
        if node.op is Op.COLLECTIVE:
            pending.append(node)
    if pending:
        waits[len(block.nodes)] = pending
    return waits


def _through_views(node: Node) -> set[int]:
    """Ids of the nodes `node` reads, directly or through views."""
    reached: set[int] = set()
    stack = list(node.inputs)
    while stack:
        dep = stack.pop()
        if dep.id in reached:
            continue
        reached.add(dep.id)
        if dep.op in VIEW_OPS:
            stack.extend(dep.inputs)
    return reached


def _guard(ranges: tuple[tuple[Index, int, int], ...], body: Expr, otherwise: Expr, dtype: str) -> Expr:
    """Drop ranges that always hold; no ranges left means no guard."""
    kept = []
    for form, lo, hi in ranges:
        low, high = form.bounds()
        if not (lo <= low and high < hi):
            kept.append((form, lo, hi))
    if not kept:
        return body
    return Guard(Valid(tuple(kept)), body, otherwise, dtype)


def lower(graph: Graph) -> ProcProgram:
    """Graph IR -> procedural IR, one kernel per compute node (fusion comes next)."""
    lowering = Lowering(graph)
    commands = lowering.lower_block(graph.root)
    return ProcProgram(commands, lowering.buffers, lowering.run_counter, lowering.all_loop_vars)


_EMPTY_REDUCTION = {
    Op.SUM: lambda dtype: 0,
    Op.DOT: lambda dtype: 0,
    Op.SCATTER_ADD: lambda dtype: 0,
    Op.MAX: lambda dtype: float("-inf") if dtype == "float32" else -2**31,
    Op.ARGMAX: lambda dtype: 0,
}


def _reduces_nothing(node: Node) -> bool:
    """Whether a reducing node's reduction runs over zero elements."""
    if node.op in (Op.SUM, Op.MAX):
        return any(node.inputs[0].shape[a] == 0 for a in node.args.axes)
    if node.op is Op.ARGMAX:
        return node.inputs[0].shape[node.args.axis] == 0
    if node.op is Op.DOT:
        return node.inputs[0].shape[-1] == 0
    return node.inputs[0].size == 0   # SCATTER_ADD: no index to scatter
