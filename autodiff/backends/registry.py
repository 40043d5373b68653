"""The backend registry: each backend module registers one `Backend` record when imported.

The compiler driver names no device: it asks this registry which backend a name means,
whether that backend takes the procedural IR (and so needs lowering, fusion, the
schedule and a memory plan) and which switches it reads. `disable=` accepts every
switch that a compile stage or a registered backend declares.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

# the modules that register a backend, imported on first use of the registry (each one
# imports its device library, pyopencl or cupy, only when a program is compiled for it)
BACKEND_MODULES = ("numpy_graph", "numpy_proc", "opencl", "cuda")


@dataclass(frozen=True)
class Backend:
    """What the compiler needs to know of a backend.

    `executor(ir, plan, disable)` builds the runnable program: `ir` is the optimized graph's
    root block for a backend that runs the graph (`takes_proc` False, `plan` None), else the
    scheduled procedural program with its memory plan. `problem()` is None where the backend
    can run here, else one line saying why not. The default device is the first backend, by
    `preference` (lowest first), whose `problem()` is None, that is neither `reference_only`
    nor a `fallback`; else the fallback, with a warning that says why the others cannot run.
    """
    name: str
    executor: Callable[[Any, Any, frozenset[str]], Any]
    takes_proc: bool
    problem: Callable[[], str | None]
    preference: int
    language: str | None = None                # the codegen language, for backends that generate code
    features: tuple[str, ...] = ()             # codegen features it uses, each one a switch
    switches: tuple[str, ...] = ()             # other switches it reads
    description: str = ""
    fallback: bool = False                     # the default only when nothing else runs (slow)
    reference_only: bool = False               # a checker, never the default device
    untransposed_b: bool = False               # its tiled products want B as (k, n): the schedule
    #                                            copies a transposed B first (switch transposed_b_packing)


BACKENDS: dict[str, Backend] = {}
_loaded = False


def register(backend: Backend) -> Backend:
    BACKENDS[backend.name] = backend
    return backend


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BACKEND_MODULES:
            importlib.import_module(f"{__package__}.{module}")


def backends() -> list[Backend]:
    """Every registered backend, in order of preference."""
    _load()
    return sorted(BACKENDS.values(), key=lambda b: b.preference)


def backend(name: str) -> Backend:
    _load()
    if name not in BACKENDS:
        raise ValueError(f"unknown device '{name}'; choose one of {tuple(b.name for b in backends())}")
    return BACKENDS[name]


def backend_switches() -> tuple[str, ...]:
    """Every switch a registered backend declares, in registry order, once each."""
    names: list[str] = []
    for b in backends():
        names += [n for n in b.features + b.switches if n not in names]
    return tuple(names)
