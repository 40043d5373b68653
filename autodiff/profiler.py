"""The profiler: where the time of a run goes, per kernel launch and per host callback.

`execute(profile=True)`, `compile(...).run(profile=True)` or AUTODIFF_PROFILE=1 run the
program with a `Recorder`; the run's `Report.profile` is the `Profile` it made:

- device spans, one per kernel launch: OpenCL profiling events (the run uses a queue made
  with PROFILING_ENABLE; its copies, uploads, Feeder values and downloads, are spans of
  that queue too), CUDA events around each launch (loop bodies then launch kernel by
  kernel instead of as CUDA Graphs, so that each launch has its own events), host clock
  spans per kernel on numpy-proc and per graph node on numpy;
- host spans: each Feeder call (on the feeder thread's track where a thread calls them),
  each Receiver callback, the compile stages (`stage_seconds`; the device build's parts
  are laid end to end inside it, their order known, their exact starts not);
- per launch the kernel's name (the compiled function's on OpenCL and CUDA: kernels with
  equal bodies share one), the procedural kernels and graph nodes it computes, and its
  estimated bytes and FLOPs (`kernel_cost`);
- per outermost loop (`LoopClock`, numpy-proc and the device executors): its iterations, the
  host's time per iteration in the loop body less its waits for the device, the device's
  time per iteration (the loop's launches and copies) and the wall time per iteration, so
  the split between host and device is visible (`Profile.loops()`).

Device clocks are moved onto the host's `time.perf_counter` clock, so one trace shows the
host and the queue side by side. With profiling off nothing here runs: the executors'
launch methods are replaced on the instance only for a profiled run, and the Feeder and
Receiver calls test one module attribute (`backends.host.recorder`).
"""
from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .ir.graph import Node
from .ir.ops import ELEMENTWISE_OPS, REDUCE_OPS, Op
from .proc.ir import Alu, Buffer, Kernel, Load, Reduce, children

# the device's queue or the host thread that a span ran on: one track (trace thread) each
HOST_TRACK = "host"


@dataclass(frozen=True)
class KernelInfo:
    """What one launch computes, as the compiler knows it."""
    name: str                      # the launched function (equal bodies share one), or the graph op
    kernels: tuple[str, ...]       # the procedural kernels it computes (a megakernel: its stages)
    nodes: tuple[int, ...]         # graph node ids
    ops: tuple[str, ...]
    bytes: int                     # estimated bytes moved per launch
    flops: int                     # estimated operations per launch


def _extent(reduce: Reduce) -> int:
    extent = 1
    for v in reduce.variables:
        extent *= v.extent
    return extent


def kernel_cost(kernel: Kernel, buffers: dict[int, Buffer]) -> tuple[int, int]:
    """(bytes, FLOPs) of one launch of `kernel`, estimated from its expression.

    Bytes: the output written once, and every input element the kernel can read read once
    (a load evaluated n times reads at most n elements of its buffer, and at most the whole
    buffer): the compulsory traffic, what a kernel with perfect caches moves. FLOPs: every
    arithmetic node evaluated once per output element, a node inside a reduction once per
    element it reduces, and each reduction one operation per element it combines (a product
    of (M, K) by (K, N) is 2 M N K); a node shared by several parents counts once."""
    outputs = max(kernel.out.size, 1)
    flops = 0
    read: dict[int, int] = {}      # buffer id -> elements read, at most its size
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[Any, int]] = [(kernel.value, 1)]
    while stack:
        expr, times = stack.pop()
        if (id(expr), times) in seen:
            continue
        seen.add((id(expr), times))
        if isinstance(expr, Alu):
            flops += times
        elif isinstance(expr, Load):
            buffer = buffers.get(expr.buffer_id)
            if buffer is not None:
                read[buffer.id] = min(buffer.size, read.get(buffer.id, 0) + outputs * times)
        if isinstance(expr, Reduce):
            extent = _extent(expr)
            flops += times * max(extent - 1, 0)
            stack.append((expr.body, times * extent))
        else:
            stack.extend((child, times) for child in children(expr))
    moved = kernel.out.nbytes + sum(buffers[b].nbytes * n // max(buffers[b].size, 1) for b, n in read.items())
    return moved, flops * outputs


def kernel_info(name: str, kernels: Sequence[Kernel], buffers: dict[int, Buffer]) -> KernelInfo:
    """The info of a launch of `name` that computes `kernels` (one, or a megakernel's stages)."""
    moved = flops = 0
    for k in kernels:
        b, f = kernel_cost(k, buffers)
        moved, flops = moved + b, flops + f
    return KernelInfo(name, tuple(k.name for k in kernels), tuple(n for k in kernels for n in k.sources),
                      tuple(o for k in kernels for o in k.ops), moved, flops)


def node_info(node: Node) -> KernelInfo:
    """A graph node as the numpy device runs it: one numpy call, its inputs read and its
    output written once; elementwise ops one operation per output element, reductions one
    per input element, a product of (M, K) by (K, N) 2 M N K."""
    moved = node.nbytes + sum(i.nbytes for i in node.inputs)
    if node.op in ELEMENTWISE_OPS:
        flops = node.size
    elif node.op in REDUCE_OPS:
        flops = node.inputs[0].size
    elif node.op is Op.DOT:
        flops = 2 * node.size * (node.inputs[0].shape[-1] if node.inputs[0].shape else 1)
    else:
        flops = 0
    return KernelInfo(node.op.value, (), (node.id,), (node.op.value,), moved, flops)


@dataclass
class Span:
    """One interval on one track, in seconds of the host's perf_counter clock."""
    name: str
    category: str                  # "kernel", "op", "copy", "feeder", "receiver", "compile", "run", "loop"
    track: str
    start: float
    duration: float
    info: KernelInfo | None = None
    args: dict[str, Any] | None = None


class Recorder:
    """Collects the spans of one profiled run; the executors call it (duck-typed: the
    backends do not import this module)."""

    def __init__(self, buffers: dict[int, Buffer] | None = None) -> None:
        self.buffers = buffers or {}
        self.spans: list[Span] = []
        self._infos: dict[tuple, KernelInfo] = {}
        self.loop_clock: LoopClock | None = None

    def span(self, name: str, category: str, track: str, start: float, end: float,
             info: KernelInfo | None = None, args: dict[str, Any] | None = None) -> None:
        self.spans.append(Span(name, category, track, start, end - start, info, args))

    def kernel(self, name: str, kernels: Sequence[Kernel], start: float, end: float, track: str) -> None:
        """A launch of function `name` computing `kernels`, from `start` to `end` (host clock)."""
        key = (name,) + tuple(id(k) for k in kernels)
        info = self._infos.get(key)
        if info is None:
            info = self._infos[key] = kernel_info(name, kernels, self.buffers)
        self.spans.append(Span(name, "kernel", track, start, end - start, info))

    def op(self, node: Node, start: float, end: float, track: str) -> None:
        """A graph node evaluated by the numpy device."""
        key = ("node", node.id)
        info = self._infos.get(key)
        if info is None:
            info = self._infos[key] = node_info(node)
        self.spans.append(Span(info.name, "op", track, start, end - start, info))

    def host_call(self, fn: Callable[..., Any], args: Sequence[Any], name: str, category: str) -> Any:
        """fn(*args), timed on the calling thread's track (Feeders may run on their own thread)."""
        thread = threading.current_thread()
        track = HOST_TRACK if thread is threading.main_thread() else thread.name
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.spans.append(Span(name, category, track, start, time.perf_counter() - start))

    def watch_loops(self, executor: Any) -> None:
        """Time the executor's outermost loops for this run (`LoopClock`)."""
        self.loop_clock = LoopClock(self, executor)

    def unwatch_loops(self) -> None:
        """Put the executor's own methods back (before its `stop_profile`)."""
        if self.loop_clock is not None:
            self.loop_clock.stop()

    @contextmanager
    def host_span(self, name: str, category: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.spans.append(Span(name, category, HOST_TRACK, start, time.perf_counter() - start))


# the spans that are device time: launches (a graph op on the numpy device) and queue copies
DEVICE_CATEGORIES = ("kernel", "op", "copy")


class LoopClock:
    """Times each outermost loop of a profiled run, and the host's part of each iteration.

    It replaces, on the executor instance and for one run only (`stop` puts back what was
    there), the loop, its iteration body and the calls in which the host waits for the
    device or hands data to Receivers: a device executor's (base.DeviceExecutor) `run_loop`,
    `run_iteration`, `wait`, `finish` and `deliver`; numpy-proc's `_run_loop`,
    `_run_commands`, `_run_kernel` (there the host runs the kernels itself: that is the
    device's time) and `_receive`. An iteration's host time is its body's time less those
    calls: enqueueing launches and copies, and taking Feeder values (waiting for the feeder
    thread included). Before an outermost loop the queue is drained, and base.run_loop drains
    it after one, so the device spans inside the loop's span are its own (`Profile.loops`).
    Loops nested in another are part of its iterations."""

    HOOKS = {   # executor kind, told by its loop method: (loop, iteration body, not the host's time)
        "run_iteration": ("run_loop", "run_iteration", ("wait", "finish", "deliver")),
        "_run_commands": ("_run_loop", "_run_commands", ("_run_kernel", "_receive")),
    }
    BATCH = "run_batch"   # a device executor's chunk of iterations in one launch (base.IterationBatch)

    def __init__(self, recorder: "Recorder", executor: Any) -> None:
        self.recorder, self.executor = recorder, executor
        self.saved: dict[str, Any] = {}     # attribute -> the instance value it replaced (None: none)
        self.loops = 0
        self.loop: Any = None               # the outermost loop running
        self.iterations = 0
        self.host_seconds = 0.0
        self.excluded_seconds = 0.0         # in the calls that are not the host's time, so far
        kind = next((k for k in self.HOOKS if hasattr(executor, k)), None)
        if kind is None:
            return   # the numpy device: its loops are one span each, no split
        loop_name, body_name, excluded = self.HOOKS[kind]
        self._replace(loop_name, self._timed_loop)
        self._replace(body_name, self._timed_body)
        if hasattr(executor, self.BATCH):
            self._replace(self.BATCH, self._timed_batch)
        for name in excluded:
            if hasattr(executor, name):
                self._replace(name, self._excluded)

    def _replace(self, name: str, timed: Callable[..., Any]) -> None:
        plain = getattr(self.executor, name)
        self.saved[name] = self.executor.__dict__.get(name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return timed(plain, *args, **kwargs)
        setattr(self.executor, name, call)

    def stop(self) -> None:
        for name, previous in self.saved.items():
            if previous is None:
                del self.executor.__dict__[name]
            else:
                setattr(self.executor, name, previous)
        self.saved = {}

    def _timed_loop(self, plain: Callable[..., Any], loop: Any, *args: Any) -> Any:
        if self.executor.iterations or self.loop is not None:
            return plain(loop, *args)     # nested: part of the outer loop's iterations
        finish = getattr(self.executor, "finish", None)
        if finish is not None:
            finish()                      # the device spans after this are the loop's
        self.loop, self.iterations, self.host_seconds = loop, 0, 0.0
        start = time.perf_counter()
        try:
            return plain(loop, *args)
        finally:
            self.recorder.span(f"loop {self.loops}", "loop", HOST_TRACK, start, time.perf_counter(),
                               args={"iterations": self.iterations, "host_seconds": self.host_seconds})
            self.loops += 1
            self.loop = None

    def _timed_body(self, plain: Callable[..., Any], first: Any, *args: Any) -> Any:
        loop = self.loop
        if loop is None or (first is not loop and first is not getattr(loop, "body", None)):
            return plain(first, *args)    # not an iteration of the outermost loop
        excluded = self.excluded_seconds
        start = time.perf_counter()
        try:
            return plain(first, *args)
        finally:
            self.host_seconds += time.perf_counter() - start - (self.excluded_seconds - excluded)
            self.iterations += 1

    def _timed_batch(self, plain: Callable[..., Any], batch: Any, loop: Any, body: Any, first: int, last: int) -> int:
        if loop is not self.loop:
            return plain(batch, loop, body, first, last)
        excluded = self.excluded_seconds
        start = time.perf_counter()
        ran = first
        try:
            ran = plain(batch, loop, body, first, last)
            return ran
        finally:
            self.host_seconds += time.perf_counter() - start - (self.excluded_seconds - excluded)
            self.iterations += ran - first

    def _excluded(self, plain: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return plain(*args, **kwargs)
        finally:
            self.excluded_seconds += time.perf_counter() - start


@dataclass
class LoopTime:
    """One outermost loop of a profiled run: where an iteration's time goes."""
    name: str
    iterations: int
    wall_seconds: float            # the loop, start to end (the queue drained)
    host_seconds: float            # in the iteration bodies, less waits for the device and Receivers
    device_seconds: float          # its launches and copies on the device

    @property
    def host_ms_per_iteration(self) -> float:
        return self.host_seconds * 1e3 / max(self.iterations, 1)

    @property
    def device_ms_per_iteration(self) -> float:
        return self.device_seconds * 1e3 / max(self.iterations, 1)

    @property
    def wall_ms_per_iteration(self) -> float:
        return self.wall_seconds * 1e3 / max(self.iterations, 1)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, host_ms_per_iteration=self.host_ms_per_iteration,
                    device_ms_per_iteration=self.device_ms_per_iteration,
                    wall_ms_per_iteration=self.wall_ms_per_iteration)


@dataclass
class KernelRow:
    """One line of the profile table: every launch of one kernel function (or graph op)."""
    name: str
    calls: int
    total_seconds: float
    mean_seconds: float
    share: float                   # of the device time of every kernel in the run
    gflops_per_second: float | None
    gbytes_per_second: float | None
    bytes: int                     # over all calls
    flops: int
    nodes: tuple[int, ...]         # graph nodes it computes (the first launch's)


@dataclass
class Profile:
    """What a profiled run recorded: `print(profile)` is the table, `save_trace` the timeline."""
    device: str
    run_seconds: float
    spans: list[Span] = field(default_factory=list)
    iterations: int | None = None  # of the outermost loops, when the program has any

    def launches(self) -> list[Span]:
        return [s for s in self.spans if s.category in ("kernel", "op")]

    def kernel_seconds(self) -> float:
        return sum(s.duration for s in self.launches())

    def rows(self) -> list[KernelRow]:
        """Per kernel function, by total time, longest first."""
        grouped: dict[str, list[Span]] = {}
        for s in self.launches():
            grouped.setdefault(s.name, []).append(s)
        total = self.kernel_seconds() or 1e-30
        rows = []
        for name, spans in grouped.items():
            seconds = sum(s.duration for s in spans)
            moved = sum(s.info.bytes for s in spans if s.info is not None)
            flops = sum(s.info.flops for s in spans if s.info is not None)
            info = spans[0].info
            rows.append(KernelRow(name, len(spans), seconds, seconds / len(spans), seconds / total,
                                  flops / seconds * 1e-9 if seconds > 0 and flops else None,
                                  moved / seconds * 1e-9 if seconds > 0 and moved else None,
                                  moved, flops, info.nodes if info is not None else ()))
        rows.sort(key=lambda r: -r.total_seconds)
        return rows

    def host_seconds(self) -> dict[str, float]:
        """Seconds of the run spent in Feeder calls and Receiver callbacks."""
        out: dict[str, float] = {}
        for s in self.spans:
            if s.category in ("feeder", "receiver"):
                out[s.category] = out.get(s.category, 0.0) + s.duration
        return out

    def loops(self) -> list[LoopTime]:
        """The outermost loops the run timed (`LoopClock`), in the order they ran. A device span
        belongs to the loop whose interval holds its midpoint: the queue is drained before and
        after an outermost loop, so that is exactly the loop's launches and copies."""
        device = [s for s in self.spans if s.category in DEVICE_CATEGORIES]
        loops = []
        for s in self.spans:
            if s.category != "loop" or not s.args or "host_seconds" not in s.args:
                continue   # the numpy device's loop spans have no host/device split
            end = s.start + s.duration
            busy = sum(d.duration for d in device if s.start <= d.start + d.duration / 2 <= end)
            loops.append(LoopTime(s.name, s.args["iterations"], s.duration, s.args["host_seconds"], busy))
        return loops

    def loop_lines(self) -> list[str]:
        """One line per timed loop: iterations, host, device and wall milliseconds per iteration."""
        return [f"{t.name}: {t.iterations} iterations, host {t.host_ms_per_iteration:.3f} ms/iter, "
                f"device {t.device_ms_per_iteration:.3f} ms/iter, wall {t.wall_ms_per_iteration:.3f} ms/iter"
                for t in self.loops() if t.iterations]

    def table(self, top: int | None = 25) -> str:
        """The per-kernel table as text, the `top` longest kernels (None: all). On the numpy
        device a row is a graph op (it runs the graph node by node, no kernels)."""
        rows = self.rows()
        kernel_s = self.kernel_seconds()
        launches = sum(r.calls for r in rows)
        unit = "op" if any(s.category == "op" for s in self.launches()) else "kernel"
        calls = "evaluations" if unit == "op" else "launches"
        lines = [f"profile on {self.device}: run {self.run_seconds * 1e3:.3f} ms, {unit}s {kernel_s * 1e3:.3f} ms "
                 f"in {launches} {calls} of {len(rows)} {unit}s"]
        if self.iterations:
            lines[0] += f", {self.run_seconds * 1e3 / self.iterations:.3f} ms per iteration"
        host = self.host_seconds()
        if host:
            lines.append("host: " + ", ".join(f"{k} calls {v * 1e3:.3f} ms" for k, v in host.items()))
        lines.extend(self.loop_lines())
        lines.append(f"{'total ms':>10} {'share':>6} {'calls':>7} {'mean us':>9} {'GFLOP/s':>8} {'GB/s':>8}  {unit}")

        def rate(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}"
        for r in rows[:top]:
            lines.append(f"{r.total_seconds * 1e3:10.3f} {r.share:6.1%} {r.calls:7d} {r.mean_seconds * 1e6:9.1f} "
                         f"{rate(r.gflops_per_second):>8} {rate(r.gbytes_per_second):>8}  {r.name}")
        if top is not None and len(rows) > top:
            rest = sum(r.total_seconds for r in rows[top:])
            lines.append(f"... {len(rows) - top} more {unit}s ({rest * 1e3:.3f} ms)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    # --- Chrome trace / Perfetto --------------------------------------------------------
    def trace_events(self) -> list[dict[str, Any]]:
        """The spans as Chrome trace events: complete events ("ph": "X", ts and dur in
        microseconds from the first span), one thread per track, named by metadata events."""
        pid = 1
        tracks: dict[str, int] = {HOST_TRACK: 0}
        for s in self.spans:
            tracks.setdefault(s.track, len(tracks))
        origin = min((s.start for s in self.spans), default=0.0)
        events: list[dict[str, Any]] = [
            {"name": "process_name", "ph": "M", "ts": 0, "pid": pid, "tid": 0,
             "args": {"name": f"autodiff ({self.device})"}}]
        for track, tid in tracks.items():
            events.append({"name": "thread_name", "ph": "M", "ts": 0, "pid": pid, "tid": tid, "args": {"name": track}})
            events.append({"name": "thread_sort_index", "ph": "M", "ts": 0, "pid": pid, "tid": tid,
                           "args": {"sort_index": tid}})
        for s in sorted(self.spans, key=lambda s: s.start):
            event = {"name": s.name, "cat": s.category, "ph": "X", "pid": pid, "tid": tracks[s.track],
                     "ts": round((s.start - origin) * 1e6, 3), "dur": max(round(s.duration * 1e6, 3), 0.001)}
            args = dict(s.args or {})
            if s.info is not None:
                args.update(kernels=list(s.info.kernels), nodes=list(s.info.nodes), ops=list(s.info.ops),
                            bytes=s.info.bytes, flops=s.info.flops)
            if args:
                event["args"] = args
            events.append(event)
        return events

    def save_trace(self, path: str | Path) -> Path:
        """Write the Chrome trace-event JSON (open it in https://ui.perfetto.dev or chrome://tracing)."""
        path = Path(path)
        with open(path, "w") as f:
            json.dump({"traceEvents": self.trace_events(), "displayTimeUnit": "ms"}, f)
        return path

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "run_seconds": self.run_seconds, "iterations": self.iterations,
                "kernel_seconds": self.kernel_seconds(), "host_seconds": self.host_seconds(),
                "kernels": [dict(r.__dict__, nodes=list(r.nodes)) for r in self.rows()],
                "loops": [t.to_dict() for t in self.loops()]}
