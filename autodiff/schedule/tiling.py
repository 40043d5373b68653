"""How a matrix product is cut into work: the problem's shape and the tiling rules.

The scheduler decides which kernels are tiled products and how each is tiled; code
generation (`codegen/matmul_source.py`) renders exactly that. Measurements behind the
rules are in `codegen/matmul_source.py`'s docstring and `benchmarks/bench_matmul_kernel.py`.
This module imports nothing of autodiff.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

VECTOR_WIDTH = 8
"""Floats per vector when the device is not known: one 256-bit AVX2 register. A device's
own is `device_vector_width` of its CL_DEVICE_NATIVE_VECTOR_WIDTH_FLOAT."""

VECTOR_WIDTHS = (4, 8, 16)
"""The float vector widths a tiling may use (``Tiling.vector_width``)."""

SMALL_PROBLEM_FLOPS = 64 * 64 * 64
"""m*n*k at or below which a kernel is all launch overhead (a few microseconds)."""

OUTER = "outer"
"""Strategy: per k, broadcast A scalars times float8 rows of B (B contiguous along n)."""
DOT = "dot"
"""Strategy: float8 dot products along k (A and B both contiguous along k)."""
PACKED = "packed"
"""Strategy: OUTER, with each k-chunk of the work-group's B panel first copied
into contiguous local memory (any B layout; no cache-set conflicts)."""


@dataclass(frozen=True)
class MatmulShape:
    """The problem: ``batch`` products of an (m, k) matrix by a (k, n) matrix.

    ``a_transposed`` means A is stored as its (k, m) transpose in row-major
    order, likewise ``b_transposed`` stores B as (n, k). A batch stride of
    ``None`` means "packed" (m*k for A, k*n for B); 0 broadcasts one matrix
    over the batch. C is always packed: (batch, m, n) row-major.
    """

    m: int
    n: int
    k: int
    batch: int = 1
    a_transposed: bool = False
    b_transposed: bool = False
    a_batch_stride: int | None = None
    b_batch_stride: int | None = None
    # the distance between the stored rows of A and of B (None: packed, the row length),
    # e.g. attention reads a head's (seq, 32) block out of rows of 128
    a_lead: int | None = None
    b_lead: int | None = None
    # a batch of two axes that do not flatten into one stride (batch, head): batch index b
    # is (b // batch_inner, b % batch_inner), the batch strides step the first, these the second
    batch_inner: int = 1
    a_inner_stride: int = 0
    b_inner_stride: int = 0

    def a_stride(self) -> int:
        return self.m * self.k if self.a_batch_stride is None else self.a_batch_stride

    def b_stride(self) -> int:
        return self.k * self.n if self.b_batch_stride is None else self.b_batch_stride

    def a_ld(self) -> int:
        """Elements between consecutive stored rows of A ((k, m) rows when transposed)."""
        return self.a_lead or (self.m if self.a_transposed else self.k)

    def b_ld(self) -> int:
        """Elements between consecutive stored rows of B ((n, k) rows when transposed)."""
        return self.b_lead or (self.k if self.b_transposed else self.n)

    def batch_offset(self, operand: str) -> str:
        """C text of the element offset of batch `batch` in operand "a" or "b"."""
        outer, inner = ((self.a_stride(), self.a_inner_stride) if operand == "a"
                        else (self.b_stride(), self.b_inner_stride))
        if self.batch_inner == 1:
            return f"(long)batch * {outer}"
        return f"(long)(batch / {self.batch_inner}) * {outer} + (long)(batch % {self.batch_inner}) * {inner}"

    def operand_elements(self, operand: str) -> int:
        """Elements operand "a" or "b"'s buffer must hold: every batch's rows at their distance."""
        if operand == "a":
            rows = self.k if self.a_transposed else self.m
            lead, outer, inner = self.a_ld(), self.a_stride(), self.a_inner_stride
        else:
            rows = self.n if self.b_transposed else self.k
            lead, outer, inner = self.b_ld(), self.b_stride(), self.b_inner_stride
        farthest_batch = (self.batch - 1) // self.batch_inner * outer + (self.batch_inner - 1) * inner
        return farthest_batch + rows * lead

    def flops(self) -> int:
        return 2 * self.batch * self.m * self.n * self.k


@dataclass(frozen=True)
class Tiling:
    """How the output is cut into work.

    Each work-item computes a block of ``rows`` x ``cols`` outputs in float
    vectors of ``vector_width`` (``cols`` a multiple of it for ``OUTER`` and ``PACKED``);
    ``local_size`` counts work-items along (m, n); the k loop is unrolled
    ``k_unroll`` times. ``PACKED`` copies ``k_chunk`` rows of the group's B
    panel at a time to local memory, and with ``pack_a`` (transposed A only)
    the group's A panel as well.
    """

    strategy: str
    rows: int
    cols: int
    local_size: tuple[int, int]
    k_unroll: int = 1
    k_chunk: int = 512
    pack_a: bool = False
    vector_width: int = VECTOR_WIDTH


def device_vector_width(native_float_width: int) -> int:
    """The float vector width of a device's tilings: its native width (one register), within
    the widths a tiling may use (the OpenCL vector types from 4 to 16)."""
    return max(VECTOR_WIDTHS[0], min(VECTOR_WIDTHS[-1], native_float_width))


def rule_tiling(shape: MatmulShape, vector_width: int = VECTOR_WIDTH) -> Tiling:
    """`choose_tiling`'s rule for one problem."""
    return choose_tiling(shape.m, shape.n, shape.k, shape.a_transposed, shape.b_transposed, vector_width)


def choose_tiling(m: int, n: int, k: int, a_transposed: bool = False,
                  b_transposed: bool = False, vector_width: int = VECTOR_WIDTH) -> Tiling:
    """Pick the tiling for one problem by rule (the autotuner, `backends/tuning.py`, may
    measure a better one on the device).

    The rules and their numbers come from ``benchmarks/bench_matmul_kernel.py
    --sweep`` on a 2-core Zen CPU with PoCL 3.0 (see the module docstring); blocks are
    counted in vectors of ``vector_width``, so a wider register gets wider blocks.
    """
    w = vector_width
    if b_transposed and not a_transposed:
        # Both operands run along k in memory: float8 dot products need no
        # packing (1024^2: ~105 GFLOP/s against ~90 for the packed panel).
        rows, cols = min(2, m), min(4, n)
        return Tiling(DOT, rows, cols, (_work_group_extent(m, rows, 8), 1), vector_width=w)
    if w >= 16 and not b_transposed:
        # AVX-512 (float16 registers, 32 of them; machine F, Zen 4, PoCL 3.1): the autotuner
        # found 8 rows x one or two float16 read in place fastest for the larger
        # transformer's products (1.05-1.6x the AVX2 rules' blocks at float16, which packed
        # B's panel; one and two vectors within 3% there); the AVX2 rules scaled to float16
        # ran its step 20% slower than float8. Two vectors (16 accumulators) win on wide
        # products (256^2: 197 vs 144 GFLOP/s, 1024^2: 198 vs 116, 1024^2 A^T@B: 191 vs 99)
        # and lose up to 5% on the model's n = 128 ones.
        rows = min(8, m)
        cols = 2 * w if n >= 16 * w else w
        return Tiling(OUTER, rows, cols, (_work_group_extent(m, rows, 8), 1), k_unroll=4, vector_width=w)
    if m * n * k <= SMALL_PROBLEM_FLOPS:
        # Launch overhead dominates; small blocks give both threads work.
        rows = min(2, m)
        cols = w * min(max(1, 32 // w), math.ceil(n / w))
        return Tiling(OUTER, rows, cols, (_work_group_extent(m, rows, 8), 1), k_unroll=4, vector_width=w)
    # 6 rows x 2 vectors = 12 accumulators + 2 B vectors + 1 broadcast
    # A value: the largest block that fits the 16 AVX2 registers.
    rows = min(6, m)
    cols = w if n <= w else 2 * w
    if m <= rows:
        # One block of rows reads each B panel once: nothing to gain from
        # packing it (2x2048x2048: 9.5 vs 7.6 GFLOP/s, memory bound).
        return Tiling(OUTER, rows, cols, (1, 1), k_unroll=4, vector_width=w)
    # B's panel is copied to local memory in chunks of 512 k and shared by
    # the 16 work-items of a group: read in place, rows N*4 bytes apart fall
    # into the same cache sets (1024^2: 104 vs 127 GFLOP/s), and a transposed
    # B cannot be read as vectors at all.
    group_m = _work_group_extent(m, rows, 16)
    # pack_a (A^T's panel copied too, 4 column blocks sharing it) is never chosen:
    # it gained on the 2-core Zen CPU (1024^2, one thread: 45 vs 34 GFLOP/s), but on
    # an AVX-512 Xeon PoCL 3.0 computed wrong columns for some shapes with edges in
    # both m and n (20x40x700, 30x30x30), and was no faster there (1024^2: 144-150
    # vs 150-155 GFLOP/s). Explicit tilings may still ask for it.
    return Tiling(PACKED, rows, cols, (group_m, 1), k_unroll=4, k_chunk=512, vector_width=w)


def _work_group_extent(size: int, block: int, preferred: int) -> int:
    """Work-items per group along one axis: ``preferred`` unless the axis is
    shorter, so small problems do not launch groups of idle work-items."""
    items = math.ceil(size / block)
    return max(1, min(preferred, items))
