"""Elementwise kernels with explicit vectors: each work-item computes W neighbouring outputs.

Element `e = W*gid + lane` of the output is substituted for the kernel's variables and
the kernel is rendered with `lane` as a vector lane (lanes.py): loads that step with it
are vloadW, loads that do not are one float, and the result is stored with one vstoreW.
W is the widest of 16, 8, 4 that divides the output's size and for which every node
qualifies; other kernels keep the scalar renderer.

Why explicit: GPUs read 16 bytes per work-item in one transaction, and PoCL's implicit
vectorizer (across the work-items of a group) does not see through most index
arithmetic (measured in BENCHMARKS.md: 3-4x on elementwise kernels).
"""
from __future__ import annotations

from ..proc.index import Index, Var, unflatten
from ..proc.ir import Expr, Kernel, substitute_vars
from .lanes import vectorizes, widest
from .renderer import CStyleLanguage, KernelRenderer, _Scope


def _vector_value(kernel: Kernel, width: int) -> tuple[Expr, Var, Var]:
    """The kernel's value at element W*gid + lane, and the two variables."""
    gid = Var("gid", kernel.out.size // width)
    lane = Var("lane", width)
    digits = unflatten(Index.of(gid) * width + lane, kernel.out.shape)
    return substitute_vars(kernel.value, dict(zip(kernel.variables, digits))), gid, lane


def vector_width(kernel: Kernel, buffers: dict, widths: tuple[int, ...]) -> int:
    """The widest vector the kernel's outputs can be written with, or 1."""
    if kernel.out.dtype != "float32":
        return 1

    def fits(width: int) -> bool:
        value, _, lane = _vector_value(kernel, width)
        return vectorizes(value, lane, buffers)
    return widest(kernel.out.size, fits, widths)


class VectorKernelRenderer(KernelRenderer):
    """KernelRenderer for a kernel `vector_width` accepted: one vstoreW per work-item."""

    def __init__(self, kernel: Kernel, language: CStyleLanguage, buffers: dict, width: int) -> None:
        super().__init__(kernel, language, buffers, vectorize=True)
        self.width = width
        self.value_at, self.gid, self.lane = _vector_value(kernel, width)
        self.lanes[self.lane] = width

    def render_body(self) -> tuple[list[str], int]:
        self.slot(self.kernel.out.id)
        self.var_names[self.gid] = "gid"
        self.var_names[self.lane] = "lane"   # never printed: loads are rendered at lane 0
        root = _Scope(None, variables=(self.gid, self.lane))
        result = self.value(self.value_at, root)
        if self.lane_of(self.value_at) is None:
            result = f"({self.ctype('float32')}{self.width})({result})"
        start = self.index(Index.of(self.gid) * self.width, root)
        store = f"vstore{self.width}({result}, 0, b0 + o0 + {start});"
        return root.lines + [store], self.gid.extent


def renderer_for(kernel: Kernel, language: CStyleLanguage, buffers: dict, vectorize: bool) -> KernelRenderer:
    """The vector renderer where `vector_width` allows it, else the C renderer (which, with
    `vectorize`, still writes sums and maxima along a contiguous axis in vectors)."""
    width = vector_width(kernel, buffers, language.vector_widths) if vectorize and language.vector_loads else 1
    if width > 1:
        return VectorKernelRenderer(kernel, language, buffers, width)
    return KernelRenderer(kernel, language, buffers, vectorize)
