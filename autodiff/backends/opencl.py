"""The OpenCL backend: compile, allocate one arena, launch prepared kernels.

Code generation (`codegen.render_program`) gives every kernel's source; this module builds
them all as one program (kernels that differ only in their buffers share a source), puts
temporaries in one arena at their planned offsets and persistent tensors and Feeder staging
side by side in one "state" buffer, and prepares one kernel object per launch with its
arguments set once (inside a loop only the kernels that read the loop index get that
argument set again). Megakernels read their offsets and float constants from two tables.
The run loop (Feeders ahead on a thread, Receivers in order, errors after the queue
drains, persistent tensors kept) is `base.DeviceExecutor`'s; here are its device operations.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..alloc.plan import MemoryPlan
from ..codegen.build import unique_kernels
from ..codegen.matmul_source import BUILD_OPTIONS
from ..codegen.program import FEATURES, IteratedLoop, RenderedProgram, render_program
from ..codegen.renderer import LOCAL_SIZE, OpenCLLanguage, RenderedKernel
from ..errors import DeviceMemoryError
from ..ir.dtypes import ITEMSIZE
from ..proc.index import Var
from ..proc.ir import Buffer, FeedCmd, KernelCmd, ProcProgram
from .base import DeviceExecutor, IterationBatch, feeds_ahead_for, prepare_steps
from . import kernel_cache
from .opencl_build import BuildProgress, WarmLaunch, build_groups, device_identity, quiet, store_pending
from .registry import Backend, register
from .tuning import Tuner, tune_level

# PoCL generates generic (slow) code unless told the CPU; measured ~7x slower without it
os.environ.setdefault("POCL_CPU_TARGET", "native")

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
    (checked once per process: a platform can list a device its compiler cannot target).
    A device that built it once is remembered in the kernel cache: the probe is a cold
    PoCL build, ~0.5 s of every start otherwise."""
    key = device.int_ptr
    if key not in _build_errors:
        cl = _cl()
        remembered = kernel_cache.entry_key("probe", _PROBE_SOURCE, *device_identity(device, ""))
        if kernel_cache.load(remembered) == b"builds":
            _build_errors[key] = None
            return None
        try:
            with quiet([]):
                cl.Program(cl.Context([device]), _PROBE_SOURCE).build()
            _build_errors[key] = None
            kernel_cache.store(remembered, b"builds")
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


_profiling_queues: dict[int, Any] = {}


def _profiling_queue(context, device):
    """A second in-order queue of the device's context, with profiling events: only profiled
    runs use it, so the default queue stays as it was (PoCL times each command on it)."""
    cl = _cl()
    key = device.int_ptr
    if key not in _profiling_queues:
        _profiling_queues[key] = cl.CommandQueue(context, properties=cl.command_queue_properties.PROFILING_ENABLE)
    return _profiling_queues[key]


def _build_from_source(context):
    cl = _cl()

    def build(source: str):
        try:
            return cl.Program(context, source).build(options=BUILD_OPTIONS)
        except cl.RuntimeError:
            # PoCL's on-disk kernel cache is shared by processes; a build that raced another
            # process writing the same entry fails once with an empty log: build again
            return cl.Program(context, source).build(options=BUILD_OPTIONS)
    return build


@dataclass
class _Launch:
    kernel: Any
    global_size: tuple[int]
    local_size: tuple[int]
    var_args: list[tuple[int, Var]]     # (argument index, loop variable) set at each launch


class OpenCLExecutor(DeviceExecutor):

    def __init__(self, program: ProcProgram, plan: MemoryPlan, disable: frozenset[str] = frozenset(),
                 device_name: str | None = None, group_reductions: bool | None = None) -> None:
        """`group_reductions`: a work-group per output of a long reduction; by default on GPU
        devices only (no gain measured on PoCL, where a work-group is one core); True forces it."""
        cl = _cl()
        self.cl = cl
        self.program = program
        self.plan = plan
        self.device = choose_device(device_name)
        self.context, self.queue = _context_and_queue(self.device)
        cpu = bool(self.device.type & cl.device_type.CPU)
        self.language = OpenCLLanguage(
            self.device.native_vector_width_float,
            self.device.max_compute_units if cpu and "small_work_groups" not in disable else None,
            1 if cpu and "single_item_megakernels" not in disable else LOCAL_SIZE)
        self._check_memory()
        start = time.perf_counter()
        self._place_buffers()
        features = frozenset(f for f in FEATURES if f not in disable)
        if group_reductions is None:
            group_reductions = bool(self.device.type & cl.device_type.GPU)
        if not group_reductions:
            features -= {"group_reduce"}
        self.feeds_ahead = feeds_ahead_for(program.commands, disable)
        self.keep_values_on_device(program.commands, disable)
        self.overlap_collectives = "collective_overlap" not in disable
        self.tuner = Tuner(self.context, self.queue, "\n".join(device_identity(self.device, BUILD_OPTIONS)),
                           self.device.native_vector_width_float, tune_level(disable))
        self.rendered_program: RenderedProgram = render_program(program, self.language, features,
                                                                lambda b: self._place(b)[0], self.tuner.choose)
        self._place_tables()
        if self.feeds_ahead:   # the feeder thread holds a launch's Feeder values twice over
            self.feeds_ahead = max([self.feeds_ahead] + [2 * i.per_launch * len(i.spec.feeds) for i in self.iterated])
        singles = self.rendered_program.singles
        names, distinct = unique_kernels(self.rendered_program.rendered)
        # (rendered kernel, its function, its table bases) of every launch, singles then megakernels
        megas = len(self.mega_rendered)
        kernels = ([(r, fn, (0, 0)) for (_, r), fn in zip(singles, names)]
                   + list(zip(self.mega_rendered + [i.rendered for i in self.iterated],
                              names[len(singles):], self.table_bases)))
        # A loop whose body is an iterated megakernel always runs through it, so the body's
        # plain megakernel is never launched: it is rendered (export writes it) but not built,
        # which halved the cold build of the reference at L = 1 (the two carry the same stages).
        unlaunched = {len(singles) + i.megakernel for i in self.iterated}
        needed = {fn for n, (_, fn, _) in enumerate(kernels) if n not in unlaunched}
        distinct = [(fn, source) for fn, source in distinct if fn in needed]
        self.build_seconds = {"render": time.perf_counter() - start}
        with BuildProgress() as progress:
            self.built = build_groups(self.context, self.device, self.language, distinct,
                                      {fn: self._warm_launch(r, fn, bases) for r, fn, bases in kernels if fn in needed},
                                      BUILD_OPTIONS, use_cache="kernel_cache" not in disable,
                                      parallel="parallel_build" not in disable, build=_build_from_source(self.context),
                                      failure=cl.RuntimeError, progress=progress)
        self.source = self.built.source
        self.build_seconds.update(self.built.seconds)
        prepared = [self._prepare(r, fn, bases) if fn in needed else None for r, fn, bases in kernels]
        self.launch_of: dict[int, _Launch] = {id(k): launch for (k, _), launch in zip(singles, prepared)}
        self.mega_launches = prepared[len(singles):len(singles) + megas]
        mega_of = self.rendered_program.megakernel_of()

        def launch_for(cmd: KernelCmd) -> _Launch:
            mega = mega_of.get(id(cmd))
            return self.launch_of[id(cmd.kernel)] if mega is None else self.mega_launches[mega]
        self.iterated_launches = prepared[len(singles) + megas:]
        batches = {id(i.loop): IterationBatch(launch, i.per_launch, i.spec.count, i.spec.in_words, i.spec.out_words,
                                              self.rings[i.rendered.name])
                   for i, launch in zip(self.iterated, self.iterated_launches)}
        self.steps = prepare_steps(program.commands, launch_for, batches)
        at = time.perf_counter()
        self._warm_up()
        self.build_seconds["first launches"] = time.perf_counter() - at
        # a non-blocking copy's event waits for the copy when it is dropped (pyopencl keeps the
        # host array alive that way): Feeder copies are kept until a marker after them is done
        self.feed_copies: list[Any] = []
        self.held: list[tuple[Any, list[Any]]] = []   # (marker, the Feeder copies before it)

    @property
    def rendered(self) -> list[RenderedKernel]:
        """The kernels launched one by one."""
        return [r for _, r in self.rendered_program.singles]

    @property
    def mega_rendered(self) -> list[RenderedKernel]:
        return [r for _, r in self.rendered_program.megakernels]

    @property
    def iterated(self) -> list[IteratedLoop]:
        return self.rendered_program.iterated

    # --- setup ------------------------------------------------------------------------
    def _check_memory(self) -> None:
        needed = self.plan.arena_bytes + self.plan.persistent_bytes + self.plan.feed_bytes
        available = self.device.global_mem_size
        if needed > available:
            raise DeviceMemoryError(f"the program needs {needed} bytes of device memory (arena "
                                    f"{self.plan.arena_bytes}, persistent {self.plan.persistent_bytes}, feed "
                                    f"{self.plan.feed_bytes}); {self.device.name} has {available}")
        # one allocation may not exceed CL_DEVICE_MAX_MEM_ALLOC_SIZE (often a quarter of the
        # memory; 2 GiB on some PoCL builds), whatever the total
        largest = self.device.max_mem_alloc_size
        for what, size in (("arena", self.plan.arena_bytes),
                           ("persistent tensors and Feeder staging", self.plan.persistent_bytes + self.plan.feed_bytes)):
            if size > largest:
                raise DeviceMemoryError(f"the program's {what} needs one allocation of {size} bytes; {self.device.name} "
                                        f"allows at most {largest} bytes per allocation (CL_DEVICE_MAX_MEM_ALLOC_SIZE)")

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
            return "state", self.state_offset[buffer_id] // ITEMSIZE
        return "arena", self.plan.offsets.get(buffer_id, 0) // ITEMSIZE

    def _device_buffer(self, buffer_id: int) -> Any:
        return self.arena if self._place(buffer_id)[0] == "arena" else self.state

    def _place_tables(self) -> None:
        """One int buffer with every megakernel launch's offset table, and one float buffer with
        their constants, each side by side."""
        offsets: list[int] = []
        constants: list[float] = []
        self.table_bases: list[tuple[int, int]] = []
        for rendered in self.mega_rendered + [i.rendered for i in self.iterated]:
            self.table_bases.append((len(offsets), len(constants)))
            offsets += [self._place(buffer_id)[1] for buffer_id in rendered.table]
            constants += rendered.constants
        flags = self.cl.mem_flags.READ_ONLY | self.cl.mem_flags.COPY_HOST_PTR
        self.table = self.cl.Buffer(self.context, flags, hostbuf=np.array(offsets or [0], dtype=np.int32))
        self.constant_table = self.cl.Buffer(self.context, flags,
                                             hostbuf=np.array(constants or [0.0], dtype=np.float32))
        # an iterated loop's Feeder and Receiver values, a slot per iteration of one launch
        mf = self.cl.mem_flags
        self.rings: dict[str, tuple[Any, Any]] = {
            i.rendered.name: tuple(self.cl.Buffer(self.context, mf.READ_WRITE, max(4, 4 * i.per_launch * words))
                                   for words in (i.spec.in_words, i.spec.out_words)) for i in self.iterated}

    def _arguments(self, rendered: RenderedKernel, table_bases: tuple[int, int]) -> list[Any]:
        """Each argument's value; a loop variable (set again at each launch) as its Var."""
        fixed: dict[str, Callable[[Any], Any]] = {
            "table": lambda p: self.table,
            "table_base": lambda p: np.int32(table_bases[0]),
            "constants": lambda p: self.constant_table,
            "constants_base": lambda p: np.int32(table_bases[1]),
            "constant": lambda p: np.float32(p.value),
            "arena": lambda p: self.arena,
            "state": lambda p: self.state,
            "buffer": lambda p: self._device_buffer(p.buffer_id),
            "ring_in": lambda p: self.rings[rendered.name][0],
            "ring_out": lambda p: self.rings[rendered.name][1],
            "offset": lambda p: np.int32(self._place(p.buffer_id)[1] + p.extra),
            "offset64": lambda p: np.int64(self._place(p.buffer_id)[1] + p.extra),
        }
        return [param.var if param.kind == "var" else fixed[param.kind](param) for param in rendered.params]


    def _warm_launch(self, rendered: RenderedKernel, function: str, table_bases: tuple[int, int]) -> WarmLaunch:
        """The kernel's first launch as a build worker makes it: zeroed buffers of the same sizes."""
        args = [np.int32(0) if isinstance(value, Var) else ("buffer", value.size)
                if isinstance(value, self.cl.Buffer) else value for value in self._arguments(rendered, table_bases)]
        return WarmLaunch(function, *rendered.sizes(), args)

    def _prepare(self, rendered: RenderedKernel, function: str, table_bases: tuple[int, int]) -> _Launch:
        kernel = self.cl.Kernel(self.built.programs[function], function)
        var_args = []
        for position, value in enumerate(self._arguments(rendered, table_bases)):
            if isinstance(value, Var):
                var_args.append((position, value))
                value = np.int32(0)
            kernel.set_arg(position, value)
        return _Launch(kernel, *rendered.sizes(), var_args)

    def _warm_up(self) -> None:
        """Launch each distinct kernel once on zeroed buffers: PoCL generates a kernel's code at
        its first launch, and that time belongs to compiling, not to the first training steps.
        (Zeros keep gather indices in range; the run uploads the real values first.)
        `first_launch_seconds[function]` is each one's time (the queue is in order, so waiting
        for each costs nothing): where a cold build's time goes, kernel by kernel."""
        rings = [ring for pair in self.rings.values() for ring in pair]
        for buffer in [self.arena, self.state] + rings:
            self.cl.enqueue_fill_buffer(self.queue, buffer, np.uint32(0), 0, buffer.size)
        self.queue.finish()
        self.first_launch_seconds: dict[str, float] = {}
        # an iterated megakernel runs one iteration at count 0 (a do-while), on zeros as the rest
        for launch in list(self.launch_of.values()) + self.mega_launches + self.iterated_launches:
            if launch is None:   # a plain megakernel never launched (its loop runs iterated)
                continue
            key = launch.kernel.function_name
            if key in self.first_launch_seconds:
                continue
            at = time.perf_counter()
            self.cl.enqueue_nd_range_kernel(self.queue, launch.kernel, launch.global_size, launch.local_size)
            self.queue.finish()
            self.first_launch_seconds[key] = time.perf_counter() - at

    # --- device operations (base.DeviceExecutor) ---------------------------------------
    # upload, launch and _copy_out return their OpenCL event: a profiled run keeps it
    def upload(self, buffer: Buffer, host: np.ndarray) -> Any:
        return self.cl.enqueue_copy(self.queue, self.state, host, dst_offset=self.state_offset[buffer.id],
                                    is_blocking=False)

    def download(self, buffer: Buffer) -> np.ndarray:
        return self._copy_out(buffer)[0]

    def download_all(self, buffers: list[Buffer]) -> list[np.ndarray]:
        """The copies enqueued together and waited for once: a blocking copy per tensor cost a
        round trip through PoCL's queue each (20 of them for an MLP with momentum)."""
        copies = [self._copy_out(b, blocking=False) for b in buffers]   # kept: a dropped event waits
        self.queue.finish()
        return [host for host, _ in copies]

    def _copy_out(self, buffer: Buffer, blocking: bool = True) -> tuple[np.ndarray, Any]:
        host = np.empty(buffer.shape, buffer.dtype)
        event = self.cl.enqueue_copy(self.queue, host, self.state, src_offset=self.state_offset[buffer.id],
                                     is_blocking=blocking)
        return host, event

    def launch(self, launch: _Launch, values: dict[Var, int]) -> Any:
        for position, var in launch.var_args:
            launch.kernel.set_arg(position, np.int32(values[var]))
        event = self.cl.enqueue_nd_range_kernel(self.queue, launch.kernel, launch.global_size, launch.local_size)
        self.kernels_launched += 1
        return event

    def feed(self, cmd: FeedCmd, value: np.ndarray) -> None:
        self.feed_copies.append(self.cl.enqueue_copy(self.queue, self.state, np.ascontiguousarray(value),
                                                     dst_offset=self.state_offset[cmd.buffer.id],
                                                     is_blocking=False))

    def feed_ring(self, batch: IterationBatch, values: list[np.ndarray]) -> None:
        if batch.in_words:
            host = np.concatenate([np.ascontiguousarray(v).view(np.uint32).ravel() for v in values])
            self.feed_copies.append(self.cl.enqueue_copy(self.queue, batch.rings[0], host,
                                                         is_blocking=False))

    def read_ring(self, batch: IterationBatch, count: int):
        host = np.empty(count * batch.out_words, np.uint32)
        events = []
        if host.size:
            events.append(self.cl.enqueue_copy(self.queue, host, batch.rings[1], is_blocking=False))
        return self._pending_copies(host, events)

    def write(self, buffer: Buffer, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host, dtype=buffer.dtype)   # its event keeps it alive
        self.feed_copies.append(self.cl.enqueue_copy(self.queue, self._device_buffer(buffer.id), host,
                                                     dst_offset=self._place(buffer.id)[1] * ITEMSIZE,
                                                     is_blocking=False))

    def read_back(self, buffers: list[Buffer]):
        arrays, events = [], []
        for b in buffers:
            host = np.empty(b.shape, b.dtype)
            if b.nbytes:
                events.append(self.cl.enqueue_copy(self.queue, host, self._device_buffer(b.id),
                                                   src_offset=self._place(b.id)[1] * ITEMSIZE, is_blocking=False))
            arrays.append(host)
        return self._pending_copies(arrays, events)

    def _pending_copies(self, host: Any, events: list[Any]):
        """(host, ready(), wait()) of copies to the host just enqueued."""
        self.queue.flush()
        complete = self.cl.command_execution_status.COMPLETE
        return (host, lambda: all(e.command_execution_status == complete for e in events),
                lambda: [e.wait() for e in events])

    def mark(self) -> Any:
        marker = self.cl.enqueue_marker(self.queue)
        self.held.append((marker, self.feed_copies))
        self.feed_copies = []
        return marker

    def wait(self, marker: Any) -> None:
        marker.wait()

    def release_marked(self, marker: Any) -> None:
        while self.held:   # in-order queue: every copy before a finished marker is done
            if self.held.pop(0)[0] is marker:
                break

    def release_all(self) -> None:
        self.held.clear()
        self.feed_copies.clear()

    def finish(self) -> None:
        self.queue.finish()

    # --- profiling (autodiff/profiler.py): on the instance, for one run only ----------------
    def start_profile(self, recorder: Any) -> None:
        """The run goes to a profiling queue; each launch and copy (uploads, Feeders, downloads)
        keeps its event."""
        self.finish()
        self.plain_queue, self.queue = self.queue, _profiling_queue(self.context, self.device)
        self.profiled: list[tuple[str, tuple, Any, float]] = []   # (name, kernels, event, host time at enqueue)
        kernels = {id(launch): (launch.kernel.function_name, (kernel,))
                   for kernel, launch in ((k, self.launch_of[id(k)]) for k, _ in self.rendered_program.singles)}
        for launch, (group, _) in zip(self.mega_launches, self.rendered_program.megakernels):
            if launch is not None:
                kernels[id(launch)] = (launch.kernel.function_name, tuple(cmd.kernel for cmd in group))
        for launch, iterated in zip(self.iterated_launches, self.iterated):
            group = self.rendered_program.megakernels[iterated.megakernel][0]
            kernels[id(launch)] = (launch.kernel.function_name, tuple(cmd.kernel for cmd in group))

        def launch(prepared: _Launch, values: dict[Var, int]) -> None:
            at = time.perf_counter()
            self.profiled.append(kernels[id(prepared)] + (OpenCLExecutor.launch(self, prepared, values), at))

        def feed(cmd: FeedCmd, value: np.ndarray) -> None:
            at = time.perf_counter()
            OpenCLExecutor.feed(self, cmd, value)
            self.profiled.append((f"copy Feeder {cmd.name}", (), self.feed_copies[-1], at))

        def feed_ring(batch: IterationBatch, values: list[np.ndarray]) -> None:
            at, copies = time.perf_counter(), len(self.feed_copies)
            OpenCLExecutor.feed_ring(self, batch, values)
            if len(self.feed_copies) > copies:
                self.profiled.append((f"copy Feeders x{len(values)}", (), self.feed_copies[-1], at))

        def upload(buffer: Buffer, host: np.ndarray) -> None:
            at = time.perf_counter()
            self.profiled.append((f"upload {buffer.name}", (), OpenCLExecutor.upload(self, buffer, host), at))

        def download(buffer: Buffer) -> np.ndarray:
            at = time.perf_counter()
            host, event = self._copy_out(buffer)
            self.profiled.append((f"download {buffer.name}", (), event, at))
            return host
        self.launch, self.feed, self.upload, self.download = launch, feed, upload, download
        self.feed_ring = feed_ring
        self.download_all = lambda buffers: [download(b) for b in buffers]   # each download's event kept

    def stop_profile(self, recorder: Any) -> None:
        """Every event's device times, moved onto the host clock: a command is queued after the
        host's enqueue call began, so the largest (host time - queued time) is the offset."""
        self.finish()
        self.queue = self.plain_queue
        for name in ("launch", "feed", "feed_ring", "upload", "download", "download_all"):
            self.__dict__.pop(name, None)
        times = [(name, kernels, e.profile.queued, e.profile.start, e.profile.end, at)
                 for name, kernels, e, at in self.profiled]
        self.profiled = []
        if not times:
            return
        offset = max(at - queued * 1e-9 for _, _, queued, _, _, at in times)
        track = f"OpenCL queue ({self.device.name.strip()})"
        for name, kernels, _, start, end, _ in times:
            if kernels:
                recorder.kernel(name, kernels, start * 1e-9 + offset, end * 1e-9 + offset, track)
            else:
                recorder.span(name, "copy", track, start * 1e-9 + offset, end * 1e-9 + offset)

    def run(self) -> None:
        try:
            super().run()
        finally:
            store_pending()   # binaries built for this program go to the kernel cache now


def _problem() -> str | None:
    return opencl_problem()


register(Backend(
    name="opencl", executor=lambda ir, plan, disable: OpenCLExecutor(ir, plan, disable), takes_proc=True,
    problem=_problem, preference=20, language="opencl", features=FEATURES,
    switches=("feeder_thread", "device_resident", "kernel_cache", "parallel_build", "collective_overlap", "autotune",
              "small_work_groups", "single_item_megakernels"),
    description="OpenCL C kernels on any OpenCL device (PoCL runs them on the CPU)",
    untransposed_b=True))
