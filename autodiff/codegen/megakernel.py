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
from .renderer import CStyleLanguage, Param, RenderedKernel
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
                 where: Callable[[int], str], vectorize: bool = False) -> Stage:
    """`where(buffer id)` names the device buffer ("arena" or "state") a buffer lives in; the
    language's `megakernel_group` work-items share the stage's outputs."""
    group = language.megakernel_group
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


@dataclass
class Iterated:
    """A loop whose body is one megakernel, run `count` iterations per launch: before each
    iteration's stages its Feeder values are copied from a ring (`ring_in`, the values of
    iteration `it` at `it * in_words`) into their staging buffers, its Receivers' buffers
    are copied into a ring (`ring_out`) where the Receiver is in the body (after so many
    stages: a later stage may reuse the buffer's memory), and the loop variable is `first + it`."""
    variable: Var
    count: Var                          # the launch's iteration count, a launch argument
    feeds: list[tuple[int, int]]        # (staging buffer id, 32-bit words), in the body's order
    receives: list[tuple[int, int, int]]   # (stages before it, buffer id, words), in the body's order

    @property
    def in_words(self) -> int:
        return sum(words for _, words in self.feeds)

    @property
    def out_words(self) -> int:
        return sum(words for _, _, words in self.receives)


def _ring_copies(copies: list[tuple[int, int]], ring: str, ring_words: int, at: int, into_ring: bool,
                 language: CStyleLanguage, where: Callable[[int], str], group: int) -> list[str]:
    """Copy each buffer of `copies` from (or into) this iteration's slot of `ring` (from word
    `at` of the slot on), as 32-bit words (int32 Feeders too), its offset read from the table
    like a stage's; then a barrier."""
    q = f"{language.buffer_qualifier} " if language.buffer_qualifier else ""
    lines: list[str] = []
    for buffer_id, words in copies:
        slot = f"{ring}[it * {ring_words} + {at} + e]"
        buffer = f"b[tab[0] + e]"
        lines += ["{", f"    {q}uint* b = ({q}uint*){where(buffer_id)};",
                  f"    for (int e = {language.local_id}; e < {words}; e += {group}) "
                  f"{slot if into_ring else buffer} = {buffer if into_ring else slot};",
                  "}", "tab += 1;"]
        at += words
    return lines + [language.barrier] if copies else lines


def iterated_copies_out(iterated: Iterated, stages_before: int, table: list[int], language: CStyleLanguage,
                        where: Callable[[int], str], group: int) -> list[str]:
    """The Receiver copies that come after `stages_before` stages (their buffer ids appended
    to `table`, in the order the copies read them)."""
    here = [(b, words) for before, b, words in iterated.receives if before == stages_before]
    at = sum(words for before, _, words in iterated.receives if before < stages_before)
    table += [b for b, _ in here]
    return _ring_copies(here, "ring_out", iterated.out_words, at, True, language, where, group)


def render_megakernel(name: str, stages: list[Stage], language: CStyleLanguage,
                      iterated: Iterated | None = None,
                      where: Callable[[int], str] = lambda buffer_id: "arena") -> RenderedKernel:
    """Several kernels as the stages of one single-work-group kernel, a barrier between stages.

    One launch instead of one per kernel: for small kernels the launch, not the work, is
    the cost. Buffers are not parameters here: each stage names the device buffer it uses,
    and reads its element offsets from an int table at `table + T` (`T` per launch) and its
    float constants from a float table at `constants + KT`. With `iterated`, the stages run
    in a loop over several iterations of the program's loop (`Iterated`), in one launch.
    """
    group = language.megakernel_group
    outer: list[Var] = []
    text_lines: list[str] = []
    table: list[int] = []
    constants: list[float] = []
    for position, stage in enumerate(stages):
        if iterated is not None:
            text_lines += iterated_copies_out(iterated, position, table, language, where, group)
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
    if iterated is not None:
        text_lines += iterated_copies_out(iterated, len(stages), table, language, where, group)
    qualifier = f"{language.buffer_qualifier} " if language.buffer_qualifier else ""
    declarations = ([f"{qualifier}float* arena", f"{qualifier}float* state", f"{qualifier}const int* table",
                     "const int T", f"{qualifier}const float* constants", "const int KT"]
                    + [f"const int V{n}" for n in range(len(outer))])
    params = [Param("arena"), Param("state"), Param("table"), Param("table_base"), Param("constants"),
              Param("constants_base")] + [Param("var", var=v) for v in outer]
    tables = [f"{qualifier}const int* tab = table + T;", f"{qualifier}const float* ktab = constants + KT;"]
    if iterated is None:
        body = tables + text_lines
    else:
        # the loop variable's argument is the chunk's first iteration
        first = [n for n, v in enumerate(outer) if v == iterated.variable]
        for n in first:
            declarations[6 + n] += "_first"
        declarations += [f"{qualifier}uint* ring_in", f"{qualifier}uint* ring_out", "const int count"]
        params += [Param("ring_in"), Param("ring_out"), Param("var", var=iterated.count)]
        table = [b for b, _ in iterated.feeds] + table
        inner = (tables + [f"const int V{n} = V{n}_first + it;" for n in first]
                 + _ring_copies(iterated.feeds, "ring_in", iterated.in_words, 0, False, language, where, group)
                 + text_lines)
        # a do-while, not a for loop: a launch runs at least one iteration, and PoCL 3.1 (LLVM 15)
        # miscompiled the for loop's guarded entry around the barriers (stale values in a later
        # stage: Adam's bias moment, py_test/test_iterations_per_launch.py has the case)
        body = (["int it = 0;", "do {"] + ["    " + line for line in inner] + ["} while (++it < count);"])
    text = "\n".join([f"{language.kernel_prefix} {{name}}({', '.join(declarations)}) {{"]
                     + ["    " + line for line in body] + ["}"])
    return RenderedKernel(name, text, params, group, group, table, constants)
