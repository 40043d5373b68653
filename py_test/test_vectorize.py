"""Elementwise kernels written with float vectors (codegen/vector.py): which kernels
qualify, and their values on OpenCL against numpy (with the switch off as the control)."""
from __future__ import annotations

import re

import numpy as np
import pytest

import autodiff as ad
from autodiff.backends.opencl import opencl_available
from autodiff.codegen.lanes import VECTOR_WIDTHS
from autodiff.codegen.vector import row_vector_width, vector_width

needs_opencl = pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")


def _only_kernel_width(build) -> int:
    """Trace `build()`, lower it, and return the vector width of its one elementwise kernel."""
    out = build()
    ad.Receiver(lambda v: None, [out])
    compiled = ad.compile(device="numpy-proc")
    kernels = compiled.proc.kernels()
    assert len(kernels) == 1, [k.name for k in kernels]
    return vector_width(kernels[0], {b.id: b for b in compiled.proc.buffers}, VECTOR_WIDTHS)


def _t(*shape: int) -> ad.Tensor:
    return ad.Tensor(np.ones(shape, np.float32))


@pytest.mark.parametrize("build, width", [
    (lambda: (_t(256, 512) + _t(512)).relu(), 16),               # a row broadcast steps with the lane
    (lambda: (_t(256, 512) - _t(256, 1)).exp(), 16),              # a column broadcast is one float
    (lambda: _t(1020) * 2.0, 4),                                  # 1020 = 4 * 255
    (lambda: _t(1023) * 2.0, 1),                                  # no width divides 1023
    (lambda: _t(1024, 3) + _t(3), 1),                             # lanes would cross rows of 3
    (lambda: _t(64, 48).T * 2.0, 1),                              # a transposed read strides
    (lambda: _t(64, 48).sum(1), 1),                               # lanes would step by rows of 48
    (lambda: _t(8, 64, 128).sum((0, 1)), 16),                     # a bias gradient: vector accumulator
    (lambda: _t(64, 40)[:, 8:] * 2.0, 16),                        # a slice: each row is contiguous
    (lambda: ad.cat([_t(64, 32), _t(32, 32)]) * 2.0, 16),        # rows of a concatenation: one test per vector
    (lambda: ad.cat([_t(64, 24), _t(64, 8)], 1) * 2.0, 1),        # columns: the test would change in a vector
])
def test_which_kernels_vectorize(build, width):
    assert _only_kernel_width(build) == width


def _only_kernel_row_width(build) -> int:
    out = build()
    ad.Receiver(lambda v: None, [out])
    compiled = ad.compile(device="numpy-proc")
    (kernel,) = compiled.proc.kernels()
    return row_vector_width(kernel, {b.id: b for b in compiled.proc.buffers}, VECTOR_WIDTHS)


@pytest.mark.parametrize("build, width", [
    (lambda: _t(255, 255) * 2.0, 16),                             # rows of 255: 15 vectors and a tail of 15
    (lambda: _t(3, 37) + _t(37), 16),                             # a row broadcast
    (lambda: _t(7, 9) - _t(7, 1), 8),                             # a column broadcast is one float
    (lambda: _t(1023) * 2.0, 16),                                 # one row
    (lambda: _t(5, 3) * 2.0, 1),                                  # rows shorter than every width
    (lambda: _t(256, 512) * 2.0, 1),                              # the size divides: vector_width's case
    (lambda: _t(37, 64).T * 2.0, 1),                              # a transposed read strides
])
def test_which_kernels_write_rows_of_vectors_with_a_tail(build, width):
    assert _only_kernel_row_width(build) == width


@needs_opencl
@pytest.mark.parametrize("megakernel", [True, False], ids=["stages", "single"])
@pytest.mark.parametrize("disable", [frozenset(), frozenset({"vectorize"})], ids=["vectors", "scalar"])
def test_rows_of_vectors_with_a_tail_match_numpy(disable, megakernel, rng):
    """Sizes no vector width divides: elementwise work, broadcasts, and an SGD update of a
    255 x 255 weight from a two-row product (examples/linear.py's)."""
    x = rng.standard_normal((255, 255)).astype(np.float32)
    g = rng.standard_normal((2, 255)).astype(np.float32)
    h = rng.standard_normal((2, 255)).astype(np.float32)
    row = rng.standard_normal((37,)).astype(np.float32)
    y = rng.standard_normal((3, 37)).astype(np.float32)
    tx, tg, th, trow, ty = (ad.Tensor(a) for a in (x, g, h, row, y))
    got: dict[str, np.ndarray] = {}
    outputs = {"update": tx - 0.01 * (tg.T @ th), "broadcast": (ty + trow).relu() * 2.0,
               "one row": ad.Tensor(x[0, :250]).exp()}
    ad.Receiver(lambda *vs: got.update(zip(outputs, vs)), list(outputs.values()))
    compiled = ad.compile(device="opencl", disable=disable | (set() if megakernel else {"megakernel"}))
    assert ("vstore16" in _kernel_texts(compiled)) == (not disable)
    compiled.run()
    expected = {"update": x - 0.01 * (g.T @ h), "broadcast": np.maximum(y + row, 0) * 2.0,
                "one row": np.exp(x[0, :250])}
    for name, want in expected.items():
        np.testing.assert_allclose(got[name], want, rtol=2e-6, atol=1e-6, err_msg=name)


@needs_opencl
@pytest.mark.parametrize("disable", [frozenset(), frozenset({"vectorize"})], ids=["vectors", "scalar"])
def test_vectorized_values_match_numpy(disable, rng):
    # 256 x 512 is past the megakernel size limit: every kernel here launches on its own
    x = (rng.standard_normal((256, 512)) * 30).astype(np.float32)
    x[0, :6] = [np.nan, np.inf, -np.inf, -100.0, 88.0, 0.0]
    bias = rng.standard_normal(512).astype(np.float32)
    column = rng.standard_normal((256, 1)).astype(np.float32)
    tx, tb, tc = ad.Tensor(x), ad.Tensor(bias), ad.Tensor(column)
    got: dict[str, np.ndarray] = {}
    outputs = {
        "exp": tx.exp(),
        "bias_relu": (tx + tb).relu(),
        "max_min": tx.maximum(tc).minimum(tb * 40.0),
        "where_gt": tx.where(tx > tb, tc),
        "lt_eq": (tx < tc) + tx.eq(0.0),
        "tanh_sqrt_div": (tx * 0.01).tanh() + (tx.abs() + 1.0).sqrt() / (tb.abs() + 0.5),
    }
    ad.Receiver(lambda *vs: got.update(zip(outputs, vs)), list(outputs.values()))
    compiled = ad.compile(device="opencl", disable=disable)
    vector_kernels = [name for name, source in compiled.kernels.items() if "vload" in source]
    assert bool(vector_kernels) == (not disable)
    compiled.run()
    with np.errstate(all="ignore"):
        expected = {
            "exp": np.exp(x),
            "bias_relu": np.where(x + bias <= 0, 0, x + bias),  # torch's relu: relu(nan) = nan
            "max_min": np.minimum(np.maximum(x, column), bias * 40.0),
            "where_gt": np.where(x > bias, x, column),
            "lt_eq": (x < column).astype(np.float32) + (x == 0).astype(np.float32),
            "tanh_sqrt_div": np.tanh(x * 0.01) + np.sqrt(np.abs(x) + 1) / (np.abs(bias) + 0.5),
        }
    for name, want in expected.items():
        np.testing.assert_allclose(got[name], want, rtol=2e-6, atol=1e-30, equal_nan=True, err_msg=name)


@needs_opencl
def test_vectorized_exp_equals_the_scalar_exp_bit_for_bit(rng):
    x = np.concatenate([np.linspace(-104, 90, 2 ** 16 - 8, dtype=np.float32),
                        np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 88.72, -87.33, 1e-8], np.float32)])
    results = []
    for disable in (frozenset(), frozenset({"vectorize"})):
        ad.reset()
        got: list[np.ndarray] = []
        ad.Receiver(got.append, [ad.Tensor(x).exp()])
        ad.execute(device="opencl", disable=disable | {"megakernel"})
        results.append(got[0])
    np.testing.assert_array_equal(results[0], results[1])


def _kernel_texts(compiled) -> str:
    """The generated kernels without the shared helper functions in front of them."""
    return "\n".join(source[source.index("__kernel"):] for source in compiled.kernels.values())


@needs_opencl
@pytest.mark.parametrize("megakernel", [True, False], ids=["stages", "single"])
@pytest.mark.parametrize("disable", [frozenset(), frozenset({"vectorize"})], ids=["vectors", "scalar"])
def test_vectorized_reductions_match_numpy(disable, megakernel, rng):
    x = rng.standard_normal((96, 64)).astype(np.float32)
    x[5, 7] = np.nan
    x[6, :] = -np.inf
    y = rng.standard_normal((40, 12)).astype(np.float32)
    z = rng.standard_normal((8, 7)).astype(np.float32)
    tx, ty, tz = ad.Tensor(x), ad.Tensor(y), ad.Tensor(z)
    outputs = {
        "softmax_sum": (tx - tx.max(1, keepdim=True)).exp().sum(1),     # rows of 64: 16 lanes
        "max_rows": tx.max(1),
        "sum_squares_12": (ty * ty).sum(1),                               # rows of 12: 4 lanes
        "sum_columns": ty.sum(0),                                         # 4 output lanes
        "max_columns": tx.max(0),                                         # 16 output lanes, NaN kept
        "sum_7": tz.sum(1),                                               # no width divides 7
        "mean_all": ty.mean(),
    }
    got: dict[str, np.ndarray] = {}
    ad.Receiver(lambda *vs: got.update(zip(outputs, vs)), list(outputs.values()))
    compiled = ad.compile(device="opencl", disable=disable | (set() if megakernel else {"megakernel"}))
    texts = _kernel_texts(compiled)
    assert ("ad_hsum(" in texts and "ad_hmax(" in texts) == (not disable)
    compiled.run()
    with np.errstate(all="ignore"):
        expected = {
            "softmax_sum": np.exp(x - x.max(1, keepdims=True)).sum(1),
            "max_rows": x.max(1),
            "sum_squares_12": (y * y).sum(1),
            "sum_columns": y.sum(0),
            "max_columns": x.max(0),
            "sum_7": z.sum(1),
            "mean_all": y.mean(),
        }
    for name, want in expected.items():
        np.testing.assert_allclose(got[name], want, rtol=2e-5, atol=1e-5, equal_nan=True, err_msg=name)


@needs_opencl
@pytest.mark.parametrize("megakernel", [True, False], ids=["stages", "single"])
@pytest.mark.parametrize("disable", [frozenset(), frozenset({"vectorize"})], ids=["vectors", "scalar"])
def test_vectorized_guards_match_numpy(disable, megakernel, rng):
    """Concatenations (guarded loads) in vectors: the rows of a weight gradient built from
    three products, as attention's q, k, v projections give it, and a column concatenation."""
    a, b, c = (rng.standard_normal((2, 32)).astype(np.float32) for _ in range(3))
    d = rng.standard_normal((2, 64)).astype(np.float32)
    e = rng.standard_normal((40, 20)).astype(np.float32)
    f = rng.standard_normal((40, 12)).astype(np.float32)
    ta, tb, tc, td, te, tf = (ad.Tensor(v) for v in (a, b, c, d, e, f))
    outputs = {
        "rows": ad.cat([td.T @ ta, td.T @ (tb * 2.0), td.T @ tc]).exp(),
        "columns": ad.cat([te, tf.relu()], 1) * 3.0 + 1.0,
    }
    got: dict[str, np.ndarray] = {}
    ad.Receiver(lambda *vs: got.update(zip(outputs, vs)), list(outputs.values()))
    compiled = ad.compile(device="opencl", disable=disable | (set() if megakernel else {"megakernel"}))
    guarded_vectors = [text for text in _kernel_texts(compiled).split("__kernel") if "if ((" in text and "vstore" in text]
    assert bool(guarded_vectors) == (not disable)   # the rows' kernel; the columns' stays scalar
    compiled.run()
    expected = {
        "rows": np.exp(np.concatenate([d.T @ a, d.T @ (b * 2), d.T @ c])),
        "columns": np.concatenate([e, np.maximum(f, 0)], 1) * 3.0 + 1.0,
    }
    for name, want in expected.items():
        np.testing.assert_allclose(got[name], want, rtol=2e-5, atol=1e-5, err_msg=name)


@needs_opencl
@pytest.mark.parametrize("megakernel", [True, False], ids=["stages", "single"])
@pytest.mark.parametrize("disable", [frozenset(), frozenset({"vectorize"})], ids=["vectors", "scalar"])
def test_vector_reductions_with_a_scalar_tail_match_numpy(disable, megakernel, rng):
    """Axes no vector width divides (37, 255: the linear example's products) run in vectors
    with a scalar loop over the last elements; NaN in the tail still wins a maximum."""
    y = rng.standard_normal((3, 7, 37)).astype(np.float32)
    y[1, 2, 35] = np.nan
    x = rng.standard_normal((2, 255)).astype(np.float32)
    w = rng.standard_normal((255, 3)).astype(np.float32)
    ty, tx, tw = ad.Tensor(y), ad.Tensor(x), ad.Tensor(w)
    outputs = {
        "max_37": ty.max(2),
        "sum_7x37": ty.sum((1, 2)),
        "exp_sum_37": (ty * 0.5).exp().sum(2),
        "rows_255": (tx * tx).sum(1),
        "product_255": tx @ tw,
    }
    got: dict[str, np.ndarray] = {}
    ad.Receiver(lambda *vs: got.update(zip(outputs, vs)), list(outputs.values()))
    compiled = ad.compile(device="opencl", disable=disable | (set() if megakernel else {"megakernel"}))
    assert ("float rest" in _kernel_texts(compiled)) == (not disable)
    compiled.run()
    with np.errstate(all="ignore"):
        expected = {"max_37": y.max(2), "sum_7x37": y.sum((1, 2)), "exp_sum_37": np.exp(y * 0.5).sum(2),
                    "rows_255": (x * x).sum(1), "product_255": x @ w}
    for name, want in expected.items():
        np.testing.assert_allclose(got[name], want, rtol=2e-5, atol=1e-5, equal_nan=True, err_msg=name)


def _unguarded_shifted_loads(source: str) -> list[str]:
    """Lines that load at a negative constant shift (a concatenation's later part: out of range
    for the earlier parts' rows) outside an `else` branch."""
    shifted = re.compile(r"(b\d+\[o\d+ \+[^\]]*\+ -\d+\])|(vload\d+\(0, b\d+ \+ o\d+ \+[^)]*\+ -\d+\))")
    found, blocks = [], []
    for line in source.splitlines():
        text = line.strip()
        if shifted.search(text) and "else" not in blocks:
            found.append(text)
        if text.startswith("} else {"):
            blocks[-1] = "else"
        elif text.endswith("{"):
            blocks.append("block")
        elif text.startswith("}"):
            blocks.pop()
    return found


@needs_opencl
@pytest.mark.parametrize("megakernel", [True, False], ids=["stages", "single"])
@pytest.mark.parametrize("disable", [frozenset(), frozenset({"vectorize"})], ids=["vectors", "scalar"])
def test_a_concatenations_last_part_is_read_only_for_its_rows(disable, megakernel, rng):
    """The last part of a concatenation is the guards' `otherwise`: it is computed in an `else`
    branch, never for the earlier parts' rows (its index there is before its buffer: on a GPU,
    a read out of range). Values as numpy's."""
    a, b, c = (rng.standard_normal((16, 8)).astype(np.float32) for _ in range(3))
    e, f = rng.standard_normal((24, 20)).astype(np.float32), rng.standard_normal((24, 12)).astype(np.float32)
    ta, tb, tc, te, tf = (ad.Tensor(v) for v in (a, b, c, e, f))
    outputs = [ad.cat([ta, tb * 2.0, tc]).exp(), ad.cat([te, tf.relu()], 1) * 3.0]
    got: list[np.ndarray] = []
    ad.Receiver(lambda *vs: got.extend(vs), outputs)
    compiled = ad.compile(device="opencl", disable=disable | (set() if megakernel else {"megakernel"}))
    texts = _kernel_texts(compiled)
    assert "} else {" in texts
    assert _unguarded_shifted_loads(texts) == []
    compiled.run()
    np.testing.assert_allclose(got[0], np.exp(np.concatenate([a, b * 2, c])), rtol=2e-6)
    np.testing.assert_allclose(got[1], np.concatenate([e, np.maximum(f, 0)], 1) * 3.0, rtol=2e-6)
