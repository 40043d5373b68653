"""compile() and execute(): choose a device, run the pipeline, report.

`compile_program` runs every compile stage for the chosen device and returns a
`CompiledProgram`; `.run()` executes it once and returns a `Report`. The
stages so far: the graph passes (`autodiff/opt/`), then the numpy reference
device runs the optimized graph. Later stages (lowering, fusion, memory
planning, OpenCL/CUDA) plug in here; see TODO.md.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from .graph.program import Program, current_program

DEVICES = ("numpy", "opencl", "cuda")
KNOWN_OPTIONS = ("disable", "dump_passes")


def known_switches() -> tuple[str, ...]:
    """Every name `disable=` accepts: the graph passes (later: fusion kinds, memory reuse)."""
    from .opt import PASS_NAMES
    return PASS_NAMES


@dataclass
class Report:
    """What a run cost. Byte fields are None until the device plans memory."""
    device: str
    compile_seconds: float = 0.0
    run_seconds: float = 0.0
    graph_nodes: int = 0
    ops_executed: int = 0
    kernels_launched: int = 0
    persistent_bytes: int = 0
    arena_bytes: int | None = None
    lower_bound_bytes: int | None = None
    no_reuse_bytes: int | None = None
    passes: list[dict[str, Any]] = field(default_factory=list)

    def __str__(self) -> str:
        rows = [(k, v) for k, v in self.__dict__.items() if k != "passes"]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k.ljust(width)}  {v:.4f}" if isinstance(v, float) else f"{k.ljust(width)}  {v}"
                 for k, v in rows]
        return "\n".join(lines)


def default_device() -> str:
    """AUTODIFF_DEVICE if set, else the best backend available here."""
    chosen = os.environ.get("AUTODIFF_DEVICE")
    if chosen:
        return chosen
    return "numpy"  # OpenCL becomes the default once its backend lands (TODO.md)


class CompiledProgram:
    """A program compiled for one device; `run()` executes it (again) and reports."""

    def __init__(self, program: Program, device: str, disable: frozenset[str],
                 dump_passes: bool | None = None) -> None:
        start = time.perf_counter()
        self.program = program
        self.device = device
        self.disable = disable
        from .device.numpy_device import NumpyGraphExecutor
        from .opt import Graph, optimize
        self.optimized, self.pass_records = optimize(Graph(program.root, program.variables),
                                                     disable, dump_passes)
        self.graph = self.optimized.root
        self.executor = NumpyGraphExecutor(self.graph)
        self.compile_seconds = time.perf_counter() - start

    def run(self) -> Report:
        start = time.perf_counter()
        before = self.executor.ops_executed
        self.executor.run()
        report = Report(
            device=self.device,
            compile_seconds=self.compile_seconds,
            run_seconds=time.perf_counter() - start,
            graph_nodes=sum(1 for _ in self.graph.walk()),
            ops_executed=self.executor.ops_executed - before,
            persistent_bytes=sum(v.nbytes for v in self.program.variables),
            passes=[dict(r.__dict__) for r in self.pass_records],
        )
        return report


def compile_program(program: Program | None = None, device: str | None = None, **options: Any) -> CompiledProgram:
    program = program or current_program()
    unknown = [k for k in options if k not in KNOWN_OPTIONS]
    if unknown:
        raise TypeError(f"unknown compile options {unknown}; known: {list(KNOWN_OPTIONS)}")
    device = device or default_device()
    if device not in DEVICES:
        raise ValueError(f"unknown device '{device}'; choose one of {DEVICES}")
    if device != "numpy":
        raise NotImplementedError(f"device '{device}' is not implemented yet; use device='numpy' "
                                  "(see TODO.md)")
    disable = frozenset(options.get("disable") or ())
    unknown_switches = sorted(disable - set(known_switches()))
    if unknown_switches:
        raise ValueError(f"disable: unknown names {unknown_switches}; known: {list(known_switches())}")
    return CompiledProgram(program, device, disable, options.get("dump_passes"))


def execute_program(program: Program | None = None, device: str | None = None, **options: Any) -> Report:
    return compile_program(program, device, **options).run()


def compile(device: str | None = None, **options: Any) -> CompiledProgram:  # noqa: A001 - public API
    """Compile the current program without running it (see `CompiledProgram.run`)."""
    return compile_program(None, device, **options)


def execute(device: str | None = None, **options: Any) -> Report:
    """Compile and run the current program once; persistent tensors get their new values."""
    return execute_program(None, device, **options)
