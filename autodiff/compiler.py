"""The compiler driver: the whole compile as a named list of stages, compile() and execute().

    graph passes -> lowering -> fusion -> schedule -> memory plan -> backend

Each stage is a function of the `Compilation` so far, with a name, one line of why, the
switch that turns it off (where it is an optimization) and its time in `stage_seconds`.
A backend that runs the graph itself (numpy) stops after the graph passes; the others
take the scheduled procedural program and its memory plan. The driver names no device:
`backends.registry` says what each one needs.
"""
from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

from .alloc.plan import MemoryPlan, plan_memory, validate_plan
from .backends.registry import Backend, backend, backend_switches, backends
from .frontend import entry
from .frontend.program import Program, current_program
from .fusion import FUSION_KINDS, fuse
from .ir.graph import Block
from .opt import CHECK_SWITCHES, PASS_NAMES, Graph, PassRecord, optimize
from .proc import lower
from .proc.ir import ProcProgram
from .schedule.packing import pack_matmul_operands

KNOWN_OPTIONS = ("disable", "dump_passes", "debug")


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
    Stage("schedule", _schedule, "copy operands the tiled matmul kernel cannot read into packed buffers",
          switch="operand_packing"),
    Stage("memory", _plan_memory, "liveness, then every temporary at an offset of one arena"),
    Stage("device build", _build, "render, build and warm up the kernels on the backend", procedural=False),
]
# switches the stages read besides their own names; the backends declare theirs
STAGE_SWITCHES = ("fusion",) + FUSION_KINDS + ("memory_reuse",)


def known_switches() -> tuple[str, ...]:
    """Every name `disable=` accepts: graph passes, compile stages, backend features."""
    names = list(PASS_NAMES) + list(CHECK_SWITCHES) + list(STAGE_SWITCHES) + [s.switch for s in STAGES if s.switch]
    return tuple(dict.fromkeys(names + list(backend_switches())))


@dataclass
class Report:
    """What a compile and a run cost."""
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

    def __str__(self) -> str:
        rows = [(k, v) for k, v in self.__dict__.items() if k not in ("passes", "stage_seconds")]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k.ljust(width)}  {v:.4f}" if isinstance(v, float) else f"{k.ljust(width)}  {v}"
                 for k, v in rows]
        return "\n".join(lines)


def default_device() -> str:
    """AUTODIFF_DEVICE if set, else the preferred backend that runs here (numpy, with a
    warning that says why, when no other one does)."""
    chosen = os.environ.get("AUTODIFF_DEVICE")
    if chosen:
        return chosen
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
        warnings.warn(f"autodiff runs on the {fallback.name} reference device (slow): {why}", stacklevel=3)
    return fallback.name


_fallback_warned = False   # the fallback to numpy is explained once per process


class CompiledProgram:
    """A program compiled for one backend; `run()` executes it (again) and reports."""

    def __init__(self, program: Program, device: str, disable: frozenset[str],
                 dump_passes: bool | None = None, debug: bool | None = None) -> None:
        start = time.perf_counter()
        self.program = program
        self.device = device
        self.disable = disable
        self.debug = bool(os.environ.get("AUTODIFF_DEBUG")) if debug is None else debug
        self.backend = backend(device)
        c = Compilation(program, self.backend, disable, dump_passes, self.debug)
        self.stage_seconds: dict[str, float] = {}
        for stage in STAGES:
            if (stage.procedural and not self.backend.takes_proc) or stage.switch in disable:
                continue
            at = time.perf_counter()
            stage.run(c)
            self.stage_seconds[stage.name] = time.perf_counter() - at
        # the device build's parts (render, cache load, build, first launches), where a backend times them
        parts = getattr(c.executor, "build_seconds", None)
        if isinstance(parts, dict):
            self.stage_seconds.update({f"device build: {part}": seconds for part, seconds in parts.items()})
        self.optimized, self.pass_records = c.graph, c.pass_records
        self.graph: Block = c.graph.root
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

    def run(self) -> Report:
        start = time.perf_counter()
        ops_before = self.ops_executed
        launched_before = getattr(self.executor, "kernels_launched", 0)
        self.executor.run()
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
        )
        if self.plan is not None:
            report.arena_bytes = self.plan.arena_bytes
            report.lower_bound_bytes = self.plan.lower_bound_bytes
            report.no_reuse_bytes = self.plan.no_reuse_bytes
        return report


def compile_program(program: Program | None = None, device: str | None = None, **options: Any) -> CompiledProgram:
    program = program or current_program()
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
    return CompiledProgram(program, device, disable, options.get("dump_passes"), options.get("debug"))


def execute_program(program: Program | None = None, device: str | None = None, **options: Any) -> Report:
    return compile_program(program, device, **options).run()


def compile(device: str | None = None, **options: Any) -> CompiledProgram:  # noqa: A001 - public API
    """Compile the current program without running it (see `CompiledProgram.run`)."""
    return compile_program(None, device, **options)


def execute(device: str | None = None, **options: Any) -> Report:
    """Compile and run the current program once; persistent tensors get their new values."""
    return execute_program(None, device, **options)


entry.register_compiler(sys.modules[__name__])
