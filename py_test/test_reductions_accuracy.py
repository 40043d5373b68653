"""Long reductions are accurate and empty ones are their identity, on every device and with
the switches that change how kernels reduce (issue: never a silently wrong number)."""
from __future__ import annotations

import numpy as np
import pytest

import autodiff as ad
import autodiff.nn.functional as F

SWITCHES = [set(), {"vectorize"}, {"megakernel", "vectorize"}, {"fusion"}]


def run(device: str, tensors: list, disable: set = frozenset()) -> list[np.ndarray]:
    got: list = []
    ad.Receiver(lambda *values: got.extend(np.array(v) for v in values), tensors)
    ad.execute(device, disable=set(disable))
    return got


def ulps_allowed(n: int) -> float:
    """Relative error allowed for a float32 reduction of n elements: a few ulps x log2(n)."""
    return 4 * max(np.log2(n), 1) * 2.0 ** -24


@pytest.mark.parametrize("disable", SWITCHES, ids=lambda d: "+".join(sorted(d)) or "all-on")
@pytest.mark.parametrize("n", [300, 4099, 1 << 20, 1 << 24])
def test_long_sums_of_a_constant_are_exact_to_a_few_ulps(device, n, disable):
    x = ad.Tensor(np.full(n, 0.1, np.float32), requires_grad=False)
    total, mean = run(device, [x.sum(), x.mean()], disable)
    exact = n * np.float64(np.float32(0.1))
    assert abs(float(total) - exact) <= ulps_allowed(n) * exact, (float(total), exact)
    assert abs(float(mean) - exact / n) <= ulps_allowed(n) * exact / n, (float(mean), exact / n)


@pytest.mark.parametrize("disable", SWITCHES[:2], ids=lambda d: "+".join(sorted(d)) or "all-on")
def test_long_sums_along_rows_and_columns(device, disable, rng):
    data = rng.random((64, 40_000)).astype(np.float32) + 1.0   # all positive: error cannot cancel
    x = ad.Tensor(data, requires_grad=False)
    rows, columns = run(device, [x.sum(1), x.T.sum(1)], disable)
    exact_rows, exact_columns = data.astype(np.float64).sum(1), data.astype(np.float64).sum(0)
    np.testing.assert_allclose(rows, exact_rows, rtol=ulps_allowed(40_000))
    np.testing.assert_allclose(columns, data.astype(np.float64).T.sum(1), rtol=ulps_allowed(64))
    assert exact_columns.shape == columns.shape


def test_mse_loss_over_a_large_tensor(device):
    n = 4096
    target = np.zeros((n, n), np.float32)
    prediction = ad.Tensor(np.full((n, n), 0.1, np.float32), requires_grad=False)
    (loss,) = run(device, [F.mse_loss(prediction, ad.Tensor(target, requires_grad=False))])
    exact = np.float64(np.float32(0.1)) ** 2
    assert abs(float(loss) - exact) <= ulps_allowed(n * n) * exact * 2, float(loss)


@pytest.mark.slow
@pytest.mark.parametrize("disable", SWITCHES[:2], ids=lambda d: "+".join(sorted(d)) or "all-on")
def test_sums_of_two_to_the_26(device, disable):
    n = 1 << 26
    x = ad.Tensor(np.full(n, 0.1, np.float32), requires_grad=False)
    total, mean = run(device, [x.sum(), x.mean()], disable)
    exact = n * np.float64(np.float32(0.1))
    assert abs(float(total) - exact) <= ulps_allowed(n) * exact
    assert abs(float(mean) - exact / n) <= ulps_allowed(n) * exact / n


# --- empty reductions ---------------------------------------------------------------------------

@pytest.mark.parametrize("disable", SWITCHES, ids=lambda d: "+".join(sorted(d)) or "all-on")
def test_reductions_over_an_empty_axis_are_their_identity(device, disable, rng):
    # something computed first, so the arena holds other values where the results go
    warm = ad.Tensor(rng.standard_normal((64, 64)).astype(np.float32))
    noise = (warm @ warm * 3.0).sum()
    product = ad.ones((5, 0)) @ ad.ones((0, 10))
    batched = ad.ones((3, 4, 0)) @ ad.ones((3, 0, 2))
    summed = ad.ones((0, 5, 10)).sum(0) * 2.0
    mean = ad.ones((0, 5)).mean(0)
    got = run(device, [noise, product, batched, summed, mean], disable)[1:]
    np.testing.assert_array_equal(got[0], np.zeros((5, 10), np.float32))
    np.testing.assert_array_equal(got[1], np.zeros((3, 4, 2), np.float32))
    np.testing.assert_array_equal(got[2], np.zeros((5, 10), np.float32))
    assert np.isnan(got[3]).all() and got[3].shape == (5,)


def test_a_maximum_over_an_empty_axis_is_an_error_as_in_torch():
    # torch: "max(): Expected reduction dim 0 to have non-zero size" (amax likewise)
    with pytest.raises(ad.TraceError, match="empty"):
        ad.ones((0, 5)).max(0)


@pytest.mark.parametrize("layer", ["linear", "layer_norm", "rms_norm"])
def test_gradients_over_an_empty_batch_are_zero(device, layer, rng):
    torch = pytest.importorskip("torch")
    w = ad.Tensor(rng.standard_normal((6, 4)).astype(np.float32), name="w")
    b = ad.Tensor(rng.standard_normal(6).astype(np.float32), name="b")
    x = ad.Tensor(np.ones((0, 4), np.float32), requires_grad=False)
    if layer == "linear":
        y = F.linear(x, w, b)
    elif layer == "layer_norm":
        y = F.layer_norm(x, (4,), w[0], b[:4])
    else:
        y = F.rms_norm(x, (4,), w[0])
    y.sum().backward()
    grads = run(device, [w.grad, b.grad] if layer != "rms_norm" else [w.grad])
    for g in grads:
        np.testing.assert_array_equal(g, np.zeros_like(g))
    assert torch.nn.functional.linear(torch.ones(0, 4), torch.ones(6, 4)).shape == (0, 6)


# --- sums whose work-items each compute a float vector of outputs (column sums) -----------------

@pytest.mark.parametrize("rows", [300, 5000, 1 << 18])
def test_long_column_sums_of_float_vectors(device, rows, rng):
    """A column sum over many rows: each work-item sums W neighbouring columns as one float
    vector, in blocks of rows with a compensated step per block (5000 rows: a last block of 8)."""
    constant = ad.Tensor(np.full((rows, 32), 0.1, np.float32), requires_grad=False)
    data = rng.random((rows, 48)).astype(np.float32) + 1.0
    w = ad.Tensor(np.zeros(48, np.float32), name="w")
    w.assign(w - ad.Tensor(data, requires_grad=False).sum(0) * 0.5)   # fused into an update, as a bias's SGD step
    (columns,) = run(device, [constant.sum(0)])
    exact = rows * np.float64(np.float32(0.1))
    np.testing.assert_allclose(columns, np.full(32, exact), rtol=ulps_allowed(rows))
    np.testing.assert_allclose(w.numpy(), -0.5 * data.astype(np.float64).sum(0), rtol=2 * ulps_allowed(rows))


def test_small_kernels_get_a_work_group_per_core():
    from autodiff.codegen.renderer import LOCAL_SIZE, work_group_size
    assert work_group_size(8, None) == LOCAL_SIZE            # a GPU: one size always
    assert work_group_size(8, 2) == 4 and work_group_size(64, 2) == 32 and work_group_size(1, 4) == 1
    assert work_group_size(128, 2) == LOCAL_SIZE and work_group_size(100_000, 16) == LOCAL_SIZE
    assert all(-(-n // work_group_size(n, cores)) >= min(n, cores) for n in range(1, 300) for cores in (2, 3, 16))


def test_a_small_column_sum_runs_on_every_core_of_a_cpu_device(rng):
    from autodiff.backends.opencl import opencl_available
    if not opencl_available():
        pytest.skip("no OpenCL device")
    data = rng.random((512, 128)).astype(np.float32)
    w = ad.Tensor(np.zeros(128, np.float32), name="w")
    w.assign(w - ad.Tensor(data, requires_grad=False).sum(0) * 0.1)
    compiled = ad.compile(device="opencl", disable={"megakernel"})
    compiled.run()
    np.testing.assert_allclose(w.numpy(), -0.1 * data.astype(np.float64).sum(0), rtol=1e-5)
    executor = compiled.executor
    if not executor.device.type & executor.cl.device_type.CPU:
        pytest.skip("a GPU device: one work-group size")
    (kernel,) = [k for k in executor.rendered if "sum" in k.name]
    (global_size,), (local_size,) = kernel.sizes()
    assert global_size // local_size >= min(2, executor.device.max_compute_units), kernel.sizes()
