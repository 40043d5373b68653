"""The compiler driver: the whole compile as a named list of stages, compile() and execute().

    graph passes -> lowering -> fusion -> schedule -> memory plan -> backend

Each stage is a function of the `Compilation` so far, with a name, one line of why, the
switch that turns it off (where it is an optimization) and its time in `stage_seconds`.
A backend that runs the graph itself (numpy) stops after the graph passes; the others
take the scheduled procedural program and its memory plan. The driver names no device:
`backends.registry` says what each one needs.

A run with `profile=True` (or AUTODIFF_PROFILE=1) records its launches and host callbacks
(autodiff/profiler.py); the `Report` then carries the `Profile`.
"""
from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

from .alloc.plan import MemoryPlan, plan_memory, validate_plan
from .backends import host
from .backends.registry import Backend, backend, backend_switches, backends
from .frontend import entry, lazy
from .frontend.program import Program, current_program
from .fusion import FUSION_KINDS, fuse
from .ir.graph import Block
from .ir.ops import Op
from .errors import TraceError
from .loggers import get_logger
from .opt import CHECK_SWITCHES, PASS_NAMES, Graph, PassRecord, optimize
from .proc import lower
from .proc.ir import ProcProgram
from .profiler import HOST_TRACK, Profile, Recorder, Span
from .schedule.packing import pack_matmul_operands, pack_transposed_b
from .schedule.receives import sink_receives

KNOWN_OPTIONS = ("disable", "dump_passes", "debug", "profile")


@dataclass
class Compilation:
    """What the stages have made so far of one program for one backend."""
    program: Program
    backend: Backend
    disable: frozenset[str]
    dump_passes: bool | None
    debug: bool
    graph: Graph | None = None
    pass_records: list[PassRecord] = field(default_factory=list)
    proc: ProcProgram | None = None
    plan: MemoryPlan | None = None
    kernels_before_fusion: int | None = None
    executor: Any = None


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Compilation], None]
    why: str
    procedural: bool = True      # only for backends that take the procedural IR
    switch: str | None = None    # the `disable=` name that skips it (an optimization)


def _passes(c: Compilation) -> None:
    c.graph, c.pass_records = optimize(Graph(c.program.root, c.program.variables), c.disable, c.dump_passes)


def _lower(c: Compilation) -> None:
    c.proc = lower(c.graph)
    c.kernels_before_fusion = len(c.proc.kernels())


def _fuse(c: Compilation) -> None:
    c.proc = fuse(c.proc, c.disable)   # its kinds switch off one by one (FUSION_KINDS)


def _schedule(c: Compilation) -> None:
    pack_matmul_operands(c.proc)
    if c.backend.untransposed_b and "transposed_b_packing" not in c.disable:
        pack_transposed_b(c.proc)


def _sink_receives(c: Compilation) -> None:
    sink_receives(c.proc)


def _plan_memory(c: Compilation) -> None:
    c.plan = plan_memory(c.proc, reuse="memory_reuse" not in c.disable)
    if c.debug:
        validate_plan(c.proc, c.plan)


def _build(c: Compilation) -> None:
    ir = c.proc if c.backend.takes_proc else c.graph.root
    c.executor = c.backend.executor(ir, c.plan, c.disable)


STAGES: list[Stage] = [
    Stage("passes", _passes, "prune, fold, CSE and in-place updates on the graph (opt/pipeline.py)",
          procedural=False),
    Stage("lowering", _lower, "one kernel per compute node; views become access expressions"),
    Stage("fusion", _fuse, "merge producers into their consumers: fewer kernels, fewer buffers"),
    Stage("schedule", _schedule, "copy operands the tiled matmul kernel cannot read (or, on backends that ask, "
          "reads slowly: a transposed B) into packed buffers",
          switch="operand_packing"),
    Stage("receives last", _sink_receives, "in loop bodies, each Receiver after the kernels that do not change "
          "what it reads: longer megakernel runs, bodies that run several iterations per launch",
          switch="sink_receives"),
    Stage("memory", _plan_memory, "liveness, then every temporary at an offset of one arena"),
    Stage("device build", _build, "render, build and warm up the kernels on the backend", procedural=False),
]
# switches the stages read besides their own names; the backends declare theirs
STAGE_SWITCHES = ("fusion",) + FUSION_KINDS + ("memory_reuse", "transposed_b_packing")


def known_switches() -> tuple[str, ...]:
    """Every name `disable=` accepts: graph passes, compile stages, backend features."""
    names = list(PASS_NAMES) + list(CHECK_SWITCHES) + list(STAGE_SWITCHES) + [s.switch for s in STAGES if s.switch]
    return tuple(dict.fromkeys(names + list(backend_switches())))


def _size(nbytes: int | None) -> str:
    if nbytes is None:
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes} B"


@dataclass
class Report:
    """What a compile and a run cost; `print(report)` is a short summary, `to_dict()` all of it.
    A profiled run (`profile=True`) has `profile`: `print(report.profile)` or
    `report.profile_table()` is the per-kernel table, `report.save_trace(path)` the timeline."""
    device: str
    compile_seconds: float = 0.0
    run_seconds: float = 0.0
    graph_nodes: int = 0
    ops_executed: int = 0
    kernels_before_fusion: int | None = None
    kernels_after_fusion: int | None = None
    kernels_launched: int = 0
    persistent_bytes: int = 0
    arena_bytes: int | None = None
    lower_bound_bytes: int | None = None
    no_reuse_bytes: int | None = None
    passes: list[dict[str, Any]] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    iterations: int | None = None          # of the program's outermost loops, if it has any
    profile: Profile | None = None

    @property
    def ms_per_iteration(self) -> float | None:
        return self.run_seconds * 1e3 / self.iterations if self.iterations else None

    def __str__(self) -> str:
        stages = ", ".join(f"{name} {seconds:.3f}" for name, seconds in self.stage_seconds.items()
                           if ": " not in name)   # the device build's parts are in to_dict()
        run = f"run {self.run_seconds:.3f} s"
        if self.iterations:
            run += f", {self.ms_per_iteration:.3f} ms per iteration ({self.iterations} iterations)"
        lines = [f"device {self.device}", f"compile {self.compile_seconds:.3f} s ({stages})", run]
        if self.kernels_after_fusion is not None:
            lines.append(f"kernels {self.kernels_after_fusion} (before fusion {self.kernels_before_fusion}), "
                         f"{self.kernels_launched} launches; graph {self.graph_nodes} nodes")
        else:
            lines.append(f"graph {self.graph_nodes} nodes, {self.ops_executed} ops executed")
        if self.arena_bytes is not None:
            bound = f" ({self.arena_bytes / self.lower_bound_bytes:.2f}x)" if self.lower_bound_bytes else ""
            lines.append(f"arena {_size(self.arena_bytes)}, lower bound {_size(self.lower_bound_bytes)}{bound}, "
                         f"without reuse {_size(self.no_reuse_bytes)}; persistent {_size(self.persistent_bytes)}")
        else:
            lines.append(f"persistent {_size(self.persistent_bytes)}")
        if self.profile is not None:
            lines.append(f"profiled: {len(self.profile.launches())} launches, device time "
                         f"{self.profile.kernel_seconds() * 1e3:.3f} ms (report.profile_table())")
            lines.extend(self.profile.loop_lines())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain Python values (the profile as `Profile.to_dict()`), for tools."""
        out = {k: v for k, v in self.__dict__.items() if k != "profile"}
        out["passes"] = [dict(p) for p in self.passes]
        out["stage_seconds"] = dict(self.stage_seconds)
        out["ms_per_iteration"] = self.ms_per_iteration
        out["profile"] = None if self.profile is None else self.profile.to_dict()
        return out

    def _profiled(self) -> Profile:
        if self.profile is None:
            raise ValueError("this run was not profiled: run with profile=True (ad.execute(profile=True), "
                             "compiled.run(profile=True)) or AUTODIFF_PROFILE=1")
        return self.profile

    def profile_table(self, top: int | None = 25) -> str:
        """The per-kernel table of a profiled run (calls, time, share, GFLOP/s, GB/s)."""
        return self._profiled().table(top)

    def save_trace(self, path: Any) -> Any:
        """Write the profiled run as Chrome trace-event JSON (Perfetto, chrome://tracing)."""
        return self._profiled().save_trace(path)


_chosen_device: str | None = None   # set_default_device()


def set_default_device(device: str | None) -> None:
    """The device that execute(), interactive reads and ad.jit use when none is named;
    None goes back to AUTODIFF_DEVICE, else the best one here."""
    global _chosen_device
    if device is not None:
        backend(device)   # an unknown name raises here, naming the registered ones
    _chosen_device = device


def default_device() -> str:
    """set_default_device()'s choice, else AUTODIFF_DEVICE if set, else the preferred backend
    that runs here (numpy, with a warning that says why, when no other one does)."""
    chosen = _chosen_device or os.environ.get("AUTODIFF_DEVICE")
    if chosen:
        return chosen
    global _best_device
    if _best_device is None:   # found once per process: every interactive read asks
        _best_device = _best_backend()
    return _best_device


_best_device: str | None = None


def _best_backend() -> str:
    problems = []
    for b in backends():
        if b.reference_only or b.fallback:
            continue
        problem = b.problem()
        if problem is None:
            return b.name
        problems.append(problem)
    fallback = next(b for b in backends() if b.fallback)
    global _fallback_warned
    if not _fallback_warned:
        _fallback_warned = True
        why = problems[-1] if problems else "no other backend is registered"
        warnings.warn(f"autodiff runs on the {fallback.name} reference device (slow): {why}", stacklevel=4)
    return fallback.name


_fallback_warned = False   # the fallback to numpy is explained once per process


class CompiledProgram:
    """A program compiled for one backend; `run()` executes it (again) and reports."""

    def __init__(self, program: Program, device: str, disable: frozenset[str],
                 dump_passes: bool | None = None, debug: bool | None = None, profile: bool | None = None) -> None:
        start = time.perf_counter()
        # every run() profiles when asked at compile time or by AUTODIFF_PROFILE (1, or a path
        # of .json to write each profiled run's trace to)
        setting = os.environ.get("AUTODIFF_PROFILE", "")
        self.profile = profile if profile is not None else setting not in ("", "0")
        self.trace_path = setting if setting.endswith(".json") else None
        self.program = program
        # the root nodes a run runs: what it leaves behind for interactive reads (lazy.py)
        self.nodes_run = len(program.root.nodes)
        self.device = device
        self.disable = disable
        self.debug = bool(os.environ.get("AUTODIFF_DEBUG")) if debug is None else debug
        self.backend = backend(device)
        c = Compilation(program, self.backend, disable, dump_passes, self.debug)
        self.stage_seconds: dict[str, float] = {}
        self.stage_starts: dict[str, float] = {}   # perf_counter at each stage's start (the profile's spans)
        for stage in STAGES:
            if (stage.procedural and not self.backend.takes_proc) or stage.switch in disable:
                continue
            at = time.perf_counter()
            stage.run(c)
            self.stage_starts[stage.name] = at
            self.stage_seconds[stage.name] = time.perf_counter() - at
        # the device build's parts (render, cache load, build, first launches), where a backend times them
        parts = getattr(c.executor, "build_seconds", None)
        if isinstance(parts, dict):
            self.stage_seconds.update({f"device build: {part}": seconds for part, seconds in parts.items()})
        self.optimized, self.pass_records = c.graph, c.pass_records
        self.graph: Block = c.graph.root
        # iterations of the outermost loops (None without a loop): the report's ms per iteration
        counts = [node.args.count for node in self.graph.nodes if node.op is Op.FOR]
        self.iterations: int | None = sum(counts) if counts else None
        self.proc, self.plan, self.executor = c.proc, c.plan, c.executor
        self.kernels_before_fusion = c.kernels_before_fusion
        # kernels the device runs: after fusion and the schedule's operand copies
        self.kernels_after_fusion = None if self.proc is None else len(self.proc.kernels())
        self.compile_seconds = time.perf_counter() - start

    @property
    def kernels(self) -> dict[str, str]:
        """Generated source of each distinct kernel, by name (backends that generate code)."""
        program = getattr(self.executor, "rendered_program", None)
        return {} if program is None else {r.name: r.source for r in program.rendered}

    @property
    def ops_executed(self) -> int:
        return getattr(self.executor, "ops_executed", 0)

    def run(self, profile: bool | None = None) -> Report:
        """Execute the program once; `profile=True` records where the time goes (the report's
        `profile`); None: as compiled (`profile=` option, else AUTODIFF_PROFILE)."""
        recorder = self._start_profile() if (self.profile if profile is None else profile) else None
        start = time.perf_counter()
        ops_before = self.ops_executed
        launched_before = getattr(self.executor, "kernels_launched", 0)
        try:
            self.executor.run()
        finally:
            if recorder is not None:
                self._stop_profile(recorder, start)
            lazy.after_program_run(self.program, self.nodes_run)
        report = Report(
            device=self.device,
            compile_seconds=self.compile_seconds,
            run_seconds=time.perf_counter() - start,
            graph_nodes=sum(1 for _ in self.graph.walk()),
            ops_executed=self.ops_executed - ops_before,
            kernels_before_fusion=self.kernels_before_fusion,
            kernels_after_fusion=self.kernels_after_fusion,
            kernels_launched=getattr(self.executor, "kernels_launched", 0) - launched_before,
            persistent_bytes=sum(v.nbytes for v in self.program.variables),
            passes=[dict(r.__dict__) for r in self.pass_records],
            stage_seconds=dict(self.stage_seconds),
            iterations=self.iterations,
        )
        if self.plan is not None:
            report.arena_bytes = self.plan.arena_bytes
            report.lower_bound_bytes = self.plan.lower_bound_bytes
            report.no_reuse_bytes = self.plan.no_reuse_bytes
        if recorder is not None:
            report.profile = Profile(self.device, report.run_seconds, self._compile_spans() + recorder.spans,
                                     report.iterations)
            if self.trace_path:
                report.profile.save_trace(self.trace_path)
        get_logger("run").info("run on %s: %.4f s, %d launches, %s iterations", self.device,
                               report.run_seconds, report.kernels_launched, report.iterations)
        return report

    # --- profiling ---------------------------------------------------------------------
    def _start_profile(self) -> Recorder:
        start = getattr(self.executor, "start_profile", None)
        if start is None:
            raise ValueError(f"the {self.device} device cannot profile a run")
        recorder = Recorder({b.id: b for b in self.proc.buffers} if self.proc is not None else None)
        start(recorder)
        recorder.watch_loops(self.executor)
        host.set_recorder(recorder)
        return recorder

    def _stop_profile(self, recorder: Recorder, start: float) -> None:
        host.set_recorder(None)
        recorder.unwatch_loops()
        self.executor.stop_profile(recorder)
        recorder.span("run", "run", HOST_TRACK, start, time.perf_counter())

    def _compile_spans(self) -> list[Span]:
        """The compile stages as host spans; the device build's parts end to end inside it."""
        spans = [Span(name, "compile", HOST_TRACK, at, self.stage_seconds[name])
                 for name, at in self.stage_starts.items()]
        at = self.stage_starts.get("device build")
        for name, seconds in self.stage_seconds.items():
            if at is not None and name.startswith("device build: "):
                spans.append(Span(name[len("device build: "):], "compile", HOST_TRACK, at, seconds))
                at += seconds
        return spans


def compile_program(program: Program | None = None, device: str | None = None, **options: Any) -> CompiledProgram:
    program = program or current_program()
    if program.eager and program.root.nodes[program.run_upto:]:
        raise TraceError("compile(): values of this program were read (interactive use), so what is "
                         "pending is run by the next read or execute(); to compile a step ahead of "
                         "time, wrap it in ad.jit(fn) and use fn.compile(*args)")
    unknown = [k for k in options if k not in KNOWN_OPTIONS]
    if unknown:
        raise TypeError(f"unknown compile options {unknown}; known: {list(KNOWN_OPTIONS)}")
    device = device or default_device()
    backend(device)   # an unknown name raises here, naming the registered ones
    disable = frozenset(options.get("disable") or ())
    # AUTODIFF_DISABLE=fusion,cse switches stages off for every compile (testing, bisecting)
    disable |= frozenset(n for n in os.environ.get("AUTODIFF_DISABLE", "").split(",") if n)
    unknown_switches = sorted(disable - set(known_switches()))
    if unknown_switches:
        raise ValueError(f"disable: unknown names {unknown_switches}; known: {list(known_switches())}")
    return CompiledProgram(program, device, disable, options.get("dump_passes"), options.get("debug"),
                           options.get("profile"))


def execute_program(program: Program | None = None, device: str | None = None, **options: Any) -> Report:
    program = program or current_program()
    if program.eager:   # a value was read: what is pending runs, through the compile cache
        report = lazy.execute_pending(program, device)
        return report if report is not None else Report(device=device or default_device())
    return compile_program(program, device, **options).run()


def compile(device: str | None = None, **options: Any) -> CompiledProgram:  # noqa: A001 - public API
    """Compile the current program without running it (see `CompiledProgram.run`).
    `profile=True` makes every run record a profile (`Report.profile`)."""
    return compile_program(None, device, **options)


def execute(device: str | None = None, **options: Any) -> Report:
    """Compile and run the current program once; persistent tensors get their new values.
    `profile=True` records each kernel launch and host callback: `report.profile`,
    `report.profile_table()`, `report.save_trace("trace.json")`."""
    return execute_program(None, device, **options)


entry.register_compiler(sys.modules[__name__])
