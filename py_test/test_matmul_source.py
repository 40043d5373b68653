"""The generated OpenCL matmul kernels against numpy, on PoCL.

All kernels of the module are rendered into one program and built once:
PoCL's build is cheap per kernel, but each kernel still compiles its
work-group function at its first launch (a few tenths of a second).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pytest

from autodiff.backends.tuning import candidate_tilings
from autodiff.codegen import matmul_source as ms

Shape = ms.MatmulShape


@dataclass(frozen=True)
class Case:
    """One kernel to check: the problem, optionally a forced tiling (else
    ``choose_tiling``'s) and an epilogue (its arguments and expected values
    come from ``_epilogue_arguments``)."""

    id: str
    shape: ms.MatmulShape
    tiling: ms.Tiling | None = None
    epilogue: ms.Epilogue = field(default_factory=ms.Epilogue)


CASES = [
    Case("1x1x1", Shape(1, 1, 1)),
    Case("3x5x7", Shape(3, 5, 7)),
    Case("17x33x19", Shape(17, 33, 19)),
    Case("64x64x64", Shape(64, 64, 64)),
    Case("1023x17x5", Shape(1023, 17, 5)),
    Case("3x300x700_one_row_block", Shape(3, 300, 700)),
    Case("5x1023x17", Shape(5, 1023, 17)),
    Case("17x5x1023", Shape(17, 5, 1023)),
    Case("255x255x255", Shape(255, 255, 255)),
    Case("96x48x600_packed", Shape(96, 48, 600)),
    # The transformer's shapes with batch 2 (m, n, k).
    Case("skinny_2x64x64", Shape(2, 64, 64)),
    Case("skinny_2x128x64", Shape(2, 128, 64)),
    Case("skinny_128x64x2", Shape(128, 64, 2)),
    Case("skinny_nt_2x64x128", Shape(2, 64, 128, b_transposed=True)),
    Case("skinny_tn_64x128x2", Shape(64, 128, 2, a_transposed=True)),
    # Transposed operands, with edges everywhere.
    Case("nt_17x33x19", Shape(17, 33, 19, b_transposed=True)),
    Case("tn_17x33x19", Shape(17, 33, 19, a_transposed=True)),
    Case("tt_17x33x19", Shape(17, 33, 19, a_transposed=True, b_transposed=True)),
    Case("tn_20x40x700_packed", Shape(20, 40, 700, a_transposed=True)),
    Case("tn_100x70x600", Shape(100, 70, 600, a_transposed=True)),
    Case("tn_pack_a_edges_37x45x1100", Shape(37, 45, 1100, a_transposed=True),
         ms.Tiling(ms.PACKED, 6, 16, (4, 2), 4, 128, pack_a=True)),
    Case("nt_dot_17x33x19", Shape(17, 33, 19, b_transposed=True), ms.Tiling(ms.DOT, 3, 3, (4, 1))),
    Case("nt_dot_5x7x3", Shape(5, 7, 3, b_transposed=True), ms.Tiling(ms.DOT, 2, 4, (2, 1))),
    Case("tt_outer_9x20x11", Shape(9, 20, 11, a_transposed=True, b_transposed=True),
         ms.Tiling(ms.OUTER, 4, 16, (2, 1))),
    Case("packed_wide_group_30x70x50", Shape(30, 70, 50), ms.Tiling(ms.PACKED, 6, 16, (2, 2), 4, 16)),
    # Batches, one operand broadcast (batch stride 0).
    Case("batch3_a_shared", Shape(17, 24, 9, batch=3, a_batch_stride=0)),
    Case("batch2_b_shared_nt", Shape(6, 16, 40, batch=2, b_batch_stride=0, b_transposed=True)),
    Case("batch2_packed", Shape(13, 20, 700, batch=2)),
    # Epilogues: a bias and relu with a scale, fused into the store.
    Case("epilogue_bias_relu", Shape(17, 33, 19),
         epilogue=ms.Epilogue("fmax(alpha * acc + bias[n], 0.0f)",
                              ("__global const float* bias", "const float alpha"))),
    Case("epilogue_bias_packed", Shape(7, 24, 600),
         epilogue=ms.Epilogue("acc + bias[b * 24 + n]", ("__global const float* bias",))),
]

# The rules at every vector width a device may get (4: no AVX; 16: AVX-512), and every
# candidate the autotuner may time (backends/tuning.py), with edges in m, n and k.
_WIDTH_SHAPES = [Shape(17, 33, 19), Shape(1, 3, 5), Shape(70, 50, 600), Shape(17, 33, 19, b_transposed=True),
                 Shape(20, 40, 700, a_transposed=True), Shape(9, 20, 11, a_transposed=True, b_transposed=True),
                 Shape(13, 20, 70, batch=2, a_batch_stride=0)]
for _w in ms.VECTOR_WIDTHS:
    for _n, _shape in enumerate(_WIDTH_SHAPES):
        CASES.append(Case(f"rule_float{_w}_{_n}", _shape, ms.rule_tiling(_shape, _w)))
# In the slow set: each kernel's first launch costs PoCL ~0.5 s cold (work-group function
# generation), and the tuner also drops a candidate that disagrees with the rule.
CANDIDATE_CASES = [Case(f"candidate_{n}_{c}", _WIDTH_SHAPES[n], tiling) for n in (0, 1, 3, 4)
                   for c, tiling in enumerate(candidate_tilings(_WIDTH_SHAPES[n], 16)[1:])]


def _opencl():
    """pyopencl and its first platform's devices, or a pytest skip."""
    cl = pytest.importorskip("pyopencl", reason="pyopencl is not installed")
    try:
        platforms = cl.get_platforms()
    except cl.Error as error:  # the ICD loader finds no platform
        pytest.skip(f"no OpenCL platform: {error}")
    devices = [d for p in platforms for d in p.get_devices()]
    if not devices:
        pytest.skip("no OpenCL device")
    return cl, devices[0]


def _build(cases: list[Case]):
    """Context, queue and every case's (kernel spec, cl.Kernel), from one build."""
    os.environ.setdefault("POCL_CPU_TARGET", "native")
    cl, device = _opencl()
    context = cl.Context([device])
    queue = cl.CommandQueue(context)
    specs = {case.id: ms.render_matmul(case.shape, case.epilogue, case.tiling, name=f"mm_{case.id}")
             for case in cases}
    source = "\n".join(spec.source for spec in specs.values())
    program = cl.Program(context, source).build(options=ms.BUILD_OPTIONS)
    kernels = {case_id: (spec, cl.Kernel(program, spec.name)) for case_id, spec in specs.items()}
    return cl, context, queue, kernels


@pytest.fixture(scope="module")
def built():
    return _build(CASES)


@pytest.fixture(scope="module")
def built_candidates():
    return _build(CANDIDATE_CASES)


def _operands(shape: ms.MatmulShape, rng: np.random.Generator):
    """Stored A and B (each with its own batch count) and their logical views."""
    a_dims = (shape.k, shape.m) if shape.a_transposed else (shape.m, shape.k)
    b_dims = (shape.n, shape.k) if shape.b_transposed else (shape.k, shape.n)
    a = rng.standard_normal((1 if shape.a_batch_stride == 0 else shape.batch, *a_dims)).astype(np.float32)
    b = rng.standard_normal((1 if shape.b_batch_stride == 0 else shape.batch, *b_dims)).astype(np.float32)
    a_logical = a.transpose(0, 2, 1) if shape.a_transposed else a
    b_logical = b.transpose(0, 2, 1) if shape.b_transposed else b
    return a, b, np.matmul(a_logical.astype(np.float64), b_logical.astype(np.float64))


def _assert_close(actual: np.ndarray, expected: np.ndarray, k: int) -> None:
    # float32 accumulation over k terms: the absolute error grows like sqrt(k).
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.sqrt(k))


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_matches_numpy(built, case: Case) -> None:
    _check(built, case)


@pytest.mark.slow
@pytest.mark.parametrize("case", CANDIDATE_CASES, ids=[case.id for case in CANDIDATE_CASES])
def test_every_tuner_candidate_matches_numpy(built_candidates, case: Case) -> None:
    _check(built_candidates, case)


def _check(built, case: Case) -> None:
    cl, context, queue, kernels = built
    spec, kernel = kernels[case.id]
    shape = case.shape
    rng = np.random.default_rng(0)
    a, b, expected = _operands(shape, rng)
    flags = cl.mem_flags
    a_buf = cl.Buffer(context, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=a)
    b_buf = cl.Buffer(context, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=b)
    c_buf = cl.Buffer(context, flags.READ_WRITE, 4 * shape.batch * shape.m * shape.n)
    extra, expected = _epilogue_arguments(cl, context, case, expected, rng)
    kernel.set_args(c_buf, np.int64(0), a_buf, np.int64(0), b_buf, np.int64(0), *extra)
    cl.enqueue_nd_range_kernel(queue, kernel, spec.global_size, spec.local_size)
    result = np.empty((shape.batch, shape.m, shape.n), dtype=np.float32)
    cl.enqueue_copy(queue, result, c_buf)
    _assert_close(result, expected, shape.k)


def _epilogue_arguments(cl, context, case: Case, acc: np.ndarray, rng: np.random.Generator):
    """The extra kernel arguments of the case's epilogue and the expected output."""
    names = [ms.parameter_name(p) for p in case.epilogue.parameters]
    if names == []:
        return [], acc
    flags = cl.mem_flags
    if names == ["bias", "alpha"]:
        bias = rng.standard_normal(case.shape.n).astype(np.float32)
        alpha = np.float32(0.5)
        buffer = cl.Buffer(context, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=bias)
        return [buffer, alpha], np.maximum(alpha * acc + bias, 0.0)
    if names == ["bias"]:
        bias = rng.standard_normal((case.shape.batch, 1, case.shape.n)).astype(np.float32)
        buffer = cl.Buffer(context, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=bias)
        return [buffer], acc + bias
    raise AssertionError(f"no epilogue arguments for {names}")


def test_operands_in_one_arena_with_offsets(built) -> None:
    """A, B and C packed into a single buffer at odd element offsets (what the
    memory planner produces), with an in-place ``p - lr * grad`` epilogue that
    reads, through its own arena pointer, the very elements it overwrites."""
    cl, context, queue, _ = built
    shape = Shape(19, 40, 23, a_transposed=True)
    epilogue = ms.Epilogue("p[p_offset + m * 40 + n] - lr * acc",
                           ("__global const float* p", "const long p_offset", "const float lr"))
    spec = ms.render_matmul(shape, epilogue, name="mm_arena")
    program = cl.Program(context, spec.source).build(options=spec.build_options)
    kernel = cl.Kernel(program, spec.name)
    rng = np.random.default_rng(1)
    a, b, grad = _operands(shape, rng)
    p = rng.standard_normal((shape.m, shape.n)).astype(np.float32)
    a_offset = 3
    b_offset = a_offset + a.size + 5
    c_offset = b_offset + b.size + 1
    arena = np.zeros(c_offset + p.size + 7, dtype=np.float32)
    arena[a_offset:a_offset + a.size] = a.ravel()
    arena[b_offset:b_offset + b.size] = b.ravel()
    arena[c_offset:c_offset + p.size] = p.ravel()
    flags = cl.mem_flags
    buffer = cl.Buffer(context, flags.READ_WRITE | flags.COPY_HOST_PTR, hostbuf=arena)
    lr = np.float32(0.25)
    kernel.set_args(buffer, np.int64(c_offset), buffer, np.int64(a_offset), buffer, np.int64(b_offset),
                    buffer, np.int64(c_offset), lr)
    cl.enqueue_nd_range_kernel(queue, kernel, spec.global_size, spec.local_size)
    cl.enqueue_copy(queue, arena, buffer)
    _assert_close(arena[c_offset:c_offset + p.size].reshape(p.shape), p - lr * grad[0], shape.k)
    # Nothing outside C was written.
    assert not arena[:a_offset].any() and not arena[c_offset + p.size:].any()
    np.testing.assert_array_equal(arena[b_offset:b_offset + b.size], b.ravel())


# ---------------------------------------------------------------- no OpenCL needed


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (2, 64, 64), (128, 64, 2), (1023, 1023, 1023), (5, 3, 4096)])
@pytest.mark.parametrize("a_t,b_t", [(False, False), (True, False), (False, True), (True, True)])
def test_launch_grid_covers_the_output(m: int, n: int, k: int, a_t: bool, b_t: bool) -> None:
    spec = ms.render_matmul(Shape(m, n, k, batch=2, a_transposed=a_t, b_transposed=b_t))
    tiling = spec.tiling
    assert all(g % l == 0 for g, l in zip(spec.global_size, spec.local_size))
    assert spec.global_size[0] * tiling.rows >= m and spec.global_size[1] * tiling.cols >= n
    assert spec.global_size[2] == 2
    # No work-group made only of idle work-items.
    assert (spec.global_size[0] - spec.local_size[0]) * tiling.rows < m
    assert (spec.global_size[1] - spec.local_size[1]) * tiling.cols < n


def test_argument_order_and_names() -> None:
    epilogue = ms.Epilogue("acc * scale[m]", ("__global const float* restrict scale", "float lr"))
    spec = ms.render_matmul(Shape(4, 8, 2), epilogue, name="k")
    assert spec.arguments == ("c_data", "c_offset", "a_data", "a_offset", "b_data", "b_offset", "scale", "lr")
    assert spec.name == "k" and "void k(" in spec.source
    assert spec.build_options == ms.BUILD_OPTIONS


def test_parameter_name() -> None:
    assert ms.parameter_name("const float lr") == "lr"
    assert ms.parameter_name("__global const float* restrict bias") == "bias"
    with pytest.raises(ValueError):
        ms.parameter_name("float*")


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        ms.render_matmul(Shape(0, 4, 4))
    with pytest.raises(ValueError):
        ms.render_matmul(Shape(4, 4, 4), tiling=ms.Tiling(ms.OUTER, 4, 12, (1, 1)))
    with pytest.raises(ValueError):
        ms.render_matmul(Shape(4, 4, 4), tiling=ms.Tiling("magic", 4, 8, (1, 1)))
    with pytest.raises(ValueError, match="pack_a"):
        ms.render_matmul(Shape(40, 40, 40), tiling=ms.Tiling(ms.PACKED, 6, 16, (4, 1), pack_a=True))
    with pytest.raises(ValueError, match="dot strategy"):
        ms.render_matmul(Shape(4, 4, 4), tiling=ms.Tiling(ms.DOT, 2, 2, (1, 1)))


@pytest.mark.parametrize("m,n,k,a_t,b_t,strategy", [
    (1024, 1024, 1024, False, False, ms.PACKED),
    (1024, 1024, 1024, True, True, ms.PACKED),
    (1024, 1024, 1024, True, False, ms.PACKED),
    (1024, 1024, 1024, False, True, ms.DOT),
    (2, 2048, 2048, False, False, ms.OUTER),
    (2, 64, 64, False, False, ms.OUTER),
])
def test_choose_tiling_rules(m: int, n: int, k: int, a_t: bool, b_t: bool, strategy: str) -> None:
    assert ms.choose_tiling(m, n, k, a_t, b_t).strategy == strategy


# Operands read in place from larger tensors: rows `lead` apart, a batch of (batch, head)
# whose offset is outer * stride + inner * inner_stride (attention's heads split out of
# rows of 32 = 4 heads x 8).
STRIDED_CASES = [
    Case("heads_q_kT", Shape(24, 24, 8, batch=8, b_transposed=True, a_lead=32, b_lead=32,
                             a_batch_stride=24 * 32, b_batch_stride=24 * 32, batch_inner=4,
                             a_inner_stride=8, b_inner_stride=8)),
    Case("heads_p_v", Shape(24, 8, 24, batch=8, b_lead=32, a_batch_stride=4 * 24 * 24,
                            b_batch_stride=24 * 32, batch_inner=4, a_inner_stride=24 * 24, b_inner_stride=8)),
    Case("heads_dot_q_kT", Shape(24, 24, 8, batch=8, b_transposed=True, a_lead=32, b_lead=32,
                                 a_batch_stride=24 * 32, b_batch_stride=24 * 32, batch_inner=4,
                                 a_inner_stride=8, b_inner_stride=8), ms.Tiling(ms.DOT, 2, 4, (2, 1))),
    Case("lead_tn_17x33x19", Shape(17, 33, 19, a_transposed=True, a_lead=40, b_lead=41)),
    Case("lead_tt_17x33x19_b_shared", Shape(17, 33, 19, batch=6, a_transposed=True, b_transposed=True,
                                            a_lead=20, b_lead=23, a_batch_stride=3 * 19 * 20, b_batch_stride=0,
                                            batch_inner=3, a_inner_stride=19 * 20, b_inner_stride=0)),
    Case("lead_packed_30x70x600", Shape(30, 70, 600, b_lead=75)),
]


def _strided(flat: np.ndarray, shape: ms.MatmulShape, operand: str) -> np.ndarray:
    """The logical (batch, rows, cols) operand the kernel reads out of `flat`."""
    if operand == "a":
        rows, cols, transposed, ld = shape.m, shape.k, shape.a_transposed, shape.a_ld()
        outer, inner = shape.a_stride(), shape.a_inner_stride
    else:
        rows, cols, transposed, ld = shape.k, shape.n, shape.b_transposed, shape.b_ld()
        outer, inner = shape.b_stride(), shape.b_inner_stride
    b = np.arange(shape.batch)[:, None, None]
    r = np.arange(rows)[None, :, None]
    c = np.arange(cols)[None, None, :]
    start = (b // shape.batch_inner) * outer + (b % shape.batch_inner) * inner
    return flat[start + (c * ld + r if transposed else r * ld + c)]


@pytest.mark.parametrize("case", STRIDED_CASES, ids=[case.id for case in STRIDED_CASES])
def test_strided_operands_match_numpy(case: Case) -> None:
    cl, device = _opencl()
    context = cl.Context([device])
    queue = cl.CommandQueue(context)
    spec = ms.render_matmul(case.shape, case.epilogue, case.tiling, name=f"mm_{case.id}")
    kernel = cl.Kernel(cl.Program(context, spec.source).build(options=ms.BUILD_OPTIONS), spec.name)
    shape = case.shape
    rng = np.random.default_rng(1)
    flats = {}
    for operand in "ab":
        # big enough for the last element the kernel reads
        probe = _strided(np.arange(10 ** 7), shape, operand)
        flats[operand] = rng.standard_normal(int(probe.max()) + 1).astype(np.float32)
    expected = np.matmul(_strided(flats["a"], shape, "a").astype(np.float64),
                         _strided(flats["b"], shape, "b").astype(np.float64))
    flags = cl.mem_flags
    a_buf = cl.Buffer(context, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=flats["a"])
    b_buf = cl.Buffer(context, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=flats["b"])
    c_buf = cl.Buffer(context, flags.READ_WRITE, 4 * shape.batch * shape.m * shape.n)
    kernel.set_args(c_buf, np.int64(0), a_buf, np.int64(0), b_buf, np.int64(0))
    cl.enqueue_nd_range_kernel(queue, kernel, spec.global_size, spec.local_size)
    result = np.empty((shape.batch, shape.m, shape.n), dtype=np.float32)
    cl.enqueue_copy(queue, result, c_buf)
    _assert_close(result, expected, shape.k)
