"""Elementwise kernels with explicit vectors: each work-item computes W neighbouring outputs.

Element `e = W*gid + lane` of the output is substituted for the kernel's variables and
the kernel is rendered with `lane` as a vector lane (lanes.py): loads that step with it
are vloadW, loads that do not are one float, and the result is stored with one vstoreW.
W is the widest of 16, 8, 4 that divides the output's size and for which every node
qualifies. Where no width divides the size but the last axis is at least W long (a 255 x 255
weight), each row is written in vectors with a scalar tail (`RowVectorRenderer`). Other
kernels keep the scalar renderer.

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


def _row_vector_value(kernel: Kernel, width: int) -> tuple[Var, Index, Expr, Var, Expr]:
    """For a kernel whose last axis (N) no width divides: (gid, its column block c, the value
    at column W*c + lane, lane, the value at tail column N//W*W + (c - N//W)). Work-item gid
    takes row gid / (N//W + N%W) and block c = gid % (N//W + N%W): the first N//W blocks are
    vectors, the rest one tail column each."""
    *rows, last = kernel.variables
    full, tail = last.extent // width, last.extent % width
    per_row = full + tail
    row_count = 1
    for v in rows:
        row_count *= v.extent
    gid = Var("gid", row_count * per_row)
    lane = Var("lane", width)
    block = Index.of(gid) % per_row
    digits = dict(zip(rows, unflatten(Index.of(gid) // per_row, tuple(v.extent for v in rows))))
    vector = substitute_vars(kernel.value, {**digits, last: block * width + lane})
    scalar = substitute_vars(kernel.value, {**digits, last: block + full * (width - 1)})
    return gid, block, vector, lane, scalar


def row_vector_width(kernel: Kernel, buffers: dict, widths: tuple[int, ...]) -> int:
    """The widest vector for the rows of a kernel whose output size no width divides (a
    255-wide weight), with a scalar tail per row; 1 where none applies."""
    if kernel.out.dtype != "float32" or not kernel.variables or kernel.out.size == 0:
        return 1
    last = kernel.variables[-1].extent

    def fits(width: int) -> bool:
        if last % width == 0:   # then the output size is divisible too: vector_width's case
            return False
        _, _, value, lane, _ = _row_vector_value(kernel, width)
        return vectorizes(value, lane, buffers)
    return next((w for w in widths if last >= w and fits(w)), 1)


class RowVectorRenderer(KernelRenderer):
    """KernelRenderer for a kernel `row_vector_width` accepted: per row, N//W work-items store
    a vector each and N%W work-items one float each (the row's tail)."""

    def __init__(self, kernel: Kernel, language: CStyleLanguage, buffers: dict, width: int) -> None:
        super().__init__(kernel, language, buffers, vectorize=True)
        self.width = width
        self.gid, self.block, self.vector_value, self.lane, self.scalar_value = _row_vector_value(kernel, width)
        self.lanes[self.lane] = width

    def render_body(self) -> tuple[list[str], int]:
        kernel, width = self.kernel, self.width
        self.slot(kernel.out.id)
        self.var_names[self.gid] = "gid"
        self.var_names[self.lane] = "lane"   # never printed: loads are rendered at lane 0
        full = kernel.variables[-1].extent // width
        root = _Scope(None, variables=(self.gid,))
        row_start = (Index.of(self.gid) // (full + kernel.variables[-1].extent % width)) * kernel.variables[-1].extent
        block = self.index(self.block, root)
        vectors = _Scope(root, variables=(self.lane,), guard=True)
        result = self.value(self.vector_value, vectors)
        if self.lane_of(self.vector_value) is None:
            result = f"({self.ctype('float32')}{width})({result})"
        start = self.index(row_start + self.block * width, vectors)
        vectors.lines.append(f"vstore{width}({result}, 0, b0 + o0 + {start});")
        tail = _Scope(root, guard=True)
        value = self.value(self.scalar_value, tail)
        at = self.index(row_start + self.block + full * (width - 1), tail)
        tail.lines.append(f"b0[o0 + {at}] = {value};")
        body = root.lines + [f"if ({block} < {full}) {{"] + ["    " + line for line in vectors.lines]
        body += ["} else {"] + ["    " + line for line in tail.lines] + ["}"]
        return body, self.gid.extent


def renderer_for(kernel: Kernel, language: CStyleLanguage, buffers: dict, vectorize: bool) -> KernelRenderer:
    """The vector renderer where `vector_width` allows it, then the row renderer with scalar
    tails (`row_vector_width`), else the C renderer (which, with `vectorize`, still writes
    sums and maxima along a contiguous axis in vectors)."""
    if not (vectorize and language.vector_loads):
        return KernelRenderer(kernel, language, buffers, vectorize)
    width = vector_width(kernel, buffers, language.vector_widths)
    if width > 1:
        return VectorKernelRenderer(kernel, language, buffers, width)
    width = row_vector_width(kernel, buffers, language.vector_widths)
    if width > 1:
        return RowVectorRenderer(kernel, language, buffers, width)
    return KernelRenderer(kernel, language, buffers, vectorize)
