"""Megakernel source: small kernels as the stages of one single-work-group kernel.

Each stage is a kernel's body in a loop over its outputs with the work-group's work-items
(`gid += group`), then a barrier. A stage's text names no offset and no position, so the
stages of equal layers render to equal text and their megakernels share one function
(megakernel.py decides which kernels go together).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..proc.index import Var
from ..proc.ir import Kernel
from .renderer import LOCAL_SIZE, CStyleLanguage, Param, RenderedKernel
from .vector import renderer_for


@dataclass
class Stage:
    """One kernel as a stage of a megakernel. Its text names no offset and no position: it
    reads its buffers' element offsets from the launch's offset table (`tab`), so the stages
    of two equal layers render to equal text and their megakernels share one function."""
    name: str
    lines: list[str]
    table: list[int]        # buffer ids whose offsets the stage reads from `tab`, in order
    outer: list[Var]        # the loop variables named L0, L1, ... in its text
    constants: list[float]  # the float constants K0, K1, ... it reads from `ktab`, in order

    @property
    def signature(self) -> str:
        return "\n".join(self.lines)


def render_stage(kernel: Kernel, language: CStyleLanguage, buffers: dict,
                 where: Callable[[int], str], group: int = LOCAL_SIZE, vectorize: bool = False) -> Stage:
    """`where(buffer id)` names the device buffer ("arena" or "state") a buffer lives in."""
    renderer = renderer_for(kernel, language, buffers, vectorize)
    body, size = renderer.render_body()
    qualifier = f"{language.buffer_qualifier} " if language.buffer_qualifier else ""
    lines = ["{"]
    for buffer_id, slot in renderer.slots.items():
        ctype = renderer.ctype(buffers[buffer_id].dtype)
        lines.append(f"    {qualifier}{ctype}* b{slot} = ({qualifier}{ctype}*){where(buffer_id)};")
        lines.append(f"    const int o{slot} = tab[{slot}];")
    for n in range(len(renderer.outer_vars)):
        lines.append(f"    const int L{n} = @{n}@;")      # bound to the megakernel's V names
    for n, name in enumerate(renderer.constants.values()):
        lines.append(f"    const float {name} = ktab[{n}];")
    lines.append(f"    for (int gid = {language.local_id}; gid < {size}; gid += {group}) {{")
    lines += ["        " + line for line in body]
    lines += ["    }", "}", f"tab += {len(renderer.slots)};"]
    if renderer.constants:
        lines.append(f"ktab += {len(renderer.constants)};")
    lines.append(language.barrier)
    return Stage(kernel.name, lines, list(renderer.slots), list(renderer.outer_vars), list(renderer.constants))


def render_megakernel(name: str, stages: list[Stage], language: CStyleLanguage,
                      group: int = LOCAL_SIZE) -> RenderedKernel:
    """Several kernels as the stages of one single-work-group kernel, a barrier between stages.

    One launch instead of one per kernel: for small kernels the launch, not the work, is
    the cost. Buffers are not parameters here: each stage names the device buffer it uses,
    and reads its element offsets from an int table at `table + T` (`T` per launch) and its
    float constants from a float table at `constants + KT`.
    """
    outer: list[Var] = []
    text_lines: list[str] = []
    table: list[int] = []
    constants: list[float] = []
    for stage in stages:
        binding = {}
        for n, var in enumerate(stage.outer):
            if var not in outer:
                outer.append(var)
            binding[f"@{n}@"] = f"V{outer.index(var)}"
        # the kernel's name without its number, so equal layers still render equal text
        for line in [f"// {stage.name.rstrip('0123456789').rstrip('_')}"] + stage.lines:
            for placeholder, v in binding.items():
                line = line.replace(placeholder, v)
            text_lines.append(line)
        table += stage.table
        constants += stage.constants
    qualifier = f"{language.buffer_qualifier} " if language.buffer_qualifier else ""
    declarations = ([f"{qualifier}float* arena", f"{qualifier}float* state", f"{qualifier}const int* table",
                     "const int T", f"{qualifier}const float* constants", "const int KT"]
                    + [f"const int V{n}" for n in range(len(outer))])
    params = [Param("arena"), Param("state"), Param("table"), Param("table_base"), Param("constants"),
              Param("constants_base")] + [Param("var", var=v) for v in outer]
    text = "\n".join([f"{language.kernel_prefix} {{name}}({', '.join(declarations)}) {{",
                      f"    {qualifier}const int* tab = table + T;",
                      f"    {qualifier}const float* ktab = constants + KT;"]
                     + ["    " + line for line in text_lines] + ["}"])
    return RenderedKernel(name, text, params, group, group, table, constants)
