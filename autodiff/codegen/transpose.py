"""Transposing copies in square blocks of float vectors.

A copy kernel (a pack of a matrix product's operand, `schedule/packing.py`) whose output's
last axis `j` strides through its source while another output axis `i` is contiguous in
the source is a transpose: the scalar renderer reads one float per work-item, each
`stride` floats from its neighbour's (6-8 GB/s on PoCL, BENCHMARKS.md). Here each work-item
copies a W x W block instead: W vector loads along `i` (one per `j` of the block, contiguous
in the source), the block transposed in registers, W vector stores along `j` (contiguous
in the output). W is the widest of the language's vector widths up to 8 dividing both extents.
OpenCL only (vloadW/vstoreW, component access); the `tiled_transpose` switch turns it off.
"""
from __future__ import annotations

from ..proc.index import Index, Var, flat_index, unflatten
from ..proc.ir import Kernel, Load, substitute_vars
from .lanes import lane_step, spread
from .renderer import CStyleLanguage, KernelRenderer, RenderedKernel, _Scope

COMPONENTS = "0123456789abcdef"   # OpenCL's .s0 ... .sf
MAX_BLOCK_WIDTH = 8
"""Blocks of at most 8 x 8: on a Zen 4 (AVX-512, native float16) the larger model's packs took
0.48 ms per step in 8 x 8 blocks, 0.59 in 16 x 16 (16 vectors of 16 and the shuffles
building 16 more crowd the registers), 0.52 in 4 x 4, and 0.80-0.84 as scalar copies."""


def _steps_by_one(load: Load, var: Var, width: int, buffers: dict) -> bool:
    """Whether, with `var` = W*var' + lane, the load reads W neighbouring floats along the lane
    (div/mod forms count: a row of 64 read in blocks of 16 steps by one inside each block)."""
    spread_load, _, lane = spread(load, var, width)
    return lane_step(flat_index(spread_load.indices, buffers[load.buffer_id].shape), lane) == 1


def transpose_axes(kernel: Kernel, buffers: dict, widths: tuple[int, ...]) -> tuple[Var, Var, int] | None:
    """(i, j, W) where the kernel is a float copy, j its output's last axis and i another
    output axis along which blocks of W are contiguous in the source while j's are not (then
    the vector renderer's plain vector copy applies); else None."""
    value = kernel.value
    if not isinstance(value, Load) or value.dtype != "float32" or len(kernel.variables) < 2 \
            or value.buffer_id not in buffers or kernel.out.size == 0:
        return None
    j = kernel.variables[-1]
    for width in (w for w in widths if w <= MAX_BLOCK_WIDTH):
        if j.extent % width or _steps_by_one(value, j, width, buffers):
            continue
        for i in kernel.variables[:-1]:
            if i.extent % width == 0 and _steps_by_one(value, i, width, buffers):
                return i, j, width
    return None


class TransposeRenderer(KernelRenderer):
    """Renders a kernel `transpose_axes` accepted: work-item `gid` copies one W x W block."""

    def __init__(self, kernel: Kernel, language: CStyleLanguage, buffers: dict, i: Var, j: Var,
                 width: int) -> None:
        super().__init__(kernel, language, buffers, vectorize=True)
        self.i, self.j, self.width = i, j, width

    def render_body(self) -> tuple[list[str], int]:
        kernel, w = self.kernel, self.width
        self.slot(kernel.out.id)
        blocks = kernel.out.size // (w * w)
        gid = Var("gid", blocks)
        self.var_names[gid] = "gid"
        lane = Var("lane", w)   # along i: contiguous in the source
        self.var_names[lane] = "lane"
        self.lanes[lane] = w
        block_shape = tuple(v.extent // w if v in (self.i, self.j) else v.extent for v in kernel.variables)
        digits = dict(zip(kernel.variables, unflatten(Index.of(gid), block_shape)))
        i_first, j_first = digits[self.i] * w, digits[self.j] * w
        root = _Scope(None, variables=(gid, lane))
        columns = []   # column c of the block: source elements (i_first + lane, j_first + c)
        for c in range(w):
            at = {**digits, self.i: i_first + lane, self.j: j_first + c}
            columns.append(self.emit(root, f"float{w}", self.load(substitute_vars(kernel.value, at), root)))
        def row_start(row: int) -> Index:
            """The output element (i_first + row, j_first): where the block's row `row` starts."""
            at = {**digits, self.i: i_first + row, self.j: j_first}
            return flat_index(tuple(at[v] for v in kernel.variables), kernel.out.shape)

        lines = list(root.lines)
        for row in range(w):   # row r of the output block: component r of every column
            vector = ", ".join(f"{column}.s{COMPONENTS[row]}" for column in columns)
            lines.append(f"vstore{w}((float{w})({vector}), 0, b0 + o0 + {self.index(row_start(row), root)});")
        return lines, blocks


def render_transpose(kernel: Kernel, language: CStyleLanguage, buffers: dict, i: Var, j: Var,
                     width: int) -> RenderedKernel:
    return TransposeRenderer(kernel, language, buffers, i, j, width).render()
