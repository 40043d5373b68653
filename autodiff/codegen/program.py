"""`render_program`: every kernel of a scheduled procedural program as source, for one language.

The one entry every code-generating backend uses. For each kernel it picks the renderer
(a matched matrix product: the tiled matmul generator; a long reduction with few outputs
on a GPU: a work-group per output; contiguous elementwise work: float vectors; the rest:
the C renderer), and with the "megakernel" feature it renders runs of small kernels as
the stages of megakernels (which runs, and where they are cut, is the scheduler's
`plan_megakernels`; stages that render to equal text are equal stages). With the
"iterations_per_launch" feature a loop whose body is one megakernel (and its Feeders and
Receivers) also gets that megakernel as a loop over several iterations (`Iterated`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Callable

from ..ir.dtypes import ITEMSIZE
from ..proc.index import Var
from ..proc.ir import FeedCmd, Kernel, KernelCmd, LoopCmd, ProcProgram, ReceiveCmd
from ..proc.structure import Structure, structure
from ..schedule.matmul import match_matmul
from ..schedule.tiling import MatmulShape, Tiling
from ..schedule.megakernel import is_small, iterated_loops, plan_megakernels
from .group_reduce import group_reduction, render_group_reduce
from .matmul import render_matmul_kernel
from .matmul_cuda import CudaTile
from .megakernel import Iterated, Stage, render_megakernel, render_stage
from .renderer import CStyleLanguage, RenderedKernel
from .transpose import render_transpose, transpose_axes
from .vector import renderer_for

# what render_program can be asked to use; a backend declares the ones its runtime supports
FEATURES = ("megakernel", "tiled_matmul", "vectorize", "group_reduce", "iterations_per_launch", "tiled_transpose")


@dataclass
class IteratedLoop:
    """A loop that runs `per_launch` iterations per launch of `rendered` (megakernel
    `megakernel`'s stages in a loop, `spec` says its rings)."""
    loop: LoopCmd
    megakernel: int
    per_launch: int
    spec: Iterated
    rendered: RenderedKernel


@dataclass
class RenderedProgram:
    singles: list[tuple[Kernel, RenderedKernel]]          # kernels launched one by one
    megakernels: list[tuple[list[KernelCmd], RenderedKernel]]   # runs of small kernels, one launch each
    iterated: list[IteratedLoop] = field(default_factory=list)

    @property
    def rendered(self) -> list[RenderedKernel]:
        return [r for _, r in self.singles] + [r for _, r in self.megakernels] + [i.rendered for i in self.iterated]

    def megakernel_of(self) -> dict[int, int]:
        """id(kernel command) -> index of the megakernel that runs it."""
        return {id(cmd): n for n, (group, _) in enumerate(self.megakernels) for cmd in group}


ChooseTiling = Callable[[MatmulShape], "Tiling | CudaTile"]
"""How a backend tiles a matched product (OpenCL: the autotuner's `Tuner.choose`; CUDA:
`cuda_tile` for the device's multiprocessors); without one, the language's rules."""


def render_single(kernel: Kernel, language: CStyleLanguage, buffers: dict, features: frozenset[str],
                  tilings: ChooseTiling | None = None) -> RenderedKernel:
    """One kernel launched alone, with the most specific renderer that applies."""
    if "tiled_matmul" in features:
        match = match_matmul(kernel, buffers)
        if match is not None:
            tiling = tilings(match.shape) if tilings is not None else None
            tiled = render_matmul_kernel(kernel, match, language, buffers, tiling, "vectorize" in features)
            if tiled is not None:
                return tiled
    if "group_reduce" in features and group_reduction(kernel) is not None:
        return render_group_reduce(kernel, language, buffers)
    if "tiled_transpose" in features and language.vector_loads:
        axes = transpose_axes(kernel, buffers, language.vector_widths)
        if axes is not None:
            return render_transpose(kernel, language, buffers, *axes)
    return renderer_for(kernel, language, buffers, "vectorize" in features).render()


def _render_memo() -> bool:
    """AUTODIFF_RENDER_MEMO=0 renders every kernel and stage (the suite agrees either way)."""
    return os.environ.get("AUTODIFF_RENDER_MEMO", "1") != "0"


def memoized_stages(language: CStyleLanguage, buffers: dict, where: Callable[[int], str],
                    vectorize: bool) -> Callable[[Kernel], Stage]:
    """`render_stage` once per kernel structure (proc/structure.py): the stages of repeated
    layers are rendered once and carried over, their buffers and loop variables mapped
    position by position (a model of L layers renders ~1/L of its stages)."""
    rendered: dict[tuple, tuple[Structure, Stage]] = {}
    memo = _render_memo()

    def render(kernel: Kernel) -> Stage:
        if not memo:
            return render_stage(kernel, language, buffers, where, vectorize=vectorize)
        shape = structure(kernel, buffers)
        key = (shape.key, tuple(where(b) for b in shape.buffers))
        if key not in rendered:
            rendered[key] = (shape, render_stage(kernel, language, buffers, where, vectorize=vectorize))
            return rendered[key][1]
        first, stage = rendered[key]
        buffer_of = dict(zip(first.buffers, shape.buffers))
        var_of = dict(zip(first.variables, shape.variables))
        return Stage(kernel.name, stage.lines, [buffer_of[b] for b in stage.table],
                     [var_of[v] for v in stage.outer], list(stage.constants))
    return render


def memoized_singles(language: CStyleLanguage, buffers: dict, features: frozenset[str],
                     tilings: ChooseTiling | None) -> Callable[[Kernel], RenderedKernel]:
    """`render_single` once per kernel structure, as `memoized_stages` does for stages: a
    kernel of a repeated layer gets the first one's text, its parameters' buffers and loop
    variables mapped position by position (the larger transformer's 105 single kernels
    have 56 structures). Which renderer applies and what it writes depend only on what the
    structure key holds: the expression, the loads' index forms, the buffers' shapes, dtypes
    and kinds, the constants' values."""
    rendered: dict[tuple, tuple[Structure, RenderedKernel]] = {}
    memo = _render_memo()

    def render(kernel: Kernel) -> RenderedKernel:
        if not memo:
            return render_single(kernel, language, buffers, features, tilings)
        shape = structure(kernel, buffers)
        if shape.key not in rendered:
            rendered[shape.key] = (shape, render_single(kernel, language, buffers, features, tilings))
            return rendered[shape.key][1]
        first, done = rendered[shape.key]
        buffer_of = dict(zip(first.buffers, shape.buffers))
        var_of = dict(zip(first.variables, shape.variables))
        params = [replace(p, buffer_id=buffer_of.get(p.buffer_id, p.buffer_id),
                          var=None if p.var is None else var_of[p.var]) for p in done.params]
        return RenderedKernel(kernel.name, done.body, params, done.global_size, done.local_size)
    return render


def _receives_by_position(loop: LoopCmd) -> list[tuple[int, int, int]]:
    """(kernels before it, buffer id, 32-bit words) of each buffer a Receiver of the body reads."""
    found, kernels = [], 0
    for cmd in loop.body:
        kernels += isinstance(cmd, KernelCmd)
        if isinstance(cmd, ReceiveCmd):
            found += [(kernels, b.id, b.nbytes // ITEMSIZE) for b in cmd.buffers]
    return found


def render_program(program: ProcProgram, language: CStyleLanguage, features: frozenset[str],
                   where: Callable[[int], str] = lambda buffer_id: "arena",
                   tilings: ChooseTiling | None = None) -> RenderedProgram:
    """`where(buffer id)` names the device buffer a megakernel stage reads a buffer from;
    `tilings` tiles the matched products."""
    unknown = set(features) - set(FEATURES)
    assert not unknown, f"unknown codegen features {sorted(unknown)}"
    buffers = {b.id: b for b in program.buffers}
    kernels = program.kernels()
    groups: list[list[KernelCmd]] = []
    stages = {}
    if "megakernel" in features:
        stage_of = memoized_stages(language, buffers, where, "vectorize" in features)
        stages = {id(k): stage_of(k) for k in kernels if is_small(k)}
        groups = plan_megakernels(program, lambda k: stages[id(k)].signature)
    grouped = {id(cmd.kernel) for group in groups for cmd in group}
    single_of = memoized_singles(language, buffers, features, tilings)
    singles = [(k, single_of(k)) for k in kernels if id(k) not in grouped]
    megakernels = [(group, render_megakernel(f"stages_{n}_{group[0].kernel.name}",
                                             [stages[id(c.kernel)] for c in group], language))
                   for n, group in enumerate(groups)]
    iterated = []
    if "iterations_per_launch" in features:
        for loop, n, per_launch in iterated_loops(program, groups):
            spec = Iterated(loop.variable, Var(f"count_{loop.variable.name}", per_launch + 1),
                            [(c.buffer.id, c.buffer.nbytes // ITEMSIZE) for c in loop.body if isinstance(c, FeedCmd)],
                            _receives_by_position(loop))
            rendered = render_megakernel(f"iterated_{n}_{groups[n][0].kernel.name}",
                                         [stages[id(c.kernel)] for c in groups[n]], language,
                                         iterated=spec, where=where)
            iterated.append(IteratedLoop(loop, n, per_launch, spec, rendered))
    return RenderedProgram(singles, megakernels, iterated)
