"""Elementwise kernels with explicit vectors: each work-item computes W neighbouring outputs.

Element `e = W*gid + lane` of the output is substituted for the kernel's variables, and
the access expressions are simplified as usual. A load whose offset steps by one with
the lane reads `W` floats at once (`vload16(0, b1 + o1 + 16*gid)`); a load that does not
depend on the lane (a bias broadcast over rows, a scalar) is one float, which the vector
arithmetic widens. Anything else keeps the scalar kernel: a load that strides or wraps
inside the vector (the lanes cross a row of 3), gathers, guards (padding, concatenation),
reductions, random bits, integers and casts. W is the widest of 16, 8, 4 that divides
the output's size and passes that check.

Why explicit: GPUs read 16 bytes per work-item in one transaction; CPUs' OpenCL already
vectorizes across the work-items of a group, but only where its vectorizer sees through
the index arithmetic (see BENCHMARKS.md for what it measures on PoCL).
"""
from __future__ import annotations

from ..proc.index import Index, Var, flat_index, unflatten
from ..proc.ir import Alu, Const, Expr, IndexValue, Kernel, Load, children, substitute_vars
from ..graph.ops import Op
from .renderer import CStyleLanguage, KernelRenderer, RenderedKernel, _Scope

VECTOR_WIDTHS = (16, 8, 4)
_SELECTIONS = (Op.LT, Op.GT, Op.EQ, Op.WHERE, Op.MAXIMUM, Op.MINIMUM)


def _without_lane(form: Index, lane: Var) -> Index:
    return form.substitute(lambda atom: Index.of(0) if atom == lane else None)


def _lane_step(form: Index, lane: Var) -> int | None:
    """1 if `form` steps by one with the lane, 0 if it does not depend on it, else None."""
    difference = form - _without_lane(form, lane)
    if difference == Index.of(0):
        return 0
    if difference == Index.of(lane):
        return 1
    return None


def _vector_value(kernel: Kernel, width: int) -> tuple[Expr, Var, Var]:
    """The kernel's value at element W*gid + lane, and the two variables."""
    gid = Var("gid", kernel.out.size // width)
    lane = Var("lane", width)
    digits = unflatten(Index.of(gid) * width + lane, kernel.out.shape)
    return substitute_vars(kernel.value, dict(zip(kernel.variables, digits))), gid, lane


def _vectorizes(value: Expr, lane: Var, buffers: dict) -> bool:
    stack, seen = [value], set()
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if getattr(e, "dtype", None) != "float32":
            return False
        if isinstance(e, Load):
            if e.buffer_id not in buffers or _lane_step(flat_index(e.indices, buffers[e.buffer_id].shape),
                                                        lane) is None:
                return False
        elif isinstance(e, IndexValue):
            if lane in e.index.variables():
                return False
        elif isinstance(e, Alu):
            if e.op is Op.CAST:
                return False
        elif not isinstance(e, Const):
            return False        # Guard, Reduce, RandomBits
        stack.extend(children(e))
    return True


def vector_width(kernel: Kernel, buffers: dict, widths: tuple[int, ...] = VECTOR_WIDTHS) -> int:
    """The widest vector the kernel can be written with, or 1."""
    if kernel.out.dtype != "float32":
        return 1
    for width in widths:
        if kernel.out.size % width == 0 and kernel.out.size >= width:
            value, _, lane = _vector_value(kernel, width)
            if _vectorizes(value, lane, buffers):
                return width
    return 1


class VectorKernelRenderer(KernelRenderer):
    """KernelRenderer for a kernel `vector_width` accepted: values that depend on the lane
    are floatW, loads that step with it are vloadW, the store is one vstoreW."""

    def __init__(self, kernel: Kernel, language: CStyleLanguage, buffers: dict, width: int) -> None:
        super().__init__(kernel, language, buffers)
        self.width = width
        self.value_at, self.gid, self.lane = _vector_value(kernel, width)

    def is_vector(self, expr: Expr) -> bool:
        return self.lane in self.variables_of(expr)

    def value_type(self, expr: Expr) -> str:
        scalar = self.ctype(expr.dtype)
        return f"{scalar}{self.width}" if self.is_vector(expr) else scalar

    def load(self, expr: Load, scope: _Scope) -> str:
        slot = self.slot(expr.buffer_id)
        form = flat_index(expr.indices, self.buffers[expr.buffer_id].shape)
        offset = self.index(_without_lane(form, self.lane), scope)
        if _lane_step(form, self.lane) == 1:
            return f"vload{self.width}(0, b{slot} + o{slot} + {offset})"
        text = f"b{slot}[o{slot} + {offset}]"
        # a form that names the lane but does not depend on it is still a vector value
        return f"({self.value_type(expr)})({text})" if self.is_vector(expr) else text

    def alu(self, e: Alu, args: list[str]) -> str:
        """Selections are `select` over vectors (every operand widened, so that the condition
        is an int vector of the same width); the rest is C arithmetic, which widens scalars."""
        if not self.is_vector(e) or e.op not in _SELECTIONS:
            return super().alu(e, args)
        vector = self.value_type(e)
        a, b, *rest = [x if self.is_vector(arg) else f"({vector})({x})" for x, arg in zip(args, e.args)]
        one, zero = f"({vector})({self.literal(1, e.dtype)})", f"({vector})({self.literal(0, e.dtype)})"
        return {Op.LT: f"select({zero}, {one}, {a} < {b})", Op.GT: f"select({zero}, {one}, {a} > {b})",
                Op.EQ: f"select({zero}, {one}, {a} == {b})",
                Op.WHERE: f"select({rest[0] if rest else ''}, {b}, {a} != 0.0f)",
                Op.MAXIMUM: f"select({b}, {a}, {a} > {b} || {a} != {a})",
                Op.MINIMUM: f"select({b}, {a}, {a} < {b} || {a} != {a})"}[e.op]

    def render_body(self) -> tuple[list[str], int]:
        self.slot(self.kernel.out.id)
        self.var_names[self.gid] = "gid"
        self.var_names[self.lane] = "lane"   # never printed: every form is rendered at lane 0
        root = _Scope(None, variables=(self.gid, self.lane))
        result = self.value(self.value_at, root)
        if not self.is_vector(self.value_at):
            result = f"({self.ctype('float32')}{self.width})({result})"
        start = self.index(Index.of(self.gid) * self.width, root)
        store = f"vstore{self.width}({result}, 0, b0 + o0 + {start});"
        return root.lines + [store], self.gid.extent


def render_vector_kernel(kernel: Kernel, language: CStyleLanguage, buffers: dict, width: int) -> RenderedKernel:
    return VectorKernelRenderer(kernel, language, buffers, width).render()
