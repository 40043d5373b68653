"""The OpenCL runtime: build once, allocate one arena, replay prepared launch lists.

Every distinct kernel source is built once, all in one program (kernels that
differ only in their buffers share a source). Runs of small kernels launch as
megakernels (see megakernel.py), whose offsets come from a table, so the equal
layers of a model share their megakernels too. Each launch gets its own kernel
object with its arguments set once at compile time; inside a loop only the
kernels that use the loop index get that one argument set again. Feeders are
called in program order on a background thread ahead of the host (host.Feeds)
and copied without blocking; Receivers read back without blocking and are
called back in program order as their data arrives; a callback that raises
stops the run after the queue drains, and the persistent tensors keep the
values computed so far.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..alloc.plan import MemoryPlan
from ..errors import DeviceMemoryError
from ..proc.ir import FeedCmd, Kernel, KernelCmd, LoopCmd, ProcProgram, ReceiveCmd
from ..proc.index import Var
from ..codegen.build import build_kernels
from ..codegen.group_reduce import group_reduction, render_group_reduce
from .host import Feeds, PendingReceive, deliver_receives, feeds_ahead, receiver_due
from ..schedule.matmul import match_matmul
from ..codegen.matmul import render_matmul_kernel
from ..codegen.matmul_source import BUILD_OPTIONS
from ..schedule.megakernel import is_small, plan_megakernels
from ..codegen.renderer import OpenCLLanguage, RenderedKernel
from ..codegen.megakernel import render_megakernel, render_stage
from ..codegen.vector import renderer_for

# PoCL generates generic (slow) code unless told the CPU; measured ~7x slower without it
os.environ.setdefault("POCL_CPU_TARGET", "native")

MAX_ITERATIONS_AHEAD = 64   # the host waits when it gets this many loop iterations ahead of the device

INSTALL_HINT = ("no OpenCL platform found. On a CPU-only machine install PoCL: "
                "pip install pyopencl pocl-binary-distribution (or apt-get install pocl-opencl-icd); "
                "or run with device='numpy'")


def _cl():
    try:
        import pyopencl as cl
    except ImportError as err:
        raise RuntimeError(INSTALL_HINT) from err
    return cl


UNBUILDABLE_HINT = ("PoCL cannot compile for this CPU (the PoCL 3.0 in the pyopencl wheel uses LLVM 14, "
                    "which does not know e.g. AMD Zen 5 and asks for target CPU 'generic'); install Debian's "
                    "PoCL beside it: apt-get install pocl-opencl-icd")

# a kernel every OpenCL device must build; a device that fails it is skipped
_PROBE_SOURCE = "__kernel void probe(__global float *x) { x[get_global_id(0)] += 1.0f; }"
_build_errors: dict[int, str | None] = {}   # device pointer -> None if it builds, else the compiler's complaint


def build_error(device) -> str | None:
    """None if `device` builds the probe kernel, else the first line of what went wrong
    (checked once per process: a platform can list a device its compiler cannot target)."""
    key = device.int_ptr
    if key not in _build_errors:
        cl = _cl()
        try:
            cl.Program(cl.Context([device]), _PROBE_SOURCE).build()
            _build_errors[key] = None
        except Exception as err:
            lines = [line for line in str(err).splitlines() if "error" in line.lower()]
            _build_errors[key] = (lines[-1] if lines else str(err).splitlines()[0]).strip()
    return _build_errors[key]


def opencl_problem() -> str | None:
    """None if some OpenCL device here builds kernels, else why not (one line)."""
    try:
        choose_device()
        return None
    except Exception as err:
        return str(err)


def opencl_available() -> bool:
    return opencl_problem() is None


def choose_device(preferred: str | None = None):
    """AUTODIFF_OPENCL_DEVICE (or `preferred`): an index or part of a device name; otherwise
    the first device that builds kernels."""
    cl = _cl()
    try:
        devices = [d for p in cl.get_platforms() for d in p.get_devices()]
    except Exception as err:
        raise RuntimeError(INSTALL_HINT) from err
    if not devices:
        raise RuntimeError(INSTALL_HINT)
    wanted = preferred or os.environ.get("AUTODIFF_OPENCL_DEVICE")
    if wanted is None:
        candidates = devices
    elif wanted.isdigit() and int(wanted) < len(devices):
        candidates = [devices[int(wanted)]]
    else:
        candidates = [d for d in devices if wanted.lower() in d.name.lower()]
        if not candidates:
            raise RuntimeError(f"no OpenCL device matches '{wanted}'; found: {[d.name for d in devices]}")
    for device in candidates:
        if build_error(device) is None:
            return device
    failures = "; ".join(f"{d.name}: {build_error(d)}" for d in candidates)
    which = f"matching '{wanted}'" if wanted else "here"
    raise RuntimeError(f"no OpenCL device {which} can build kernels ({failures}). {UNBUILDABLE_HINT}")


_contexts: dict[int, Any] = {}


def _context_and_queue(device):
    """One context and in-order queue per device, shared by compiled programs."""
    cl = _cl()
    key = device.int_ptr
    if key not in _contexts:
        context = cl.Context([device])
        _contexts[key] = (context, cl.CommandQueue(context))
    return _contexts[key]


def build_program(context, language, rendered: list[RenderedKernel]) -> tuple[Any, list[str], str]:
    cl = _cl()

    def build(source: str):
        try:
            return cl.Program(context, source).build(options=BUILD_OPTIONS)
        except cl.RuntimeError:
            # PoCL's on-disk kernel cache is shared by processes; a build that raced another
            # process writing the same entry fails once with an empty log: build again
            return cl.Program(context, source).build(options=BUILD_OPTIONS)

    return build_kernels(language, rendered, build, cl.RuntimeError, "compiler")


@dataclass
class _Launch:
    kernel: Any
    global_size: tuple[int]
    local_size: tuple[int]
    var_args: list[tuple[int, Var]]     # (argument index, loop variable) set at each launch


class OpenCLExecutor:
    language = OpenCLLanguage()

    def __init__(self, program: ProcProgram, plan: MemoryPlan, device_name: str | None = None,
                 megakernels: bool = True, tiled_matmuls: bool = True, feeder_thread: bool = True,
                 vectorize: bool = True, group_reductions: bool | None = None) -> None:
        cl = _cl()
        self.cl = cl
        self.program = program
        self.plan = plan
        self.device = choose_device(device_name)
        self.context, self.queue = _context_and_queue(self.device)
        self.buffers = {b.id: b for b in program.buffers}
        self._check_memory()
        start = time.perf_counter()
        self._place_buffers()
        kernels = program.kernels()
        self.tiled_matmuls = tiled_matmuls
        self.vectorize = vectorize
        # one work-group per output of a long reduction: for GPUs (no gain measured on PoCL)
        self.group_reductions = (bool(self.device.type & cl.device_type.GPU) if group_reductions is None
                                 else group_reductions)
        self.feeds_ahead = feeds_ahead(program.commands) if feeder_thread else 0
        # runs of small kernels launch as one megakernel per piece; the rest one by one
        stages = {id(k): render_stage(k, self.language, self.buffers, lambda b: self._place(b)[0],
                                      vectorize=vectorize)
                  for k in kernels if is_small(k)} if megakernels else {}
        mega_groups = plan_megakernels(program, lambda k: stages[id(k)].signature) if megakernels else []
        self.mega_of: dict[int, int] = {id(cmd): n for n, group in enumerate(mega_groups) for cmd in group}
        grouped = {id(cmd.kernel) for group in mega_groups for cmd in group}
        singles = [k for k in kernels if id(k) not in grouped]
        self.rendered = [self._render_single(k, tiled_matmuls) for k in singles]
        self.mega_rendered = [render_megakernel(f"stages_{n}_{group[0].kernel.name}",
                                                [stages[id(c.kernel)] for c in group], self.language)
                              for n, group in enumerate(mega_groups)]
        self.cl_program, names, self.source = build_program(self.context, self.language,
                                                            self.rendered + self.mega_rendered)
        self._place_tables()
        self.function_names = names[:len(self.rendered)]
        self.launch_of: dict[int, _Launch] = {}
        for kernel, rendered, fn in zip(singles, self.rendered, self.function_names):
            self.launch_of[id(kernel)] = self._prepare(rendered, fn)
        self.mega_launches = [self._prepare(r, fn, base) for r, fn, base in
                              zip(self.mega_rendered, names[len(self.rendered):], self.table_bases)]
        self.steps = self._steps(program.commands)
        self._warm_up()
        self.build_seconds = time.perf_counter() - start
        self.runs = 0
        self.kernels_launched = 0

    # --- setup ------------------------------------------------------------------------
    def _render_single(self, kernel: Kernel, tiled_matmuls: bool) -> RenderedKernel:
        """A matrix product (with its epilogue) uses the tiled generator, a long reduction with
        few outputs a work-group per output (GPUs), an elementwise kernel over contiguous data
        the vector renderer; the rest the C renderer."""
        if tiled_matmuls:
            match = match_matmul(kernel, self.buffers)
            if match is not None:
                return render_matmul_kernel(kernel, match, self.language, self.buffers)
        if self.group_reductions and group_reduction(kernel) is not None:
            return render_group_reduce(kernel, self.language, self.buffers)
        return renderer_for(kernel, self.language, self.buffers, self.vectorize).render()

    def _check_memory(self) -> None:
        needed = self.plan.arena_bytes + self.plan.persistent_bytes + self.plan.feed_bytes
        available = self.device.global_mem_size
        if needed > available:
            raise DeviceMemoryError(f"the program needs {needed} bytes of device memory (arena "
                                    f"{self.plan.arena_bytes}, persistent {self.plan.persistent_bytes}, feed "
                                    f"{self.plan.feed_bytes}); {self.device.name} has {available}")

    def _place_buffers(self) -> None:
        """Temporaries at their planned arena offsets; persistent tensors and Feeder staging
        side by side in one 'state' buffer (outside the arena: they outlive every step)."""
        mf = self.cl.mem_flags
        self.arena = self.cl.Buffer(self.context, mf.READ_WRITE, max(self.plan.arena_bytes, 64))
        self.state_offset: dict[int, int] = {}
        at = 0
        for b in self.program.buffers:
            if b.kind != "temp":
                self.state_offset[b.id] = at
                at += (b.nbytes + 63) // 64 * 64
        self.state = self.cl.Buffer(self.context, mf.READ_WRITE, max(at, 64))

    def _place(self, buffer_id: int) -> tuple[str, int]:
        """(device buffer name, element offset) of a buffer, fixed for this compiled program."""
        if buffer_id in self.state_offset:
            return "state", self.state_offset[buffer_id] // 4
        return "arena", self.plan.offsets.get(buffer_id, 0) // 4

    def _place_tables(self) -> None:
        """One int buffer with every megakernel launch's offset table, and one float buffer with
        their constants, each side by side."""
        offsets: list[int] = []
        constants: list[float] = []
        self.table_bases: list[tuple[int, int]] = []
        for rendered in self.mega_rendered:
            self.table_bases.append((len(offsets), len(constants)))
            offsets += [self._place(buffer_id)[1] for buffer_id in rendered.table]
            constants += rendered.constants
        flags = self.cl.mem_flags.READ_ONLY | self.cl.mem_flags.COPY_HOST_PTR
        self.table = self.cl.Buffer(self.context, flags, hostbuf=np.array(offsets or [0], dtype=np.int32))
        self.constant_table = self.cl.Buffer(self.context, flags,
                                             hostbuf=np.array(constants or [0.0], dtype=np.float32))

    def _prepare(self, rendered: RenderedKernel, function: str, table_bases: tuple[int, int] = (0, 0)) -> _Launch:
        kernel = self.cl.Kernel(self.cl_program, function)
        var_args = []
        for position, param in enumerate(rendered.params):
            if param.kind == "table":
                kernel.set_arg(position, self.table)
            elif param.kind == "table_base":
                kernel.set_arg(position, np.int32(table_bases[0]))
            elif param.kind == "constants":
                kernel.set_arg(position, self.constant_table)
            elif param.kind == "constants_base":
                kernel.set_arg(position, np.int32(table_bases[1]))
            elif param.kind == "constant":
                kernel.set_arg(position, np.float32(param.value))
            elif param.kind in ("arena", "state"):
                kernel.set_arg(position, self.arena if param.kind == "arena" else self.state)
            elif param.kind == "buffer":
                where, _ = self._place(param.buffer_id)
                kernel.set_arg(position, self.arena if where == "arena" else self.state)
            elif param.kind == "offset":
                kernel.set_arg(position, np.int32(self._place(param.buffer_id)[1] + param.extra))
            elif param.kind == "offset64":
                kernel.set_arg(position, np.int64(self._place(param.buffer_id)[1] + param.extra))
            else:
                kernel.set_arg(position, np.int32(0))
                var_args.append((position, param.var))
        sizes = [s if isinstance(s, tuple) else (s,) for s in (rendered.global_size, rendered.local_size)]
        return _Launch(kernel, sizes[0], sizes[1], var_args)

    def _steps(self, commands: list) -> list[tuple]:
        """The command list as prepared steps: ('launch', _Launch) | ('feed', cmd) |
        ('receive', cmd) | ('loop', cmd, steps); a megakernel's kernels become one launch."""
        steps: list[tuple] = []
        for cmd in commands:
            if isinstance(cmd, KernelCmd):
                mega = self.mega_of.get(id(cmd))
                if mega is None:
                    steps.append(("launch", self.launch_of[id(cmd.kernel)]))
                elif not steps or steps[-1] != ("launch", self.mega_launches[mega]):
                    steps.append(("launch", self.mega_launches[mega]))
            elif isinstance(cmd, FeedCmd):
                steps.append(("feed", cmd))
            elif isinstance(cmd, ReceiveCmd):
                steps.append(("receive", cmd))
            elif isinstance(cmd, LoopCmd):
                steps.append(("loop", cmd, self._steps(cmd.body)))
        return steps

    def _warm_up(self) -> None:
        """Launch each distinct kernel once on zeroed buffers: PoCL generates a kernel's code at
        its first launch, and that time belongs to compiling, not to the first training steps.
        (Zeros keep gather indices in range; the run uploads the real values first.)"""
        for buffer in (self.arena, self.state):
            self.cl.enqueue_fill_buffer(self.queue, buffer, np.uint32(0), 0, buffer.size)
        done: set[int] = set()
        for launch in list(self.launch_of.values()) + self.mega_launches:
            key = launch.kernel.function_name
            if key in done:
                continue
            done.add(key)
            self.cl.enqueue_nd_range_kernel(self.queue, launch.kernel, launch.global_size, launch.local_size)
        self.queue.finish()

    # --- running ------------------------------------------------------------------------
    def run(self) -> None:
        cl = self.cl
        persistent = [b for b in self.program.buffers if b.kind == "persistent"]
        for b in persistent:
            if b.nbytes:
                cl.enqueue_copy(self.queue, self.state, np.ascontiguousarray(b.var.value, dtype=b.dtype),
                                dst_offset=self.state_offset[b.id], is_blocking=False)
        self.values: dict[Var, int] = {self.program.run_counter: self.runs}
        self.iterations: list[int] = []
        self.pending: list[PendingReceive] = []
        self.error: BaseException | None = None
        # a non-blocking copy's event waits for the copy when it is dropped (pyopencl keeps the
        # host array alive that way): Feeder copies are kept until their iteration is done
        self.feed_copies: list[Any] = []
        self.feeds = Feeds(self.program.commands, self.feeds_ahead)
        try:
            self._run_steps(self.steps)
            self.queue.finish()
            self._deliver(wait=True)
        finally:
            self.feeds.close()
            self.queue.finish()
            self.feed_copies.clear()
            for b in persistent:
                if b.nbytes:
                    host = np.empty(b.shape, b.dtype)
                    cl.enqueue_copy(self.queue, host, self.state, src_offset=self.state_offset[b.id],
                                    is_blocking=True)
                    b.var.value = host
            self.runs += 1
        if self.error is not None:
            raise self.error

    def _run_steps(self, steps: list[tuple]) -> None:
        cl = self.cl
        enqueue = cl.enqueue_nd_range_kernel
        queue = self.queue
        for step in steps:
            if self.error is not None:
                return
            kind = step[0]
            if kind == "launch":
                launch = step[1]
                for position, var in launch.var_args:
                    launch.kernel.set_arg(position, np.int32(self.values[var]))
                enqueue(queue, launch.kernel, launch.global_size, launch.local_size)
                self.kernels_launched += 1
            elif kind == "feed":
                cmd = step[1]
                b = cmd.buffer
                value = self.feeds.take(cmd, self.iterations)
                if b.nbytes:
                    self.feed_copies.append(cl.enqueue_copy(queue, self.state, np.ascontiguousarray(value),
                                                            dst_offset=self.state_offset[b.id], is_blocking=False))
            elif kind == "receive":
                self._receive(step[1])
            else:
                self._run_loop(step[1], step[2])

    def _receive(self, cmd: ReceiveCmd) -> None:
        if not receiver_due(cmd.every, self.iterations):
            return
        arrays, events = [], []
        for b in cmd.buffers:
            host = np.empty(b.shape, b.dtype)
            if b.nbytes:
                where, offset = self._place(b.id)
                events.append(self.cl.enqueue_copy(self.queue, host, self.arena if where == "arena" else self.state,
                                                   src_offset=offset * 4, is_blocking=False))
            arrays.append(host)
        complete = self.cl.command_execution_status.COMPLETE
        self.pending.append(PendingReceive(
            ready=lambda: all(e.command_execution_status == complete for e in events),
            wait=lambda: [e.wait() for e in events], arrays=arrays, fn=cmd.fn, name=cmd.name,
            iterations=tuple(self.iterations)))
        self.queue.flush()

    def _run_loop(self, loop: LoopCmd, body: list[tuple]) -> None:
        self.iterations.append(0)
        marks: list[Any] = []
        try:
            for i in range(loop.count):
                self.iterations[-1] = i
                self.values[loop.variable] = i
                self._run_steps(body)
                if self.error is not None:
                    return
                # keep the host at most MAX_ITERATIONS_AHEAD iterations ahead of the device;
                # the Feeder copies enqueued before a marker are done once it is
                marks.append((self.cl.enqueue_marker(self.queue), self.feed_copies))
                self.feed_copies = []
                if len(marks) > MAX_ITERATIONS_AHEAD:
                    marks.pop(0)[0].wait()
                if self.pending:
                    self._deliver(wait=False)
        finally:
            self.iterations.pop()
            # copies still in flight are kept until an outer marker (or the run's end) passes
            self.feed_copies = [c for _, copies in marks for c in copies] + self.feed_copies

    def _deliver(self, wait: bool) -> None:
        if self.error is None:
            # a callback that raises stops issuing work; raised once the queue has drained
            self.error = deliver_receives(self.pending, wait)
