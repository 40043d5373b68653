"""What a kernel costs, and the thresholds that decide by cost: each with one owner, here.

Fusion (keep one large product per kernel), scheduling (which products are tiled, which
kernels are small enough to be megakernel stages) and code generation all measure
kernels the same way, so the measures and the thresholds live below all of them.
"""
from __future__ import annotations

from ..ir.ops import Op
from .ir import Alu, Expr, Kernel, Reduce, children, walk_expr

# multiply-adds from which a product gains from the tiled matmul kernel; smaller ones
# stay in the C renderer's per-output loop (and may be fused into other kernels)
TILED_DOT_WORK = 32 * 32 * 32

# elementwise ops that a tiled product's epilogue does not take: the epilogue runs once per
# output element, lane by lane, beside the register block, where these are slow (machine F,
# PoCL 3.1): GELU's erf made a 0.45 ms product take 2.5 ms (4.3 ms while erf was PoCL's
# out-of-line call), and a 512 x 512 x 512 Linear + tanh training step took 8.5-9.5 ms with
# tanh in the epilogue against 7.0-8.2 ms apart (GELU's tanh form: 8.2-8.5 against 7.2-7.8).
# As elementwise kernels of their own they run on float vectors. exp (sigmoid, SiLU) is
# plain arithmetic on OpenCL (ad_exp) and measured the same either way: it stays fused.
HEAVY_EPILOGUE_OPS = frozenset({Op.ERF, Op.TANH})


def has_heavy_epilogue_op(expr: Expr) -> bool:
    return any(isinstance(e, Alu) and e.op in HEAVY_EPILOGUE_OPS for e in walk_expr(expr))


def reduce_work(kernel: Kernel) -> int:
    """Output elements times the longest reduction in the kernel: its multiply-adds for a dot."""
    longest = 1
    for e in walk_expr(kernel.value):
        if isinstance(e, Reduce):
            extent = 1
            for v in e.variables:
                extent *= v.extent
            longest = max(longest, extent)
    return kernel.out.size * longest


def kernel_work(kernel: Kernel) -> int:
    """Operations to compute the whole output: outputs x expression nodes, a node inside a
    reduction counted once per element it reduces (nested reductions multiply, side by
    side ones add; a node shared by several parents counts once, as the renderer emits it)."""
    total, seen, stack = 0, set(), [(kernel.value, 1)]
    while stack:
        e, times = stack.pop()
        if (id(e), times) in seen:
            continue
        seen.add((id(e), times))
        total += times
        if isinstance(e, Reduce):
            extent = 1
            for v in e.variables:
                extent *= v.extent
            stack.append((e.body, times * extent))
        else:
            stack.extend((child, times) for child in children(e))
    return max(kernel.out.size, 1) * total
