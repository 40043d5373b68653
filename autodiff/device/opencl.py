"""The OpenCL runtime: build once, allocate one arena, replay prepared launch lists.

Every distinct kernel source is built once, all in one program (kernels that
differ only in their buffers share a source). Each launch gets its own kernel
object with its arguments set once at compile time; inside a loop only the
kernels that use the loop index get that one argument set again. Feeders are
called as the host reaches them and copied without blocking; Receivers read
back without blocking and are called back in program order as their data
arrives; a callback that raises stops the run after the queue drains, and the
persistent tensors keep the values computed so far.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..alloc.plan import MemoryPlan
from ..errors import DeviceMemoryError, ReceiverError
from ..proc.ir import Buffer, FeedCmd, KernelCmd, LoopCmd, ProcProgram, ReceiveCmd
from ..proc.index import Var
from .host import call_feeder, call_receiver, receiver_due
from .renderer import OpenCLLanguage, RenderedKernel, render_kernel

# PoCL generates generic (slow) code unless told the CPU; measured ~7x slower without it
os.environ.setdefault("POCL_CPU_TARGET", "native")

MAX_ITERATIONS_AHEAD = 64   # the host waits when it gets this many loop iterations ahead of the device

INSTALL_HINT = ("no OpenCL platform found. On a CPU-only machine install PoCL: "
                "pip install pyopencl pocl-binary-distribution (or apt-get install pocl-opencl-icd); "
                "or run with device='numpy'")


class KernelBuildError(RuntimeError):
    """A kernel failed to build: its name, its numbered source and the compiler log."""


def _cl():
    try:
        import pyopencl as cl
    except ImportError as err:
        raise RuntimeError(INSTALL_HINT) from err
    return cl


def opencl_available() -> bool:
    try:
        cl = _cl()
        return any(p.get_devices() for p in cl.get_platforms())
    except Exception:
        return False


def choose_device(preferred: str | None = None):
    """AUTODIFF_OPENCL_DEVICE (or `preferred`): an index or part of a device name."""
    cl = _cl()
    try:
        devices = [d for p in cl.get_platforms() for d in p.get_devices()]
    except Exception as err:
        raise RuntimeError(INSTALL_HINT) from err
    if not devices:
        raise RuntimeError(INSTALL_HINT)
    wanted = preferred or os.environ.get("AUTODIFF_OPENCL_DEVICE")
    if wanted is None:
        return devices[0]
    if wanted.isdigit() and int(wanted) < len(devices):
        return devices[int(wanted)]
    for d in devices:
        if wanted.lower() in d.name.lower():
            return d
    raise RuntimeError(f"no OpenCL device matches '{wanted}'; found: {[d.name for d in devices]}")


_contexts: dict[int, Any] = {}


def _context_and_queue(device):
    """One context and in-order queue per device, shared by compiled programs."""
    cl = _cl()
    key = device.int_ptr
    if key not in _contexts:
        context = cl.Context([device])
        _contexts[key] = (context, cl.CommandQueue(context))
    return _contexts[key]


def numbered(source: str) -> str:
    return "\n".join(f"{n:4d}  {line}" for n, line in enumerate(source.splitlines(), 1))


def unique_kernels(rendered: list[RenderedKernel]) -> tuple[list[str], list[str]]:
    """(function name of each kernel, the distinct function sources): equal bodies share a name."""
    name_of_body: dict[str, str] = {}
    names, sources = [], []
    for r in rendered:
        if r.body not in name_of_body:
            name_of_body[r.body] = r.name
            sources.append(r.body.replace("{name}", r.name))
        names.append(name_of_body[r.body])
    return names, sources


def build_program(context, language, rendered: list[RenderedKernel]) -> tuple[Any, list[str], str]:
    cl = _cl()
    names, sources = unique_kernels(rendered)
    source = language.preamble() + "\n" + "\n\n".join(sources) + "\n"
    try:
        program = cl.Program(context, source).build()
    except cl.RuntimeError as err:
        # find the kernel that fails on its own, so the error names it
        for body in sources:
            try:
                cl.Program(context, language.preamble() + "\n" + body).build()
            except cl.RuntimeError as single:
                name = body.split("(")[0].split()[-1]
                raise KernelBuildError(f"kernel {name} failed to build:\n{numbered(body)}\n--- compiler log ---\n"
                                       f"{single}") from None
        raise KernelBuildError(f"the program failed to build:\n{numbered(source)}\n{err}") from None
    return program, names, source


@dataclass
class _Launch:
    kernel: Any
    global_size: tuple[int]
    local_size: tuple[int]
    var_args: list[tuple[int, Var]]     # (argument index, loop variable) set at each launch


class OpenCLExecutor:
    language = OpenCLLanguage()

    def __init__(self, program: ProcProgram, plan: MemoryPlan, device_name: str | None = None) -> None:
        cl = _cl()
        self.cl = cl
        self.program = program
        self.plan = plan
        self.device = choose_device(device_name)
        self.context, self.queue = _context_and_queue(self.device)
        self.buffers = {b.id: b for b in program.buffers}
        self._check_memory()
        start = time.perf_counter()
        kernels = program.kernels()
        self.rendered = [render_kernel(k, self.language, self.buffers) for k in kernels]
        self.cl_program, self.function_names, self.source = build_program(self.context, self.language, self.rendered)
        self.build_seconds = time.perf_counter() - start
        self._allocate()
        self.launch_of: dict[int, _Launch] = {}
        for kernel, rendered, fn in zip(kernels, self.rendered, self.function_names):
            self.launch_of[id(kernel)] = self._prepare(rendered, fn)
        self.runs = 0
        self.kernels_launched = 0

    # --- setup ------------------------------------------------------------------------
    def _check_memory(self) -> None:
        needed = self.plan.arena_bytes + self.plan.persistent_bytes + self.plan.feed_bytes
        available = self.device.global_mem_size
        if needed > available:
            raise DeviceMemoryError(f"the program needs {needed} bytes of device memory (arena "
                                    f"{self.plan.arena_bytes}, persistent {self.plan.persistent_bytes}, feed "
                                    f"{self.plan.feed_bytes}); {self.device.name} has {available}")

    def _allocate(self) -> None:
        mf = self.cl.mem_flags
        self.arena = self.cl.Buffer(self.context, mf.READ_WRITE, max(self.plan.arena_bytes, 64))
        self.device_buffers: dict[int, Any] = {}
        self.element_offset: dict[int, int] = {}
        for b in self.program.buffers:
            if b.kind == "temp":
                self.device_buffers[b.id] = self.arena
                self.element_offset[b.id] = self.plan.offsets.get(b.id, 0) // 4
            else:
                self.device_buffers[b.id] = self.cl.Buffer(self.context, mf.READ_WRITE, max(b.nbytes, 4))
                self.element_offset[b.id] = 0

    def _prepare(self, rendered: RenderedKernel, function: str) -> _Launch:
        kernel = self.cl.Kernel(self.cl_program, function)
        var_args = []
        for position, param in enumerate(rendered.params):
            if param.kind == "buffer":
                kernel.set_arg(position, self.device_buffers[param.buffer_id])
            elif param.kind == "offset":
                kernel.set_arg(position, np.int32(self.element_offset[param.buffer_id]))
            else:
                kernel.set_arg(position, np.int32(0))
                var_args.append((position, param.var))
        return _Launch(kernel, (rendered.global_size,), (rendered.local_size,), var_args)

    # --- running ------------------------------------------------------------------------
    def run(self) -> None:
        cl = self.cl
        persistent = [b for b in self.program.buffers if b.kind == "persistent"]
        for b in persistent:
            if b.nbytes:
                cl.enqueue_copy(self.queue, self.device_buffers[b.id],
                                np.ascontiguousarray(b.var.value, dtype=b.dtype), is_blocking=False)
        self.values: dict[Var, int] = {self.program.run_counter: self.runs}
        self.iterations: list[int] = []
        self.pending: list[tuple[list, list[np.ndarray], ReceiveCmd, tuple[int, ...]]] = []
        self.error: BaseException | None = None
        try:
            self._run_commands(self.program.commands)
            self.queue.finish()
            self._deliver(wait=True)
        finally:
            self.queue.finish()
            for b in persistent:
                if b.nbytes:
                    host = np.empty(b.shape, b.dtype)
                    cl.enqueue_copy(self.queue, host, self.device_buffers[b.id], is_blocking=True)
                    b.var.value = host
            self.runs += 1
        if self.error is not None:
            raise self.error

    def _run_commands(self, commands) -> None:
        cl = self.cl
        for cmd in commands:
            if self.error is not None:
                return
            if isinstance(cmd, KernelCmd):
                launch = self.launch_of[id(cmd.kernel)]
                for position, var in launch.var_args:
                    launch.kernel.set_arg(position, np.int32(self.values[var]))
                cl.enqueue_nd_range_kernel(self.queue, launch.kernel, launch.global_size, launch.local_size)
                self.kernels_launched += 1
            elif isinstance(cmd, FeedCmd):
                b = cmd.buffer
                value = call_feeder(cmd.fn, cmd.name, b.shape, b.dtype, self.iterations)
                if b.nbytes:
                    cl.enqueue_copy(self.queue, self.device_buffers[b.id], np.ascontiguousarray(value),
                                    is_blocking=False)
            elif isinstance(cmd, ReceiveCmd):
                if receiver_due(cmd.every, self.iterations):
                    arrays, events = [], []
                    for b in cmd.buffers:
                        host = np.empty(b.shape, b.dtype)
                        if b.nbytes:
                            events.append(cl.enqueue_copy(self.queue, host, self.device_buffers[b.id],
                                                          src_offset=self.element_offset[b.id] * 4,
                                                          is_blocking=False))
                        arrays.append(host)
                    self.pending.append((events, arrays, cmd, tuple(self.iterations)))
                    self.queue.flush()
            elif isinstance(cmd, LoopCmd):
                self._run_loop(cmd)

    def _run_loop(self, loop: LoopCmd) -> None:
        self.iterations.append(0)
        marks: list[Any] = []
        try:
            for i in range(loop.count):
                self.iterations[-1] = i
                self.values[loop.variable] = i
                self._run_commands(loop.body)
                if self.error is not None:
                    return
                # keep the host at most MAX_ITERATIONS_AHEAD iterations ahead of the device
                marks.append(self.cl.enqueue_marker(self.queue))
                if len(marks) > MAX_ITERATIONS_AHEAD:
                    marks.pop(0).wait()
                self._deliver(wait=False)
        finally:
            self.iterations.pop()

    def _deliver(self, wait: bool) -> None:
        """Call back the Receivers whose data has arrived, in program order."""
        complete = self.cl.command_execution_status.COMPLETE
        while self.pending and self.error is None:
            events, arrays, cmd, iterations = self.pending[0]
            if not wait and any(e.command_execution_status != complete for e in events):
                return
            for e in events:
                e.wait()
            self.pending.pop(0)
            try:
                call_receiver(cmd.fn, cmd.name, arrays, iterations)
            except ReceiverError as err:
                self.error = err   # stop issuing work; raised once the queue has drained
