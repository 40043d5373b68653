"""CUDA C++ source for the batched float32 products of `schedule/tiling.MatmulShape`.

The OpenCL generator (`matmul_source.py`) is written for PoCL on CPUs (a work-group runs on
one CPU thread; explicit float vectors). A GPU wants the classic shared-memory tiling:

* a block of `threads` threads computes a `block_m` x `block_n` tile of C; it walks k in
  chunks of `block_k`, the threads first copying the chunk's A panel (block_m x block_k)
  and B panel (block_k x block_n) into shared memory together, then each thread
  accumulating its `thread_m` x `thread_n` outputs from them in registers;
* the copies read along each operand's stored rows (A stored (k, m) transposed is read
  along m, A stored (m, k) along k; likewise B), so neighbouring threads read neighbouring
  addresses; out-of-range elements read as 0, so the k loop needs no edge code;
* a thread's outputs are rows `ty + i * (block_m / thread_m)` and columns `tx + j *
  (block_n / thread_n)`: neighbouring threads read neighbouring shared-memory words (no
  bank conflicts) and write neighbouring columns of C;
* the epilogue (bias, activation, an SGD update) is applied to each accumulated value as
  it is stored, as in the OpenCL kernels.

Shapes, strides and the tile are literals in the source; the grid is (column tiles, row
tiles, batch). `cuda_tile` picks the largest tile that still gives every multiprocessor a
block; the shapes that stay unfilled (few, long dot products) would want split-k, which
is not built (TODO.md). On an H200: 20-36 TFLOP/s in float32, 0.47-0.83x cuBLAS on large
products (BENCHMARKS.md); no double buffering, vector loads or tensor cores yet.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..schedule.tiling import MatmulShape
from .matmul_source import Epilogue, a_index, b_index

THREADS = 256
MAX_GRID_YZ = 65_535   # CUDA's limit on gridDim.y and gridDim.z


@dataclass(frozen=True)
class CudaTile:
    block_m: int
    block_n: int
    block_k: int
    thread_m: int
    thread_n: int

    @property
    def threads(self) -> int:
        return (self.block_m // self.thread_m) * (self.block_n // self.thread_n)


TILES = (CudaTile(128, 128, 8, 8, 8), CudaTile(64, 64, 16, 4, 4), CudaTile(32, 32, 32, 2, 2))
"""Largest first; each has THREADS threads and loads whole panels in whole rounds."""


@dataclass(frozen=True)
class CudaMatmulKernel:
    name: str
    source: str
    global_size: tuple[int, int, int]   # threads, as OpenCL counts them: grid * block per axis
    local_size: tuple[int, int, int]
    tile: CudaTile


def blocks(shape: MatmulShape, tile: CudaTile) -> int:
    return math.ceil(shape.m / tile.block_m) * math.ceil(shape.n / tile.block_n) * shape.batch


def cuda_tile(shape: MatmulShape, multiprocessors: int) -> CudaTile:
    """The largest tile that gives each of the device's multiprocessors a block, else the smallest."""
    for tile in TILES:
        if blocks(shape, tile) >= multiprocessors:
            return tile
    return TILES[-1]


def cuda_matmul_fits(shape: MatmulShape) -> bool:
    """The batch is a grid axis: at most 65,535 (larger batches stay untiled)."""
    return 1 <= shape.batch <= MAX_GRID_YZ and math.ceil(shape.m / TILES[-1].block_m) <= MAX_GRID_YZ


def _panel_copy(shape: MatmulShape, tile: CudaTile, operand: str) -> list[str]:
    """The block's threads copy operand "a" or "b"'s panel of chunk k0 into shared memory
    (`a_panel[kk][row]`, `b_panel[kk][column]`), reading along the operand's stored rows:
    along the tile's rows or columns, or along k. Out-of-range elements are 0."""
    if operand == "a":
        extent, origin, limit, along_tile = tile.block_m, "m0", shape.m, shape.a_transposed
        element = a_index(shape, "g", "gk")
    else:
        extent, origin, limit, along_tile = tile.block_n, "n0", shape.n, not shape.b_transposed
        element = b_index(shape, "gk", "g")
    lines = []
    for p in range(extent * tile.block_k // THREADS):
        at = f"(tid + {p * THREADS})"
        t, kk = ((f"{at} % {extent}", f"{at} / {extent}") if along_tile
                 else (f"{at} / {tile.block_k}", f"{at} % {tile.block_k}"))
        lines += ["    {",
                  f"      const int t = {t}, kk = {kk};",
                  f"      const long g = {origin} + t, gk = k0 + kk;   // long: the index may pass 2^31",
                  f"      {operand}_panel[kk][t] = (g < {limit} && gk < {shape.k}) ? {operand}[{element}] : 0.0f;",
                  "    }"]
    return lines


def render_cuda_matmul(shape: MatmulShape, epilogue: Epilogue, name: str, tile: CudaTile) -> CudaMatmulKernel:
    """One kernel: C[batch] = epilogue(A[batch] @ B[batch]), C packed (batch, m, n).
    Parameters: c, c_offset, a, a_offset, b, b_offset (offsets in elements, long), then the
    epilogue's."""
    assert tile.threads == THREADS and cuda_matmul_fits(shape), (tile, shape)
    bm, bn, bk, tm, tn = tile.block_m, tile.block_n, tile.block_k, tile.thread_m, tile.thread_n
    ty_count, tx_count = bm // tm, bn // tn
    macro = f"{name}_EPILOGUE"
    parameters = ["float* __restrict__ c_data", "const long c_offset",
                  "const float* __restrict__ a_data", "const long a_offset",
                  "const float* __restrict__ b_data", "const long b_offset", *epilogue.parameters]
    layout = (f"A {'(k, m) transposed' if shape.a_transposed else '(m, k)'}, "
              f"B {'(n, k) transposed' if shape.b_transposed else '(k, n)'}")
    lines = [
        f"// C[{shape.batch}] = A @ B with m={shape.m} n={shape.n} k={shape.k}; {layout}; rows {shape.a_ld()} "
        f"and {shape.b_ld()} apart; tile {bm}x{bn}x{bk}, {tm}x{tn} per thread",
        f"#define {macro}(acc, m, n, b) ({epilogue.expression})",
        f'extern "C" __global__ void __launch_bounds__({THREADS}) {name}(' + ", ".join(parameters) + ") {",
        f"  __shared__ float a_panel[{bk}][{bm + 4}];   // +4: the copies' stores spread over the banks",
        f"  __shared__ float b_panel[{bk}][{bn}];",
        "  const int tid = (int)threadIdx.x;",
        f"  const int tx = tid % {tx_count}, ty = tid / {tx_count};",
        f"  const int m0 = (int)blockIdx.y * {bm}, n0 = (int)blockIdx.x * {bn};",
        "  const int batch = (int)blockIdx.z;",
        f"  const float* a = a_data + a_offset + {shape.batch_offset('a')};",
        f"  const float* b = b_data + b_offset + {shape.batch_offset('b')};",
        f"  float* c = c_data + c_offset + (long)batch * {shape.m * shape.n};",
        f"  float acc[{tm}][{tn}];",
        "  #pragma unroll",
        f"  for (int i = 0; i < {tm}; i++)",
        "    #pragma unroll",
        f"    for (int j = 0; j < {tn}; j++) acc[i][j] = 0.0f;",
        f"  for (int k0 = 0; k0 < {shape.k}; k0 += {bk}) {{",
        *_panel_copy(shape, tile, "a"),
        *_panel_copy(shape, tile, "b"),
        "    __syncthreads();",
        "    #pragma unroll",
        f"    for (int kk = 0; kk < {bk}; kk++) {{",
        f"      float a_values[{tm}], b_values[{tn}];",
        "      #pragma unroll",
        f"      for (int i = 0; i < {tm}; i++) a_values[i] = a_panel[kk][ty + i * {ty_count}];",
        "      #pragma unroll",
        f"      for (int j = 0; j < {tn}; j++) b_values[j] = b_panel[kk][tx + j * {tx_count}];",
        "      #pragma unroll",
        f"      for (int i = 0; i < {tm}; i++)",
        "        #pragma unroll",
        f"        for (int j = 0; j < {tn}; j++) acc[i][j] += a_values[i] * b_values[j];",
        "    }",
        "    __syncthreads();",
        "  }",
        "  #pragma unroll",
        f"  for (int i = 0; i < {tm}; i++) {{",
        f"    const int m = m0 + ty + i * {ty_count};",
        "    #pragma unroll",
        f"    for (int j = 0; j < {tn}; j++) {{",
        f"      const int n = n0 + tx + j * {tx_count};",
        f"      if (m < {shape.m} && n < {shape.n}) c[(long)m * {shape.n} + n] = {macro}(acc[i][j], m, n, batch);",
        "    }",
        "  }",
        "}",
        f"#undef {macro}",
        "",
    ]
    grid = (math.ceil(shape.n / bn), math.ceil(shape.m / bm), shape.batch)
    return CudaMatmulKernel(name, "\n".join(lines), (grid[0] * THREADS, grid[1], grid[2]), (THREADS, 1, 1), tile)
