"""The one way the frontend reaches the compiler: an entry point the compiler registers.

`Program.execute()` needs the compiler, and the compiler needs the IR the frontend
builds. Importing the compiler from here would put every stage inside one import
circle; instead `autodiff.compiler` calls `register_compiler(module)` when it is
imported (importing `autodiff` imports it), and the frontend asks for it here.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

_compiler: ModuleType | None = None


def register_compiler(module: ModuleType) -> None:
    global _compiler
    _compiler = module


def compiler() -> ModuleType:
    if _compiler is None:   # only when a frontend module is used without `import autodiff`
        import importlib
        importlib.import_module("autodiff.compiler")
    assert _compiler is not None, "autodiff.compiler did not register itself"
    return _compiler


_printer: Any = None


def register_printer(print_graph: Any) -> None:
    """`autodiff.printing.print_graph`, registered by `autodiff/__init__.py` (ad.jit's
    `Lowered.print` prints its program's stages with it)."""
    global _printer
    _printer = print_graph


def printer() -> Any:
    if _printer is None:
        import importlib
        importlib.import_module("autodiff")
    return _printer
