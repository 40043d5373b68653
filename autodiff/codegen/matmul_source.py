"""OpenCL C source for batched float32 matmul kernels, tuned for PoCL on CPUs.

``render_matmul`` writes one kernel for one problem: ``C[b] = A[b] @ B[b]``
with ``A`` of logical shape (M, K) and ``B`` of (K, N), either operand
optionally stored transposed, batch strides (0 broadcasts) and an epilogue
expression applied to every accumulated value before it is stored (bias,
activation, an SGD update), so it fuses in registers. ``choose_tiling``
picks how the work is cut; the benchmark ``benchmarks/bench_matmul_kernel.py
--sweep`` measures the rules against the alternatives.

Why the kernels look the way they do (PoCL 3.0 / LLVM 14 pthread device on a
2-core AMD EPYC; LLVM targets znver3, so AVX2 with 16 vector registers):

* PoCL runs each work-group on one thread and loops over its work-items, so
  speed comes from each work-item computing a register block of outputs with
  explicit vectors of the tiling's width (``Tiling.vector_width``: 4, 8 or 16
  floats, from the device's native float width: one AVX2 register is float8,
  one AVX-512 register float16).
* Builtins are out-of-line calls in this PoCL: ``fma``/``mad`` run ~10x
  slower than ``acc += a * b`` (contracted to ``vfmadd`` by
  ``-cl-mad-enable``), and a ``vload8``/``vstore8``/``min`` call makes LLVM
  spill every accumulator around it. Vectors are therefore read and written
  through a 4-byte-aligned vector typedef (plain ``vmovups``) and clamps are
  conditionals.
* Shapes, strides and the tiling are literals in the source, so kernels whose
  sizes divide the tile have no edge code; only the buffer offsets are
  runtime arguments (the memory plan decides them).
* PoCL compiles the work-group function at the first launch for each local
  size (0.1-1 s per kernel, then cached on disk), so each kernel has one
  fixed local size, declared with ``reqd_work_group_size``.

The problem (``MatmulShape``) and the choice of tiling (``choose_tiling``) are the
scheduler's (``autodiff/schedule/tiling.py``); this module only renders them. It imports
nothing else from ``autodiff``, so it can be used and tested on its own (the autotuner,
``backends/tuning.py``, and ``benchmarks/bench_matmul_kernel.py`` render it directly).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..schedule.tiling import DOT, OUTER, PACKED, VECTOR_WIDTHS, MatmulShape, Tiling, choose_tiling, rule_tiling

BUILD_OPTIONS = "-cl-mad-enable"
"""Lets LLVM contract ``acc += a * b`` into fused multiply-adds."""

def unaligned_vector(width: int) -> str:
    """floatN with 4-byte alignment, so dereferencing it emits vmovups."""
    return f"matmul_float{width}_unaligned"


def unaligned_typedef(width: int) -> list[str]:
    # Guarded so several matmul kernels can share one program source.
    guard = f"MATMUL_FLOAT{width}_UNALIGNED_DEFINED"
    return [f"#ifndef {guard}", f"#define {guard}",
            f"typedef float {unaligned_vector(width)} __attribute__((ext_vector_type({width}), aligned(4)));",
            "#endif"]

@dataclass(frozen=True)
class Epilogue:
    """What is stored for each output: a C expression of ``acc`` (the float
    dot product), ``m``, ``n`` (int output coordinates) and ``b`` (the batch
    index), which may use the extra kernel ``parameters`` it declares, e.g.
    ``Epilogue("fmax(acc + bias[n], 0.0f)", ("__global const float* bias",))``.
    """

    expression: str = "acc"
    parameters: tuple[str, ...] = ()
    vector_expression: str | None = None
    """The same on a float vector: ``acc`` holds the outputs (m, n) ... (m, n + W - 1), W
    the tiling's vector width and ``n`` a multiple of it. Where given, whole vectors of
    outputs are stored through it instead of lane by lane through ``expression`` (which
    still writes the edges): the loads of a bias or a mask become vector loads beside the
    register block (a 512 x 512 x 128 product: 385 us plain, 480 with a bias added lane by
    lane, 385 with it added as a vector; machine F)."""

    def is_identity(self) -> bool:
        return self.expression.strip() == "acc"


@dataclass(frozen=True)
class MatmulKernel:
    """A rendered kernel and how to launch it.

    ``arguments`` are the parameter names in order: ``c_data, c_offset,
    a_data, a_offset, b_data, b_offset`` (buffers and int64 element offsets)
    followed by the epilogue's parameters.
    """

    name: str
    source: str
    global_size: tuple[int, int, int]
    local_size: tuple[int, int, int]
    arguments: tuple[str, ...]
    build_options: str
    tiling: Tiling
    local_memory_bytes: int
    """To check against the device's CL_DEVICE_LOCAL_MEM_SIZE (1 MiB on PoCL)."""


@dataclass(frozen=True)
class _Output:
    """How a body writes C: through the kernel's epilogue macro, or, when the
    epilogue is the identity, as whole float vectors of ``width``."""

    macro: str
    identity: bool
    width: int
    vector_macro: str | None = None   # the epilogue on whole vectors, where it has one


def render_matmul(shape: MatmulShape, epilogue: Epilogue = Epilogue(),
                  tiling: Tiling | None = None, name: str | None = None) -> MatmulKernel:
    """Render the OpenCL C source of one batched matmul kernel.

    ``tiling`` defaults to ``choose_tiling``'s; ``name`` to
    ``default_kernel_name``. Launch with ``global_size`` and ``local_size``
    exactly as returned, and the arguments in ``arguments`` order.
    """
    _check_shape(shape)
    if tiling is None:
        tiling = rule_tiling(shape)
    check_tiling(shape, tiling)
    if name is None:
        name = default_kernel_name(shape, tiling)
    output = _Output(f"{name}_EPILOGUE", epilogue.is_identity(), tiling.vector_width,
                     f"{name}_EPILOGUE_V" if epilogue.vector_expression and not epilogue.is_identity() else None)
    body = _BODY_RENDERERS[tiling.strategy](shape, tiling, output)
    local_size = (tiling.local_size[0], tiling.local_size[1], 1)
    global_size = (
        _round_up(math.ceil(shape.m / tiling.rows), local_size[0]),
        _round_up(math.ceil(shape.n / tiling.cols), local_size[1]),
        shape.batch,
    )
    source = _render_kernel(shape, tiling, epilogue, name, local_size, body)
    arguments = ("c_data", "c_offset", "a_data", "a_offset", "b_data", "b_offset")
    arguments += tuple(parameter_name(p) for p in epilogue.parameters)
    return MatmulKernel(name, source, global_size, local_size, arguments, BUILD_OPTIONS, tiling,
                        _local_memory_bytes(shape, tiling))


def _local_memory_bytes(shape: MatmulShape, tiling: Tiling) -> int:
    """Bytes of the kernel's __local panels (PoCL allocates them per group)."""
    if tiling.strategy != PACKED:
        return 0
    chunk = min(tiling.k_chunk, shape.k)
    group_m, group_n = tiling.local_size
    floats = chunk * tiling.cols * group_n
    if tiling.pack_a:
        floats += chunk * tiling.rows * group_m
    return 4 * floats


def default_kernel_name(shape: MatmulShape, tiling: Tiling) -> str:
    """A readable name, unique per shape and tiling only: pass ``name`` to
    ``render_matmul`` when one program holds kernels that differ in their
    epilogue or batch strides."""
    layout = ("t" if shape.a_transposed else "n") + ("t" if shape.b_transposed else "n")
    return (f"matmul_{layout}_{shape.batch}x{shape.m}x{shape.n}x{shape.k}"
            f"_{tiling.strategy}{tiling.rows}x{tiling.cols}v{tiling.vector_width}")


def parameter_name(declaration: str) -> str:
    """The identifier a C parameter declaration declares: ``"float lr"`` -> ``"lr"``."""
    match = re.search(r"([A-Za-z_]\w*)\s*(\[\s*\])?\s*$", declaration)
    if match is None:
        raise ValueError(f"cannot find the parameter name in {declaration!r}")
    return match.group(1)


def _check_shape(shape: MatmulShape) -> None:
    if min(shape.m, shape.n, shape.k, shape.batch) < 1:
        raise ValueError(f"matmul sizes must be positive, got {shape}")
    # Indices inside one matrix are 32-bit ints in the kernel.
    largest = max(shape.m * shape.k, shape.k * shape.n, shape.m * shape.n)
    if largest >= 2**31:
        raise ValueError(f"matrix of {largest} elements is too large for int indices")


def check_tiling(shape: MatmulShape, tiling: Tiling) -> None:
    if tiling.strategy not in _BODY_RENDERERS:
        raise ValueError(f"unknown matmul strategy {tiling.strategy!r}")
    sizes = (tiling.rows, tiling.cols, tiling.k_unroll, tiling.k_chunk, *tiling.local_size)
    if min(sizes) < 1:
        raise ValueError(f"tiling sizes must be positive, got {tiling}")
    w = tiling.vector_width
    if w not in VECTOR_WIDTHS:
        raise ValueError(f"tiling vector width must be one of {VECTOR_WIDTHS}, got {tiling}")
    if tiling.strategy in (OUTER, PACKED) and tiling.cols % w != 0:
        raise ValueError(f"{tiling.strategy} tiling needs cols divisible by {w}, got {tiling}")
    if tiling.pack_a and (tiling.strategy != PACKED or not shape.a_transposed
                          or (tiling.local_size[0] * tiling.rows) % w != 0):
        raise ValueError("pack_a needs the packed strategy, a transposed A and "
                         f"work-group rows divisible by {w}, got {tiling}")
    if tiling.strategy == DOT and (shape.a_transposed or not shape.b_transposed):
        raise ValueError("the dot strategy needs A (m, k) and B stored transposed as (n, k)")


def _round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple


def _render_kernel(shape: MatmulShape, tiling: Tiling, epilogue: Epilogue, name: str,
                   local_size: tuple[int, int, int], body: list[str]) -> str:
    # The epilogue is a macro so that its expression sees the kernel's
    # parameters; its name is per kernel, and it is undefined at the end, so
    # that several kernels can share one program source.
    macro = f"{name}_EPILOGUE"
    parameters = [
        "__global float* c_data", "const long c_offset",
        "__global const float* restrict a_data", "const long a_offset",
        "__global const float* restrict b_data", "const long b_offset",
        *epilogue.parameters,
    ]
    layout = (f"A {'(k, m) transposed' if shape.a_transposed else '(m, k)'}, "
              f"B {'(n, k) transposed' if shape.b_transposed else '(k, n)'}")
    lines = [
        f"// C[{shape.batch}] = A @ B with m={shape.m} n={shape.n} k={shape.k}; {layout};",
        f"// batch offsets A {shape.batch_offset('a')}, B {shape.batch_offset('b')}; "
        f"rows {shape.a_ld()} and {shape.b_ld()} apart; tiling {tiling}",
        *unaligned_typedef(tiling.vector_width),
        f"#define {macro}(acc, m, n, b) ({epilogue.expression})",
        *([f"#define {macro}_V(acc, m, n, b) ({epilogue.vector_expression})"] if epilogue.vector_expression else []),
        f"__kernel __attribute__((reqd_work_group_size({local_size[0]}, {local_size[1]}, 1)))",
        f"void {name}(" + ",\n    ".join(parameters) + ") {",
        f"  const int m0 = (int)get_global_id(0) * {tiling.rows};",
        f"  const int n0 = (int)get_global_id(1) * {tiling.cols};",
        "  const int batch = (int)get_global_id(2);",
        *_early_exit(shape, tiling),
        f"  __global const float* a = a_data + a_offset + {shape.batch_offset('a')};",
        f"  __global const float* b = b_data + b_offset + {shape.batch_offset('b')};",
        f"  __global float* c = c_data + c_offset + (long)batch * {shape.m * shape.n};",
        *body,
        "}",
        f"#undef {macro}",
        *([f"#undef {macro}_V"] if epilogue.vector_expression else []),
        "",
    ]
    return "\n".join(lines)


def _early_exit(shape: MatmulShape, tiling: Tiling) -> list[str]:
    """Work-items past the edge exist only to round the grid up to the local
    size. They may leave at once, except in kernels with barriers, where every
    work-item must reach every barrier (they compute on clamped rows instead)."""
    if tiling.strategy == PACKED:
        return []
    return [f"  if (m0 >= {shape.m} || n0 >= {shape.n}) return;"]


def a_index(shape: MatmulShape, row: str, k: str) -> str:
    """Element index of A[row, k] relative to the batch's A."""
    if shape.a_transposed:
        return f"({k}) * {shape.a_ld()} + ({row})"
    return f"({row}) * {shape.a_ld()} + ({k})"


def b_index(shape: MatmulShape, k: str, col: str) -> str:
    """Element index of B[k, col] relative to the batch's B."""
    if shape.b_transposed:
        return f"({col}) * {shape.b_ld()} + ({k})"
    return f"({k}) * {shape.b_ld()} + ({col})"


def _clamped(index: str, limit: int) -> str:
    """An index kept inside [0, limit): edge work-items load a valid (repeated)
    element instead of branching per load, and simply do not store it.
    A conditional, not ``min()``: builtins are out-of-line calls in PoCL."""
    return f"(({index}) < {limit} ? ({index}) : {limit - 1})"


def _load(pointer: str, width: int) -> str:
    """An unaligned vector load; ``vloadN`` would be an out-of-line call that
    forces every accumulator register to be spilled around it."""
    return f"*(__global const {unaligned_vector(width)}*)({pointer})"


def _store(value: str, pointer: str, width: int) -> str:
    return f"*(__global {unaligned_vector(width)}*)({pointer}) = {value};"


def _unroll_pragma(k_unroll: int) -> str:
    return f"  #pragma unroll {k_unroll}" if k_unroll > 1 else ""


# ---------------------------------------------------------------- outer product


def _render_outer_body(shape: MatmulShape, tiling: Tiling, output: _Output) -> list[str]:
    w = tiling.vector_width
    rows, vectors = tiling.rows, tiling.cols // w
    lines = [f"  float{w} acc_{i}_{j} = (float{w})(0.0f);"
             for i in range(rows) for j in range(vectors)]
    full_rows = shape.m % rows == 0
    full_cols = shape.n % tiling.cols == 0
    if full_rows and full_cols:
        lines += _outer_k_loop(shape, tiling, edge=False)
        lines += _outer_store(shape, tiling, output, edge=False)
        return lines
    # Interior tiles take the fast path; only the last row/column of tiles
    # pays for clamped loads and per-element guarded stores.
    interior = []
    if not full_rows:
        interior.append(f"m0 + {rows} <= {shape.m}")
    if not full_cols:
        interior.append(f"n0 + {tiling.cols} <= {shape.n}")
    lines.append(f"  if ({' && '.join(interior)}) {{")
    lines += _indent(_outer_k_loop(shape, tiling, edge=False))
    lines += _indent(_outer_store(shape, tiling, output, edge=False))
    lines.append("  } else {")
    lines += _indent(_outer_k_loop(shape, tiling, edge=True))
    lines += _indent(_outer_store(shape, tiling, output, edge=True))
    lines.append("  }")
    return lines


def _outer_k_loop(shape: MatmulShape, tiling: Tiling, edge: bool) -> list[str]:
    w = tiling.vector_width
    rows, vectors = tiling.rows, tiling.cols // w
    # Everything that does not depend on k is hoisted into pointers and int
    # offsets: 32-bit index arithmetic mixing m0 and k cannot be strength-
    # reduced by LLVM (signed overflow), and costs a lea+movslq per load.
    lines = []
    for i in range(rows):
        row = _clamped(f"m0 + {i}", shape.m) if edge else f"m0 + {i}"
        lines.append(f"  __global const float* a_{i} = a + {a_index(shape, row, '0')};")
    gathered = edge or shape.b_transposed
    if gathered:
        for j in range(vectors):
            for lane in range(w):
                col = f"n0 + {j * w + lane}"
                if edge:
                    col = _clamped(col, shape.n)
                lines.append(f"  const int b_{j}_{lane} = {b_index(shape, '0', col)};")
    if _unroll_pragma(tiling.k_unroll):
        lines.append(_unroll_pragma(tiling.k_unroll))
    lines.append(f"  for (int k = 0; k < {shape.k}; ++k) {{")
    b_step = 1 if shape.b_transposed else shape.b_ld()
    lines.append(f"    __global const float* b_k = b + k * {b_step};")
    for j in range(vectors):
        if gathered:
            lanes = ", ".join(f"b_k[b_{j}_{lane}]" for lane in range(w))
            vector = f"(float{w})({lanes})"
        else:
            vector = _load(f"b_k + n0 + {j * w}", w)
        lines.append(f"    const float{w} b_{j} = {vector};")
    a_step = shape.a_ld() if shape.a_transposed else 1
    for i in range(rows):
        # A scalar load feeds a broadcast straight from memory (vbroadcastss).
        lines.append(f"    const float a_{i}_k = a_{i}[k * {a_step}];")
        for j in range(vectors):
            lines.append(f"    acc_{i}_{j} += a_{i}_k * b_{j};")
    lines.append("  }")
    return lines


def _outer_store(shape: MatmulShape, tiling: Tiling, output: _Output, edge: bool) -> list[str]:
    w = tiling.vector_width
    rows, vectors = tiling.rows, tiling.cols // w
    lines = []
    for i in range(rows):
        for j in range(vectors):
            acc, row, first = f"acc_{i}_{j}", f"m0 + {i}", f"n0 + {j * w}"
            if not edge:
                lines.append(_store_vector(shape, output, acc, row, first))
                continue
            lines += [_store_scalar(shape, output, f"{acc}.s{lane:x}", row, f"{first} + {lane}", guarded=True)
                      for lane in range(w)]
    return lines


# ---------------------------------------------------------------- packed panel


def _render_packed_body(shape: MatmulShape, tiling: Tiling, output: _Output) -> list[str]:
    w = tiling.vector_width
    rows, vectors = tiling.rows, tiling.cols // w
    group_m, group_n = tiling.local_size
    chunk = min(tiling.k_chunk, shape.k)
    lines = [
        # The panel holds the whole work-group's columns: group_n blocks of cols.
        f"  __local float{w} panel[{chunk * vectors * group_n}];",
        f"  const int worker = (int)get_local_id(0) + {group_m} * (int)get_local_id(1);",
        f"  const int panel_n0 = (int)get_group_id(1) * {group_n * tiling.cols};",
        f"  const int my_vector0 = (int)get_local_id(1) * {vectors};",
    ]
    if tiling.pack_a:
        group_rows = group_m * rows
        lines += [
            # vector-aligned, so rows are copied as vectors.
            f"  __local float a_panel[{chunk * group_rows}] __attribute__((aligned({4 * w})));",
            f"  const int panel_m0 = (int)get_group_id(0) * {group_rows};",
            f"  const int my_row0 = (int)get_local_id(0) * {rows};",
        ]
    else:
        for i in range(rows):
            row = _clamped(f"m0 + {i}", shape.m)
            lines.append(f"  __global const float* a_{i} = a + {a_index(shape, row, '0')};")
    lines += [f"  float{w} acc_{i}_{j} = (float{w})(0.0f);" for i in range(rows) for j in range(vectors)]
    full_chunks = shape.k // chunk
    lines.append(f"  for (int kc = 0; kc < {full_chunks * chunk}; kc += {chunk}) {{")
    lines += _indent(_packed_chunk(shape, tiling, chunk))
    lines.append("  }")
    if shape.k % chunk:
        lines.append("  {")
        lines.append(f"    const int kc = {full_chunks * chunk};")
        lines += _indent(_packed_chunk(shape, tiling, shape.k % chunk))
        lines.append("  }")
    # Work-items past the edge (a grid rounded up to whole work-groups) stay to the end here,
    # for the barriers: their stores must be guarded even when the blocks divide m and n
    # (m = 144 in blocks of 6: 24 blocks, launched as 32 in groups of 16, wrote 48 rows
    # past the output and corrupted the heap).
    blocks_m, blocks_n = math.ceil(shape.m / rows), math.ceil(shape.n / tiling.cols)
    overhang = blocks_m % group_m != 0 or blocks_n % group_n != 0
    edge = shape.m % rows != 0 or shape.n % tiling.cols != 0 or overhang
    if edge:
        lines.append(f"  if (m0 + {rows} <= {shape.m} && n0 + {tiling.cols} <= {shape.n}) {{")
        lines += _indent(_outer_store(shape, tiling, output, edge=False))
        lines.append("  } else {")
        lines += _indent(_outer_store(shape, tiling, output, edge=True))
        lines.append("  }")
    else:
        lines += _outer_store(shape, tiling, output, edge=False)
    return lines


def _packed_chunk(shape: MatmulShape, tiling: Tiling, length: int) -> list[str]:
    """Pack B[kc:kc+length, panel columns] into ``panel``, then accumulate."""
    w = tiling.vector_width
    rows, vectors = tiling.rows, tiling.cols // w
    group_m, group_n = tiling.local_size
    panel_vectors = vectors * group_n
    lines = [
        # The previous chunk's readers must be done before the panel is overwritten.
        "  barrier(CLK_LOCAL_MEM_FENCE);",
        f"  for (int kk = worker; kk < {length}; kk += {group_m * group_n}) {{",
    ]
    b_step = 1 if shape.b_transposed else shape.b_ld()
    lines.append(f"    __global const float* b_k = b + (kc + kk) * {b_step};")
    contiguous = not shape.b_transposed
    panel_cols = panel_vectors * w
    loads = [f"    panel[kk * {panel_vectors} + {j}] = {_load(f'b_k + panel_n0 + {j * w}', w)};"
             for j in range(panel_vectors)]
    if contiguous and shape.n % panel_cols == 0:
        lines += loads
    else:
        gathers = []
        for j in range(panel_vectors):
            lanes = []
            for lane in range(w):
                col = f"panel_n0 + {j * w + lane}"
                # Columns past the edge are packed as zeros and never stored.
                lanes.append(f"({col} < {shape.n} ? b_k[{b_index(shape, '0', _clamped(col, shape.n))}] : 0.0f)")
            gathers.append(f"    panel[kk * {panel_vectors} + {j}] = (float{w})({', '.join(lanes)});")
        if contiguous:
            lines.append(f"    if (panel_n0 + {panel_cols} <= {shape.n}) {{")
            lines += _indent(loads)
            lines.append("    } else {")
            lines += _indent(gathers)
            lines.append("    }")
        else:
            lines += gathers
    lines.append("  }")
    if tiling.pack_a:
        lines += _pack_a_panel(shape, tiling, length)
    lines.append("  barrier(CLK_LOCAL_MEM_FENCE);")
    if _unroll_pragma(tiling.k_unroll):
        lines.append(_unroll_pragma(tiling.k_unroll))
    lines.append(f"  for (int kk = 0; kk < {length}; ++kk) {{")
    for j in range(vectors):
        lines.append(f"    const float{w} b_{j} = panel[kk * {panel_vectors} + my_vector0 + {j}];")
    a_step = shape.a_ld() if shape.a_transposed else 1
    group_rows = group_m * rows
    for i in range(rows):
        if tiling.pack_a:
            a_value = f"a_panel[kk * {group_rows} + my_row0 + {i}]"
        else:
            a_value = f"a_{i}[(kc + kk) * {a_step}]"
        lines.append(f"    const float a_{i}_k = {a_value};")
        for j in range(vectors):
            lines.append(f"    acc_{i}_{j} += a_{i}_k * b_{j};")
    lines.append("  }")
    return lines


def _pack_a_panel(shape: MatmulShape, tiling: Tiling, length: int) -> list[str]:
    """Copy A[group rows, kc:kc+length] into ``a_panel``, k-major, so that
    each work-item reads its rows' values for one k side by side. Only for a
    transposed A, whose rows are contiguous along m and copy as vectors."""
    w = tiling.vector_width
    group_m, group_n = tiling.local_size
    group_rows = group_m * tiling.rows
    vectors = group_rows // w
    lines = [
        f"  for (int kk = worker; kk < {length}; kk += {group_m * group_n}) {{",
        f"    __global const float* a_k = a + (kc + kk) * {shape.a_ld()} + panel_m0;",
        f"    __local float{w}* a_row = (__local float{w}*)(a_panel + kk * {group_rows});",
    ]
    copies = [f"    a_row[{v}] = {_load(f'a_k + {v * w}', w)};" for v in range(vectors)]
    if shape.m % group_rows == 0:
        lines += copies
    else:
        # The last group of rows is clamped element by element (those rows
        # are computed but never stored).
        lines.append(f"    if (panel_m0 + {group_rows} <= {shape.m}) {{")
        lines += _indent(copies)
        lines.append("    } else {")
        row = _clamped("panel_m0 + r", shape.m)
        lines.append(f"      for (int r = 0; r < {group_rows}; ++r) "
                     f"a_panel[kk * {group_rows} + r] = a[(kc + kk) * {shape.a_ld()} + {row}];")
        lines.append("    }")
    lines.append("  }")
    return lines


# ---------------------------------------------------------------- dot product


def _render_dot_body(shape: MatmulShape, tiling: Tiling, output: _Output) -> list[str]:
    w = tiling.vector_width
    rows, cols = tiling.rows, tiling.cols
    full_k = shape.k - shape.k % w
    lines = []
    # Row pointers are clamped once, so the loop has no edge branches at all.
    for i in range(rows):
        row = _clamped(f"m0 + {i}", shape.m)
        lines.append(f"  __global const float* a_{i} = a + {a_index(shape, row, '0')};")
    for j in range(cols):
        col = _clamped(f"n0 + {j}", shape.n)
        lines.append(f"  __global const float* b_{j} = b + {b_index(shape, '0', col)};")
    lines += [f"  float{w} acc_{i}_{j} = (float{w})(0.0f);" for i in range(rows) for j in range(cols)]
    if full_k > 0:
        if _unroll_pragma(tiling.k_unroll):
            lines.append(_unroll_pragma(tiling.k_unroll))
        lines.append(f"  for (int k = 0; k < {full_k}; k += {w}) {{")
        lines += [f"    const float{w} av_{i} = {_load(f'a_{i} + k', w)};" for i in range(rows)]
        lines += [f"    const float{w} bv_{j} = {_load(f'b_{j} + k', w)};" for j in range(cols)]
        lines += [f"    acc_{i}_{j} += av_{i} * bv_{j};" for i in range(rows) for j in range(cols)]
        lines.append("  }")
    for i in range(rows):
        for j in range(cols):
            # Pairwise horizontal sum of the vector's partial sums, halving it each time.
            half, part = w // 2, f"acc_{i}_{j}"
            while half > 1:
                lines.append(f"  const float{half} h{half}_{i}_{j} = {part}.lo + {part}.hi;")
                half, part = half // 2, f"h{half}_{i}_{j}"
            lines.append(f"  float sum_{i}_{j} = {part}.x + {part}.y;")
    if full_k < shape.k:
        lines.append(f"  for (int k = {full_k}; k < {shape.k}; ++k) {{")
        lines += [f"    sum_{i}_{j} += a_{i}[k] * b_{j}[k];" for i in range(rows) for j in range(cols)]
        lines.append("  }")
    edge = shape.m % rows != 0 or shape.n % cols != 0
    lines += [_store_scalar(shape, output, f"sum_{i}_{j}", f"m0 + {i}", f"n0 + {j}", guarded=edge)
              for i in range(rows) for j in range(cols)]
    return lines


# ---------------------------------------------------------------- stores


def _store_vector(shape: MatmulShape, output: _Output, acc: str, row: str, first_col: str) -> str:
    """Store one vector of outputs of one row at once (the tile is inside C)."""
    w = output.width
    value = acc
    if output.vector_macro is not None:
        value = f"{output.vector_macro}({acc}, ({row}), ({first_col}), batch)"
    elif not output.identity:
        lanes = [f"{output.macro}({acc}.s{lane:x}, ({row}), ({first_col} + {lane}), batch)"
                 for lane in range(w)]
        value = f"(float{w})({', '.join(lanes)})"
    return "  " + _store(value, f"c + ({row}) * {shape.n} + {first_col}", w)


def _store_scalar(shape: MatmulShape, output: _Output, value: str, row: str, col: str,
                  guarded: bool) -> str:
    """Store one output; ``guarded`` skips the clamped duplicates past the edge."""
    store = f"c[({row}) * {shape.n} + ({col})] = {output.macro}({value}, ({row}), ({col}), batch);"
    if guarded:
        store = f"if (({row}) < {shape.m} && ({col}) < {shape.n}) {store}"
    return "  " + store


def _indent(lines: list[str]) -> list[str]:
    return ["  " + line for line in lines]


_BODY_RENDERERS = {
    OUTER: _render_outer_body,
    PACKED: _render_packed_body,
    DOT: _render_dot_body,
}
"""Strategy -> function writing the kernel body after the common prologue."""
