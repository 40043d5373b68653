"""The CUDA backend on CuPy: one NVRTC module, one arena, one stream, loop bodies as CUDA Graphs.

Code generation is `codegen.render_program` with the features CUDA's runtime has been
checked with on a GPU: tiled matrix products (`codegen/matmul_cuda.py`, the tile sized to
the device's multiprocessors) and work-group reductions (`codegen/group_reduce.py`);
megakernels and float vectors are OpenCL's only (TODO.md). Every kernel launches with the
geometry its renderer gives. The run loop is `base.DeviceExecutor`'s.

Every distinct kernel source is compiled once, all in one module (CuPy caches
the binary on disk). Temporaries live in one arena allocation and each kernel
gets a typed pointer to it plus an element offset, as on OpenCL; persistent
tensors and Feeder staging are CuPy arrays of their own. Launch arguments are
prepared at compile time; kernels go to one non-blocking stream in order.

Loops: the body of an `ir_for` is cut at its host steps (Feeders, Receivers,
collectives, and nested loops holding one: they call back into Python, which a graph
cannot do), and each stretch of launches between them is captured once as a CUDA
Graph and replayed every iteration, one launch instead of one per kernel, when no
kernel in it reads the loop's own index: a kernel argument is baked into the graph,
and the renderer passes loop indices as arguments. Loop variables of enclosing loops
and the run counter may be read: the graph is captured again whenever their values
differ from those it was captured with. Other stretches launch kernel by kernel, as
do loops of one iteration and every loop with the `cuda_graphs` switch off.

Feeders are called in program order on a background thread ahead of the host
(host.Feeds) and copied without blocking from pinned staging buffers (a staging
buffer is refilled only once its last copy has finished). Receivers copy without blocking into pinned memory and are
called back in program order once the copy's event has completed; a callback
that raises stops the run after the stream drains, and the persistent tensors
keep the values computed so far.

Collectives (data parallelism) run through NCCL on a stream of their own, on device memory
(`cuda_nccl.py`), when CuPy has NCCL and the "nccl" switch is on; otherwise, as on OpenCL,
through the host: read back, MPI on the communication thread, written back. Under mpiexec
each process takes the GPU of its local rank (`comm.local_rank()`, modulo the GPUs it sees)
unless AUTODIFF_CUDA_DEVICE names one.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import comm
from ..alloc.plan import MemoryPlan
from ..codegen.build import build_kernels
from ..codegen.matmul_cuda import cuda_tile
from ..codegen.program import render_program
from ..codegen.renderer import CUDALanguage, RenderedKernel
from ..errors import DeviceMemoryError
from ..ir.dtypes import ITEMSIZE
from ..proc.index import Var
from ..proc.ir import Buffer, CollectiveStartCmd, CollectiveWaitCmd, FeedCmd, LoopCmd, ProcProgram
from .base import DeviceExecutor, Step, feeds_ahead_for, prepare_steps
from .cuda_nccl import NcclCollectives, nccl_module
from .registry import Backend, register

MAX_GRAPH_LAUNCHES = 20_000  # a body that unrolls into more launches (nested loops) is not captured whole
FEED_SLOTS = 4               # pinned staging buffers per Feeder, used in turn
NVRTC_OPTIONS = ("--std=c++14",)

INSTALL_HINT = ("CUDA needs CuPy and an NVIDIA GPU: pip install -e \".[cuda]\" (cupy-cuda12x with the CUDA "
                "libraries from PyPI); or run with device='opencl' or device='numpy'")


def _cupy():
    try:
        import cupy
    except ImportError as err:
        raise RuntimeError(INSTALL_HINT) from err
    return cupy


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one GPU; never raises."""
    try:
        return _cupy().cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def build_module(cp, language: CUDALanguage, rendered: list[RenderedKernel]) -> tuple[Any, list[str], str]:
    """(the compiled module, each kernel's function name, the module source)."""
    def build(source: str):
        module = cp.RawModule(code=source, options=NVRTC_OPTIONS)
        module.compile()
        return module

    return build_kernels(language, rendered, build, cp.cuda.compiler.CompileException, "NVRTC")


@dataclass
class _Launch:
    function: Any                        # cupy.RawKernel
    grid: tuple[int, ...]
    block: tuple[int, ...]
    args: tuple                          # prepared arguments; loop variables replaced at each launch
    var_args: list[tuple[int, Var]]      # (argument index, loop variable)
    empty: bool                          # a zero-size output: nothing to compute


@dataclass
class _GraphPlan:
    """Whether a loop body replays as a CUDA Graph, and what its graph depends on."""
    replayable: bool
    outside: tuple[Var, ...] = ()        # variables the body reads that are fixed while the loop runs
    launches: int = 0                    # kernels one iteration launches
    key: tuple | None = None             # the values of `outside` the graph was captured with
    graph: Any = None


@dataclass
class _FeedSlots:
    hosts: list[np.ndarray]
    events: list[Any]                    # the copy that last read each staging buffer
    next: int = 0


class CUDAExecutor(DeviceExecutor):
    language = CUDALanguage()
    features: frozenset[str] = frozenset({"tiled_matmul", "group_reduce"})   # codegen features checked on a GPU

    def __init__(self, program: ProcProgram, plan: MemoryPlan, disable: frozenset[str] = frozenset(),
                 device_id: int | None = None) -> None:
        cp = _cupy()
        self.feeds_ahead = feeds_ahead_for(program.commands, disable)
        self.keep_values_on_device(program.commands, disable)
        self.overlap_collectives = "collective_overlap" not in disable
        self.graphs = "cuda_graphs" not in disable   # loop bodies' stretches of launches replayed as graphs
        self.cp = cp
        self.program = program
        self.plan = plan
        if device_id is None:
            device_id = default_device(cp)
        self.device = cp.cuda.Device(device_id)
        self.device.use()
        self.device_name = _device_name(cp, device_id)
        self._check_memory()
        start = time.perf_counter()
        multiprocessors = _device_property(cp, device_id, "multiProcessorCount", 1)
        self.rendered_program = render_program(program, self.language, self.features - disable,
                                               tilings=lambda shape: cuda_tile(shape, multiprocessors))
        self.module, self.function_names, self.source = build_module(cp, self.language,
                                                                     self.rendered_program.rendered)
        self.build_seconds = time.perf_counter() - start
        self.stream = cp.cuda.Stream(non_blocking=True)
        self._allocate()
        self.nccl = self._nccl(program, disable, device_id)
        if self.nccl is not None:
            self.nccl.allocate(self.device_buffers, self.element_offset)
        functions = {name: self.module.get_function(name) for name in dict.fromkeys(self.function_names)}
        self.launch_of: dict[int, _Launch] = {}
        for (kernel, rendered), name in zip(self.rendered_program.singles, self.function_names):
            self.launch_of[id(kernel)] = self._prepare(kernel, rendered, functions[name])
        self.steps = prepare_steps(program.commands, lambda cmd: self.launch_of[id(cmd.kernel)])
        self.graph_plans: dict[int, list[tuple[list[Step], _GraphPlan]]] = {}   # a loop body's pieces
        self.feed_slots: dict[int, _FeedSlots] = {}
        self.capturing = False
        self.graph_launches = 0

    # --- setup ------------------------------------------------------------------------
    def _check_memory(self) -> None:
        needed = self.plan.arena_bytes + self.plan.persistent_bytes + self.plan.feed_bytes
        free, total = self.device.mem_info
        if needed > total:
            raise DeviceMemoryError(f"the program needs {needed} bytes of device memory (arena "
                                    f"{self.plan.arena_bytes}, persistent {self.plan.persistent_bytes}, feed "
                                    f"{self.plan.feed_bytes}); {self.device_name} has {total} ({free} free)")

    def _allocate(self) -> None:
        cp = self.cp
        try:
            self.arena = cp.empty(max((self.plan.arena_bytes + 255) // 256 * 256, 256), dtype=cp.uint8)
            views = {"float32": self.arena.view(cp.float32), "int32": self.arena.view(cp.int32)}
            self.device_buffers: dict[int, Any] = {}
            self.element_offset: dict[int, int] = {}
            for b in self.program.buffers:
                if b.kind == "temp":
                    self.device_buffers[b.id] = views[b.dtype]
                    self.element_offset[b.id] = self.plan.offsets.get(b.id, 0) // ITEMSIZE
                else:
                    self.device_buffers[b.id] = cp.empty(max(b.size, 1), dtype=b.dtype)
                    self.element_offset[b.id] = 0
        except cp.cuda.memory.OutOfMemoryError as err:
            raise DeviceMemoryError(f"allocating the program's device memory failed on {self.device_name}: "
                                    f"{err}") from None

    def _nccl(self, program: ProcProgram, disable: frozenset[str], device_id: int) -> NcclCollectives | None:
        """NCCL for the program's collectives; None without any, with the "nccl" switch off, or
        when CuPy has no NCCL (the host path)."""
        if not any(isinstance(cmd, CollectiveStartCmd) for cmd in program.walk()):
            return None
        if "nccl" in disable:
            return None
        nccl = nccl_module(self.cp)
        return None if nccl is None else NcclCollectives(self.cp, nccl, device_id, program)

    def _prepare(self, kernel, rendered: RenderedKernel, function: Any) -> _Launch:
        args: list[Any] = []
        var_args = []
        for position, param in enumerate(rendered.params):
            if param.kind == "buffer":
                args.append(self.device_buffers[param.buffer_id])
            elif param.kind == "offset":
                args.append(np.int32(self.element_offset[param.buffer_id] + param.extra))
            elif param.kind == "offset64":
                args.append(np.int64(self.element_offset[param.buffer_id] + param.extra))
            elif param.kind == "constant":
                args.append(np.float32(param.value))
            elif param.kind == "var":
                args.append(np.int32(0))
                var_args.append((position, param.var))
            else:
                raise AssertionError(f"the CUDA runtime cannot bind a '{param.kind}' argument")
        # the renderer's geometry, in OpenCL's terms (threads in all, threads per block): an
        # elementwise kernel returns early past its last element, a work-group reduction is a
        # block per output, a tiled product a block per tile
        threads, block = rendered.sizes()
        grid = tuple(max(g, b) // b for g, b in zip(threads, block))
        return _Launch(function, grid, block, tuple(args), var_args, empty=kernel.out.size == 0)

    def _pointer(self, b: Buffer) -> int:
        return self.device_buffers[b.id].data.ptr + self.element_offset[b.id] * ITEMSIZE

    def _pinned(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        """A host array in page-locked memory, so copies from and to it run without blocking."""
        count = int(np.prod(shape, dtype=np.int64))
        memory = self.cp.cuda.alloc_pinned_memory(max(count, 1) * ITEMSIZE)
        return np.frombuffer(memory, dtype, count).reshape(shape)

    def _copy(self, destination: int, source: int, nbytes: int, to_device: bool) -> None:
        runtime = self.cp.cuda.runtime
        kind = runtime.memcpyHostToDevice if to_device else runtime.memcpyDeviceToHost
        runtime.memcpyAsync(destination, source, nbytes, kind, self.stream.ptr)

    # --- device operations (base.DeviceExecutor) ---------------------------------------
    def run(self) -> None:
        self.device.use()
        self.uploads: list[np.ndarray] = []   # kept alive until the stream has read them
        with self.stream:
            super().run()

    def upload(self, buffer: Buffer, host: np.ndarray) -> None:
        self.uploads.append(host)
        self._copy(self._pointer(buffer), host.ctypes.data, buffer.nbytes, to_device=True)

    def download(self, buffer: Buffer) -> np.ndarray:
        host = np.empty(buffer.shape, buffer.dtype)
        self._copy(host.ctypes.data, self._pointer(buffer), buffer.nbytes, to_device=False)
        self.stream.synchronize()
        return host

    def launch(self, launch: _Launch, values: dict[Var, int]) -> None:
        if launch.empty:
            return
        args = launch.args
        if launch.var_args:
            args = list(args)
            for position, var in launch.var_args:
                args[position] = np.int32(values[var])
            args = tuple(args)
        launch.function(launch.grid, launch.block, args)   # on the current stream: self.stream
        self.kernels_launched += 1

    def feed(self, cmd: FeedCmd, value: np.ndarray) -> None:
        b = cmd.buffer
        slots = self.feed_slots.get(id(cmd))
        if slots is None:
            slots = _FeedSlots([self._pinned(b.shape, b.dtype) for _ in range(FEED_SLOTS)], [None] * FEED_SLOTS)
            self.feed_slots[id(cmd)] = slots
        n = slots.next
        slots.next = (n + 1) % FEED_SLOTS
        if slots.events[n] is not None:
            slots.events[n].synchronize()   # its previous copy has left the staging buffer
        np.copyto(slots.hosts[n], value)
        self._copy(self._pointer(b), slots.hosts[n].ctypes.data, b.nbytes, to_device=True)
        slots.events[n] = self.stream.record()

    def write(self, buffer: Buffer, host: np.ndarray) -> None:
        """Through pinned memory kept until the queue drains (the host path of collectives)."""
        pinned = self._pinned(buffer.shape, buffer.dtype)
        np.copyto(pinned, host)
        self._copy(self._pointer(buffer), pinned.ctypes.data, buffer.nbytes, to_device=True)
        self.uploads.append(pinned)

    def read_back(self, buffers: list[Buffer]):
        pinned = []
        for b in buffers:
            host = self._pinned(b.shape, b.dtype)
            if b.nbytes:
                self._copy(host.ctypes.data, self._pointer(b), b.nbytes, to_device=False)
            pinned.append(host)
        event = self.stream.record()
        arrays = [np.empty(b.shape, b.dtype) for b in buffers]

        def wait() -> None:   # pinned staging is reused: the callback gets copies
            event.synchronize()
            for array, host in zip(arrays, pinned):
                np.copyto(array, host)
        return arrays, lambda: event.done, wait

    def start_collective(self, cmd: CollectiveStartCmd) -> None:
        if self.nccl is None:
            super().start_collective(cmd)
        else:
            self.nccl.start(self, cmd.collective)

    def wait_collective(self, cmd: CollectiveWaitCmd) -> None:
        if self.nccl is None:
            super().wait_collective(cmd)
        else:
            self.nccl.wait(self, cmd.collective)

    def mark(self) -> Any:
        return self.stream.record()

    def wait(self, marker: Any) -> None:
        if self.nccl is not None:   # it may sit behind NCCL calls: bounded by the timeout
            self.nccl.block_until(marker, "a loop iteration")
        marker.synchronize()

    def finish(self) -> None:
        if self.nccl is not None:   # a run stopped between a start and its wait leaves NCCL work
            self.nccl.block_until(self.nccl.stream.record(), "the communication stream")
            self.nccl.block_until(self.stream.record(), "the compute stream")
        self.stream.synchronize()

    def release_all(self) -> None:
        self.uploads = []

    def marks_enabled(self) -> bool:
        return not self.capturing   # a nested loop being recorded: nothing runs yet

    def run_iteration(self, loop: LoopCmd, body: list[Step]) -> None:
        if self.capturing or loop.count < 2 or not self.graphs:
            self.run_steps(body)
            return
        for steps, plan in self._body_plan(loop, body):
            if plan.replayable:
                self._replay(steps, plan)
            else:
                self.run_steps(steps)

    # --- profiling (autodiff/profiler.py): on the instance, for one run only ----------------
    def start_profile(self, recorder: Any) -> None:
        """Events before and after each launch; loop bodies launch kernel by kernel (a replayed
        CUDA Graph would be one span for the whole body)."""
        self.stream.synchronize()
        self.profile_origin = self.stream.record()
        self.profile_origin.synchronize()
        self.profile_host_origin = time.perf_counter()
        self.profiled: list[tuple[str, tuple, Any, Any]] = []   # (name, kernels, start event, end event)
        kernels = {id(self.launch_of[id(k)]): (name, (k,))
                   for (k, _), name in zip(self.rendered_program.singles, self.function_names)}

        def launch(prepared: _Launch, values: dict[Var, int]) -> None:
            if prepared.empty:
                return
            start = self.stream.record()
            CUDAExecutor.launch(self, prepared, values)
            self.profiled.append(kernels[id(prepared)] + (start, self.stream.record()))

        def run_iteration(loop: LoopCmd, body: list[Step]) -> None:
            self.run_steps(body)
        self.launch, self.run_iteration = launch, run_iteration

    def stop_profile(self, recorder: Any) -> None:
        self.stream.synchronize()
        self.__dict__.pop("launch", None)
        self.__dict__.pop("run_iteration", None)
        elapsed = self.cp.cuda.get_elapsed_time   # milliseconds between two completed events
        track = f"CUDA stream ({self.device_name})"
        for name, kernels, start, end in self.profiled:
            at = self.profile_host_origin + elapsed(self.profile_origin, start) * 1e-3
            recorder.kernel(name, kernels, at, at + elapsed(start, end) * 1e-3, track)
        self.profiled = []

    # --- CUDA Graphs ----------------------------------------------------------------------
    def _body_plan(self, loop: LoopCmd, body: list[Step]) -> list[tuple[list[Step], _GraphPlan]]:
        """The body cut at its host steps (Feeders, Receivers, collectives, loops holding one)
        and at the launches that read the loop's own index: each stretch of launches between
        them is captured and replayed as a graph of its own, the others run as they come.
        Made once per loop."""
        pieces = self.graph_plans.get(id(loop))
        if pieces is None:
            pieces, stretch = [], []
            for step in body + [None]:   # None closes the last stretch
                if step is None or _holds_host_steps([step]) or _reads([step], loop.variable):
                    if stretch:
                        pieces.append((stretch, self._plan_stretch(loop, stretch)))
                        stretch = []
                    if step is not None:
                        pieces.append(([step], _GraphPlan(False)))
                else:
                    stretch.append(step)
            self.graph_plans[id(loop)] = pieces
        return pieces

    def _plan_stretch(self, loop: LoopCmd, steps: list[Step]) -> _GraphPlan:
        """Walk a stretch of launches (nested loops of launches too) once: the variables its
        kernels read, its launches. Not replayable where it unrolls into too many launches."""
        inside: list[Var] = []
        used: list[Var] = []
        launches = 0
        stack: list[tuple[list[Step], int]] = [(steps, 1)]
        while stack:
            current, repeat = stack.pop()
            for step in current:
                if step[0] == "loop":
                    inside.append(step[1].variable)
                    stack.append((step[2], repeat * step[1].count))
                else:
                    launch = step[1]
                    launches += 0 if launch.empty else repeat
                    used += [var for _, var in launch.var_args if var not in used]
        if launches > MAX_GRAPH_LAUNCHES:   # (a launch reading the loop's index cut the stretch already)
            return _GraphPlan(False)
        outside = tuple(v for v in used if v not in inside)
        return _GraphPlan(True, outside, launches)

    def _replay(self, body: list[Step], plan: _GraphPlan) -> None:
        key = tuple(self.values[v] for v in plan.outside)
        if plan.graph is None or plan.key != key:
            plan.graph, plan.key = self._capture(body), key
        plan.graph.launch(stream=self.stream)
        self.kernels_launched += plan.launches
        self.graph_launches += 1

    def _capture(self, body: list[Step]) -> Any:
        """The body's launches recorded (not run) as one CUDA Graph."""
        launched = self.kernels_launched
        self.stream.begin_capture()
        self.capturing = True
        try:
            self.run_steps(body)
        except BaseException:
            self.capturing = False
            try:
                self.stream.end_capture()
            except Exception:
                pass   # the capture is abandoned; the first error is the one to report
            raise
        self.capturing = False
        self.kernels_launched = launched
        return self.stream.end_capture()


HOST_STEPS = ("feed", "receive", "collective_start", "collective_wait")


def _holds_host_steps(steps: list[Step]) -> bool:
    """Whether any of `steps`, nested loops' bodies included, calls back into the host."""
    stack = [steps]
    while stack:
        for step in stack.pop():
            if step[0] in HOST_STEPS:
                return True
            if step[0] == "loop":
                stack.append(step[2])
    return False


def _reads(steps: list[Step], var: Var) -> bool:
    """Whether a launch among `steps`, nested loops' bodies included, takes `var` as an argument."""
    stack = [steps]
    while stack:
        for step in stack.pop():
            if step[0] == "loop":
                stack.append(step[2])
            elif step[0] == "launch" and any(v == var for _, v in step[1].var_args):
                return True
    return False


def default_device(cp) -> int:
    """AUTODIFF_CUDA_DEVICE, else under mpiexec the local rank (one process per GPU), else 0."""
    if "AUTODIFF_CUDA_DEVICE" in os.environ:
        return int(os.environ["AUTODIFF_CUDA_DEVICE"])
    if not comm.is_distributed():
        return 0
    return comm.local_rank() % max(cp.cuda.runtime.getDeviceCount(), 1)


def _problem() -> str | None:
    return None if cuda_available() else INSTALL_HINT


register(Backend(
    name="cuda", executor=lambda ir, plan, disable: CUDAExecutor(ir, plan, disable), takes_proc=True,
    problem=_problem, preference=10, language="cuda", features=tuple(sorted(CUDAExecutor.features)),
    switches=("feeder_thread", "device_resident", "collective_overlap", "nccl", "cuda_graphs"),
    description="CUDA C kernels through CuPy/NVRTC on an NVIDIA GPU"))


def _device_name(cp, device_id: int) -> str:
    name = _device_property(cp, device_id, "name", f"CUDA device {device_id}")
    return name.decode() if isinstance(name, bytes) else str(name)


def _device_property(cp, device_id: int, key: str, default: Any) -> Any:
    try:
        return cp.cuda.runtime.getDeviceProperties(device_id)[key]
    except Exception:
        return default
