"""What a kernel costs, and the thresholds that decide by cost: each with one owner, here.

Fusion (keep one large product per kernel), scheduling (which products are tiled, which
kernels are small enough to be megakernel stages) and code generation all measure
kernels the same way, so the measures and the thresholds live below all of them.
"""
from __future__ import annotations

from .ir import Kernel, Reduce, children, walk_expr

# multiply-adds from which a product gains from the tiled matmul kernel; smaller ones
# stay in the C renderer's per-output loop (and may be fused into other kernels)
TILED_DOT_WORK = 32 * 32 * 32


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
