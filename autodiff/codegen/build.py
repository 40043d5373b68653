"""Building all kernels of a program as one source, shared by the OpenCL and CUDA runtimes."""
from __future__ import annotations

from typing import Callable, TypeVar

from ..errors import KernelBuildError
from .renderer import CStyleLanguage, RenderedKernel

Built = TypeVar("Built")


def numbered(source: str) -> str:
    return "\n".join(f"{n:4d}  {line}" for n, line in enumerate(source.splitlines(), 1))


def unique_kernels(rendered: list[RenderedKernel]) -> tuple[list[str], list[tuple[str, str]]]:
    """(function name of each kernel, the distinct (function name, source) pairs): equal
    bodies share a name."""
    name_of_body: dict[str, str] = {}
    names: list[str] = []
    distinct: list[tuple[str, str]] = []
    for r in rendered:
        if r.body not in name_of_body:
            name_of_body[r.body] = r.name
            distinct.append((r.name, r.body.replace("{name}", r.name)))
        names.append(name_of_body[r.body])
    return names, distinct


def program_source(language: CStyleLanguage, sources: list[str]) -> str:
    """One program: the language's preamble, then the kernel functions."""
    return language.preamble() + "\n" + "\n\n".join(sources) + "\n"


def build_kernels(language: CStyleLanguage, rendered: list[RenderedKernel], build: Callable[[str], Built],
                  failure: type[Exception], compiler: str) -> tuple[Built, list[str], str]:
    """(what `build(source)` made of the whole program, each kernel's function name, the source)."""
    names, kernels = unique_kernels(rendered)
    return build_sources(language, kernels, build, failure, compiler), names, program_source(
        language, [body for _, body in kernels])


def build_sources(language: CStyleLanguage, kernels: list[tuple[str, str]], build: Callable[[str], Built],
                  failure: type[Exception], compiler: str) -> Built:
    """What `build` made of one program of these (function name, source) kernels.

    When the program fails to build, each kernel is built alone, so the error names the
    one that fails, with its numbered source and `compiler`'s log.
    """
    source = program_source(language, [body for _, body in kernels])
    try:
        return build(source)
    except failure as err:
        for name, body in kernels:
            single = program_source(language, [body])
            try:
                build(single)
            except failure as log:
                raise KernelBuildError(f"kernel {name} failed to build:\n{numbered(single)}\n"
                                       f"--- {compiler} log ---\n{log}") from None
        raise KernelBuildError(f"the program failed to build:\n{numbered(source)}\n--- {compiler} log ---\n"
                               f"{err}") from None
