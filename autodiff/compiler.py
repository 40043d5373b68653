"""compile() and execute(): choose a device, run the pipeline, report.

`compile_program` runs every compile stage for the chosen device and returns a
`CompiledProgram`; `.run()` executes it once and returns a `Report`. The
stages so far: the graph passes (`autodiff/opt/`), then the numpy reference
device runs the optimized graph. Later stages (lowering, fusion, memory
planning, OpenCL/CUDA) plug in here; see TODO.md.
"""
from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from .frontend import entry
from .frontend.program import Program, current_program

DEVICES = ("numpy", "numpy-proc", "opencl", "cuda")
KNOWN_OPTIONS = ("disable", "dump_passes", "debug")


def known_switches() -> tuple[str, ...]:
    """Every name `disable=` accepts: graph passes, fusion kinds, memory reuse."""
    from .fusion import FUSION_KINDS
    from .opt import PASS_NAMES
    return PASS_NAMES + ("fusion",) + FUSION_KINDS + ("operand_packing", "memory_reuse", "megakernel", "tiled_matmul",
                                                     "vectorize", "group_reduce", "feeder_thread")


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
    """AUTODIFF_DEVICE if set, else the best backend available here."""
    chosen = os.environ.get("AUTODIFF_DEVICE")
    if chosen:
        return chosen
    from .backends.cuda import cuda_available
    if cuda_available():
        return "cuda"
    from .backends.opencl import opencl_problem
    problem = opencl_problem()
    if problem is None:
        return "opencl"
    global _fallback_warned
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(f"autodiff runs on the numpy reference device (slow): {problem}", stacklevel=3)
    return "numpy"


_fallback_warned = False   # the fallback to numpy is explained once per process


class CompiledProgram:
    """A program compiled for one device; `run()` executes it (again) and reports.

    Stages: graph passes (autodiff/opt) -> lowering to the procedural IR
    (autodiff/proc) -> fusion (autodiff/fusion) -> memory plan (autodiff/alloc)
    -> the device. The numpy device stops after the graph passes and runs the
    graph itself, the executable specification.
    """

    def __init__(self, program: Program, device: str, disable: frozenset[str],
                 dump_passes: bool | None = None, debug: bool | None = None) -> None:
        start = time.perf_counter()
        self.program = program
        self.device = device
        self.disable = disable
        self.debug = bool(os.environ.get("AUTODIFF_DEBUG")) if debug is None else debug
        self.stage_seconds: dict[str, float] = {}
        from .opt import Graph, optimize
        self.optimized, self.pass_records = optimize(Graph(program.root, program.variables),
                                                     disable, dump_passes)
        self.graph = self.optimized.root
        self._mark("passes", start)
        self.proc = self.plan = None
        self.kernels_before_fusion = self.kernels_after_fusion = None
        if device == "numpy":
            from .backends.numpy_graph import NumpyGraphExecutor
            self.executor = NumpyGraphExecutor(self.graph)
        else:
            self._build_procedural()
            at = time.perf_counter()
            if device == "opencl":
                from .backends.opencl import OpenCLExecutor
                self.executor = OpenCLExecutor(self.proc, self.plan, megakernels="megakernel" not in disable,
                                               tiled_matmuls="tiled_matmul" not in disable,
                                               feeder_thread="feeder_thread" not in disable,
                                               vectorize="vectorize" not in disable,
                                               group_reductions=False if "group_reduce" in disable else None)
            elif device == "cuda":
                from .backends.cuda import CUDAExecutor
                self.executor = CUDAExecutor(self.proc, self.plan, feeder_thread="feeder_thread" not in disable)
            else:
                from .backends.numpy_proc import NumpyProcExecutor
                self.executor = NumpyProcExecutor(self.proc, self.plan)
            self._mark("device build", at)
        self.compile_seconds = time.perf_counter() - start

    def _mark(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.stage_seconds[stage] = now - since
        return now

    def _build_procedural(self) -> None:
        from .alloc.plan import plan_memory, validate_plan
        from .fusion import fuse
        from .proc import lower
        at = time.perf_counter()
        self.proc = lower(self.optimized)
        self.kernels_before_fusion = len(self.proc.kernels())
        at = self._mark("lowering", at)
        self.proc = fuse(self.proc, self.disable)
        if "operand_packing" not in self.disable:
            from .schedule.packing import pack_matmul_operands
            pack_matmul_operands(self.proc)
        self.kernels_after_fusion = len(self.proc.kernels())
        at = self._mark("fusion", at)
        self.plan = plan_memory(self.proc, reuse="memory_reuse" not in self.disable)
        if self.debug:
            validate_plan(self.proc, self.plan)
        self._mark("memory", at)

    @property
    def kernels(self) -> dict[str, str]:
        """Generated source of each distinct kernel, by name (devices that generate code)."""
        rendered = getattr(self.executor, "rendered", None)
        if rendered is None:
            return {}
        return {r.name: r.source for r in rendered + getattr(self.executor, "mega_rendered", [])}

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
    if device not in DEVICES:
        raise ValueError(f"unknown device '{device}'; choose one of {DEVICES}")
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
