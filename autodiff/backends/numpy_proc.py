"""The numpy-proc device: runs the fused procedural IR over one numpy arena.

It evaluates each kernel's value expression through its access expressions,
vectorized over the iteration space (in chunks of the first axis, so a big
reduction does not need its whole iteration space in memory at once), and keeps
every temporary at its planned offset in one byte arena. So lowering, fusion and
the memory plan are checked numerically on any machine, before and besides
OpenCL. It is a checker, not a fast device.
"""
from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import numpy as np

from .. import comm
from ..alloc.plan import MemoryPlan
from ..ir.ops import Op
from ..proc.index import Atom, DynAtom, Var, evaluate_index, flat_index
from ..proc.ir import (Alu, CollectiveStartCmd, CollectiveWaitCmd, Const, Expr, FeedCmd, Guard, IndexValue, Kernel, KernelCmd, Load, LoopCmd,
                       ProcProgram, RandomBits, ReceiveCmd, Reduce, walk_expr)
from .registry import Backend, register
from .host import Failure, call_feeder, loop_in_step, receive_now, receiver_due
from ..ir.reference import REFERENCE, hash_uniform

CHUNK_ELEMENTS = 1 << 22   # iteration points evaluated at once


class NumpyProcExecutor:
    def __init__(self, program: ProcProgram, plan: MemoryPlan, disable: frozenset[str] = frozenset()) -> None:
        self.program = program
        self.overlap_collectives = "collective_overlap" not in disable
        self.collectives: dict[int, Any] = {}   # id of a started Collective -> its Future
        self.plan = plan
        self.arena = np.zeros(max(plan.arena_bytes, 4), np.uint8)
        self.views: dict[int, np.ndarray] = {}
        self.buffers = {b.id: b for b in program.buffers}
        for b in program.buffers:
            if b.kind == "temp" and b.id in plan.offsets:
                start = plan.offsets[b.id]
                self.views[b.id] = self.arena[start:start + b.nbytes].view(b.dtype)
            else:   # feed staging, and empty temporaries no kernel writes
                self.views[b.id] = np.zeros(b.size, b.dtype)
        self.runs = 0
        self.kernels_launched = 0
        self.loop_values: dict[Var, int] = {}
        self.iterations: list[int] = []

    def run(self) -> None:
        persistent = [b for b in self.program.buffers if b.kind == "persistent"]
        for b in persistent:
            self.views[b.id] = np.array(b.var.value, dtype=b.dtype).reshape(-1)
        self.loop_values = {self.program.run_counter: self.runs}
        self.iterations = []
        self.failure = Failure()
        try:
            self._run_commands(self.program.commands)
        finally:   # the work done so far is kept, even when a callback raised
            for b in persistent:
                b.var.value = self.views[b.id].reshape(b.shape).copy()
            self.runs += 1

    def _run_commands(self, commands) -> None:
        for cmd in commands:
            if isinstance(cmd, KernelCmd):
                self._run_kernel(cmd.kernel)
            elif isinstance(cmd, FeedCmd):
                b = cmd.buffer
                value = call_feeder(cmd.fn, cmd.name, b.shape, b.dtype, self.iterations)
                self.views[b.id][:] = value.reshape(-1)
            elif isinstance(cmd, ReceiveCmd):
                self._receive(cmd)
            elif isinstance(cmd, CollectiveStartCmd):
                c = cmd.collective
                parts = [self.views[b.id].reshape(b.shape).copy() for b in c.sources]
                value = parts[0] if len(parts) == 1 else np.concatenate([p.reshape(-1) for p in parts])
                future = comm.start(c.kind, value, c.op, c.root)
                if not self.overlap_collectives:
                    comm.wait(future)
                self.collectives[id(c)] = future
            elif isinstance(cmd, CollectiveWaitCmd):
                c = cmd.collective
                self.views[c.out.id][:] = comm.wait(self.collectives.pop(id(c))).reshape(-1)
            elif isinstance(cmd, LoopCmd):
                self._run_loop(cmd)

    def _receive(self, cmd: ReceiveCmd) -> None:
        if self.failure.error is not None or not receiver_due(cmd.every, self.iterations):
            return
        values = [self.views[b.id].reshape(b.shape).copy() for b in cmd.buffers]
        receive_now(cmd.fn, cmd.name, values, self.iterations, self.failure)

    def _run_loop(self, cmd: LoopCmd) -> None:
        """Loops stop after a failure where `host.Failure` says, as on every backend."""
        def iteration(i: int) -> None:
            self.loop_values[cmd.variable] = i
            self._run_commands(cmd.body)
        loop_in_step(cmd.count, self.iterations, self.failure, iteration)

    # --- profiling (autodiff/profiler.py): a timed kernel call, on the instance only -------
    def start_profile(self, recorder: Any) -> None:
        plain = self._run_kernel

        def run_kernel(kernel: Kernel) -> None:
            at = time.perf_counter()
            plain(kernel)
            recorder.kernel(kernel.name, (kernel,), at, time.perf_counter(), "numpy-proc")
        self._run_kernel = run_kernel

    def stop_profile(self, recorder: Any) -> None:
        self.__dict__.pop("_run_kernel", None)

    # --- kernels --------------------------------------------------------------------
    def _run_kernel(self, kernel: Kernel) -> None:
        self.kernels_launched += 1
        shape = kernel.shape
        out = np.empty(shape, kernel.out.dtype)
        inner = 1
        for e in walk_expr(kernel.value):
            if isinstance(e, Reduce):
                for v in e.variables:
                    inner *= v.extent
        rows = shape[0] if shape else 1
        per_row = max(1, int(np.prod(shape[1:], dtype=np.int64)) * inner)
        step = max(1, CHUNK_ELEMENTS // per_row)
        for lo in range(0, rows, step):
            hi = min(rows, lo + step)
            context = _Context(self, kernel.variables, lo, hi)
            value = context.evaluate(kernel.value)
            if not shape:
                out[...] = value
                break
            out[lo:hi] = np.broadcast_to(value, ((hi - lo),) + tuple(shape[1:]))
        self.views[kernel.out.id][:] = out.reshape(-1)


class _Context:
    """Evaluates expressions with one array axis per variable in scope."""

    def __init__(self, executor: NumpyProcExecutor, variables: tuple[Var, ...], lo: int, hi: int) -> None:
        self.ex = executor
        self.axes: list[Var] = list(variables)
        self.first = variables[0] if variables else None   # evaluated for rows lo .. hi-1 only
        self.first_range = (lo, hi)

    def var_value(self, atom: Atom) -> np.ndarray:
        if isinstance(atom, DynAtom):
            return self.evaluate(atom.value).astype(np.int64)
        if atom in self.ex.loop_values:
            return np.int64(self.ex.loop_values[atom])
        position = self.axes.index(atom)
        if atom == self.first:
            values = np.arange(*self.first_range)
        else:
            values = np.arange(atom.extent)
        shape = [1] * len(self.axes)
        shape[position] = len(values)
        return values.reshape(shape)

    def index(self, form) -> np.ndarray:
        return evaluate_index(form, self.var_value)

    def evaluate(self, expr: Expr) -> np.ndarray:
        if isinstance(expr, Const):
            return np.array(expr.value, expr.dtype)
        if isinstance(expr, IndexValue):
            return self.index(expr.index).astype(expr.dtype)
        if isinstance(expr, Load):
            buffer = self.ex.buffers[expr.buffer_id]
            flat = self.index(flat_index(expr.indices, buffer.shape))
            if buffer.size == 0:   # only ever read in a guarded branch that is never taken
                return np.zeros(flat.shape, buffer.dtype)
            flat = np.clip(flat, 0, max(buffer.size - 1, 0))   # guarded lanes may point anywhere
            return self.ex.views[buffer.id][flat]
        if isinstance(expr, Guard):
            mask = np.array(True)
            for form, lo, hi in expr.valid.ranges:
                value = self.index(form)
                mask = mask & (value >= lo) & (value < hi)
            return np.where(mask, self.evaluate(expr.body), self.evaluate(expr.otherwise))
        if isinstance(expr, Alu):
            fake = SimpleNamespace(dtype=expr.dtype, shape=(), args=None)
            return np.asarray(REFERENCE[expr.op]([self.evaluate(a) for a in expr.args], fake))
        if isinstance(expr, RandomBits):
            return hash_uniform(expr.seed, self.index(expr.counter), self.index(expr.element))
        if isinstance(expr, Reduce):
            return self._reduce(expr)
        raise AssertionError(f"cannot evaluate {type(expr).__name__}")

    def _reduce(self, expr: Reduce) -> np.ndarray:
        outer = len(self.axes)
        self.axes.extend(expr.variables)
        try:
            body = self.evaluate(expr.body)
        finally:
            del self.axes[outer:]
        full = body.reshape(body.shape + (1,) * (outer + len(expr.variables) - body.ndim)) \
            if body.ndim < outer + len(expr.variables) else body
        target = tuple(full.shape[:outer]) + tuple(v.extent for v in expr.variables)
        full = np.broadcast_to(full, np.broadcast_shapes(full.shape, (1,) * outer + target[outer:]))
        axes = tuple(range(outer, outer + len(expr.variables)))
        if expr.op is Op.SUM:
            return np.sum(full, axis=axes, dtype=expr.dtype)
        if expr.op is Op.MAX:
            return np.max(full, axis=axes)
        return np.argmax(full, axis=outer).astype(np.int32)   # ARGMAX: one variable


register(Backend(
    name="numpy-proc", executor=lambda ir, plan, disable: NumpyProcExecutor(ir, plan, disable), takes_proc=True,
    problem=lambda: None, preference=90, reference_only=True,
    switches=("collective_overlap",),
    description="the fused procedural IR over one numpy arena: checks lowering, fusion and the memory plan"))
