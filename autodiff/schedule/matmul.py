"""Which kernels are a matrix product (plus an epilogue) that the tiled matmul kernel computes.

A kernel matches when its value holds exactly one `sum[k](A[..] * B[..])` whose
operands are plain loads at affine offsets: A row-major (m, k) or transposed (k, m),
B row-major (k, n) or transposed (n, k), rows any distance apart (a lead), the batch
axes flattening into one stride (or 0 for a broadcast) or into two groups (batch and
head), the output packed (batch, m, n). Everything around the product (bias,
activation, `p - lr * grad`) becomes the epilogue, which `codegen/matmul.py` renders.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..ir.ops import Op
from ..proc.cost import TILED_DOT_WORK as MIN_WORK  # smaller products gain nothing from tiling
from ..proc.index import Index, Var, flat_index
from ..proc.ir import Alu, Expr, Kernel, Load, Reduce, walk_expr
from .tiling import DOT, MatmulShape, choose_tiling


@dataclass
class MatmulMatch:
    product: Reduce
    a: Load
    b: Load
    shape: MatmulShape
    a_offset: int
    b_offset: int
    folded_rows: int = 0     # when > 0, the batch was folded into m: the original m extent


def _linear(form: Index, allowed: tuple[Var, ...]) -> dict[Var, int] | None:
    """Coefficients of a purely linear form in `allowed` variables (None: not such a form)."""
    coefs: dict[Var, int] = {}
    for atom, coef in form.terms:
        if not isinstance(atom, Var) or atom not in allowed:
            return None
        coefs[atom] = coef
    return coefs


def _batch_stride(coefs: dict[Var, int], batch: tuple[Var, ...]) -> int | None:
    """One stride for the flattened batch index, or None when the batch axes do not flatten."""
    stride, expected = None, None
    for var in reversed(batch):
        c = coefs.get(var, 0)
        if stride is None:
            stride, expected = c, c * var.extent
            continue
        if c != expected:
            return None
        expected = c * var.extent
    return stride or 0


def match_matmul(kernel: Kernel, buffers: dict) -> MatmulMatch | None:
    product = single_product(kernel)
    if product is None:
        return None
    (k,) = product.variables
    a, b = product.body.args
    *batch, m, n = kernel.variables
    batch = tuple(batch)
    if m.extent < 2 or n.extent < 2 or k.extent < 2 or m.extent * n.extent * k.extent < MIN_WORK:
        return None
    fa = flat_index(a.indices, buffers[a.buffer_id].shape)
    fb = flat_index(b.indices, buffers[b.buffer_id].shape)
    ca, cb = _linear(fa, batch + (m, k)), _linear(fb, batch + (k, n))
    if ca is None or cb is None:
        a, b, fa, fb = b, a, fb, fa       # the product may list its operands the other way round
        ca, cb = _linear(fa, batch + (m, k)), _linear(fb, batch + (k, n))
        if ca is None or cb is None:
            return None
    M, N, K = m.extent, n.extent, k.extent
    # each operand contiguous along one of its axes, its rows at least a row apart (a head's
    # block read out of wider rows is fine: the row distance becomes the kernel's lead)
    if ca.get(k) == 1 and ca.get(m, 0) >= K:
        a_t, a_ld = False, ca[m]
    elif ca.get(m) == 1 and ca.get(k, 0) >= M:
        a_t, a_ld = True, ca[k]
    else:
        return None
    if cb.get(n) == 1 and cb.get(k, 0) >= N:
        b_t, b_ld = False, cb[k]
    elif cb.get(k) == 1 and cb.get(n, 0) >= K:
        b_t, b_ld = True, cb[n]
    else:
        return None
    if fa.const < 0 or fb.const < 0:
        return None
    a_lead = None if a_ld == (M if a_t else K) else a_ld
    b_lead = None if b_ld == (K if b_t else N) else b_ld
    if (a_lead or b_lead) and choose_tiling(M, N, K, a_t, b_t).strategy == DOT:
        # measured: the dot-product tiling reading rows of a head out of wider rows took
        # 2.6-3.5x the time of the same kernel on packed operands, more than the copy
        return None
    count = int(np.prod([v.extent for v in batch], dtype=np.int64)) if batch else 1
    sa, sb = _batch_stride(ca, batch), _batch_stride(cb, batch)
    if sa is not None and sb is not None and min(sa, sb) >= 0:
        if count > 1 and sb == 0 and not a_t and sa == M * K and a_lead is None:
            # a batch of row blocks against one B (a Linear on (batch, seq, features)) is one
            # product with count * M rows: bigger tiles, fewer edges, one launch-wide grid
            shape = MatmulShape(M * count, N, K, 1, False, b_t, 0, 0, b_lead=b_lead)
            return MatmulMatch(product, a, b, shape, fa.const, fb.const, folded_rows=M)
        shape = MatmulShape(M, N, K, count, a_t, b_t, sa, sb, a_lead, b_lead)
        return MatmulMatch(product, a, b, shape, fa.const, fb.const)
    split = _batch_split(ca, cb, batch)
    if split is None:
        return None
    inner, sa, a_inner, sb, b_inner = split
    shape = MatmulShape(M, N, K, count, a_t, b_t, sa, sb, a_lead, b_lead, inner, a_inner, b_inner)
    return MatmulMatch(product, a, b, shape, fa.const, fb.const)


def _batch_split(ca: dict[Var, int], cb: dict[Var, int], batch: tuple[Var, ...]) -> tuple[int, ...] | None:
    """Batch axes that do not flatten into one stride, as two groups that each do (attention's
    (batch, head) over rows of heads): (inner count, A outer, A inner, B outer, B inner strides)."""
    for cut in range(1, len(batch)):
        outer, inner = batch[:cut], batch[cut:]
        strides = [_batch_stride(ca, outer), _batch_stride(ca, inner), _batch_stride(cb, outer),
                   _batch_stride(cb, inner)]
        if all(s is not None and s >= 0 for s in strides):
            count = int(np.prod([v.extent for v in inner], dtype=np.int64))
            return (count, strides[0], strides[1], strides[2], strides[3])
    return None


def single_product(kernel: Kernel, operand: Callable[[Expr], bool] = lambda x: isinstance(x, Load)) -> Reduce | None:
    """The kernel's one product sum_k a * b of two operands that pass `operand` (default:
    plain loads), if any. Equal copies of it are one product: fusion inlines a producer once
    per use (relu(x) = where(x > 0, x, 0) reads it twice), and the epilogue reads the
    accumulator for each copy."""
    products = list(dict.fromkeys(e for e in walk_expr(kernel.value) if isinstance(e, Reduce)))
    if len(products) != 1 or len(kernel.variables) < 2 or kernel.out.dtype != "float32":
        return None
    product = products[0]
    if (product.op is Op.SUM and len(product.variables) == 1 and isinstance(product.body, Alu)
            and product.body.op is Op.MUL and all(operand(x) for x in product.body.args)):
        return product
    return None
