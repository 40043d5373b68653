"""Edge shapes on every device: sizes that are not multiples of a vector width or a tile,
0-d tensors, long reductions, very skinny and tall matrix products."""
from __future__ import annotations

import numpy as np
import pytest

import autodiff as ad

SIZES = [1, 3, 17, 255, 1023]


def _run(device: str, build) -> list[np.ndarray]:
    got: list[np.ndarray] = []
    outputs = build()
    ad.Receiver(lambda *a: got.extend(a), outputs, name="out")
    ad.execute(device=device)
    return got


@pytest.mark.parametrize("n", SIZES)
def test_elementwise_and_reductions_of_odd_sizes(device, n):
    x = np.random.default_rng(n).standard_normal((n, 3)).astype(np.float32)
    got = _run(device, lambda: [(ad.Tensor(x).tanh() * 2 + 1), ad.Tensor(x).sum(0), ad.Tensor(x).max(1),
                                ad.Tensor(x).T.exp().sum()])
    np.testing.assert_allclose(got[0], np.tanh(x) * 2 + 1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], x.sum(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[2], x.max(1), rtol=1e-6)
    np.testing.assert_allclose(got[3], np.exp(x).sum(), rtol=1e-4)


@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (3, 17, 5), (17, 255, 3), (2, 64, 64), (2, 64, 128),
                                     (128, 2, 64), (255, 33, 17), (64, 96, 80), (1023, 4, 3)])
def test_matmul_shapes(device, m, k, n):
    rng = np.random.default_rng(m * 1000 + k)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    got = _run(device, lambda: [ad.Tensor(a) @ ad.Tensor(b), (ad.Tensor(a) @ ad.Tensor(b) + ad.Tensor(bias)).relu(),
                                ad.Tensor(b).T @ ad.Tensor(a).T, ad.Tensor(a).T.T @ ad.Tensor(b.T.copy()).T])
    want = a @ b
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[1], np.maximum(want + bias, 0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[2], want.T, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[3], want, rtol=1e-4, atol=1e-4)


def test_batched_matmul_with_broadcast_batch(device):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((4, 33, 40)).astype(np.float32)
    b = rng.standard_normal((40, 36)).astype(np.float32)
    c = rng.standard_normal((4, 36, 40)).astype(np.float32)
    got = _run(device, lambda: [ad.Tensor(a) @ ad.Tensor(b), ad.Tensor(a) @ ad.Tensor(c).mT])
    np.testing.assert_allclose(got[0], a @ b, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[1], a @ c.transpose(0, 2, 1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape, new", [((2, 0, 3), (0, 6)), ((0, 4), (2, 0, 2)), ((3, 0), (0,)), ((0,), (5, 0))])
def test_reshape_of_empty_tensors_with_a_zero_before_other_axes(device, shape, new):
    # a stride after a 0-size axis is 0: lowering once divided an index by it (found by
    # test_devices_random.py)
    x = np.ones(shape, np.float32)
    got = _run(device, lambda: [(ad.Tensor(x) * 2).reshape(new).sum(-1)])
    want = (x * 2).reshape(new).sum(-1)
    assert got[0].shape == want.shape
    np.testing.assert_array_equal(got[0], want)


def test_zero_d_tensors(device):
    got = _run(device, lambda: [ad.Tensor(np.float32(2.5)) * 3 + ad.Tensor(np.float32(1.0)).exp(),
                                ad.Tensor(np.float32(-4.0)).abs().sqrt()])
    np.testing.assert_allclose(got[0], 2.5 * 3 + np.e, rtol=1e-6)
    np.testing.assert_allclose(got[1], 2.0, rtol=1e-6)


@pytest.mark.parametrize("shape", [(2, 0), (3, 0, 2), (0, 3)])
def test_reshape_of_a_tensor_with_no_elements(device, shape):
    # a 0 after the first axis made the strides before it 0: lowering the read through the
    # reshape divided by them (numpy-proc, OpenCL); found by test_devices_random.py
    x = np.ones(shape, np.float32)
    got = _run(device, lambda: [(ad.Tensor(x) * 2).reshape(-1) + 1, ad.Tensor(x).reshape(shape[::-1]).sum()])
    assert got[0].shape == (0,) and got[1].shape == ()
    assert got[1] == 0


def test_long_reduction(device):
    x = np.random.default_rng(0).random(200_003).astype(np.float32)
    got = _run(device, lambda: [ad.Tensor(x).sum(), ad.Tensor(x).max(), ad.Tensor(x).mean()])
    np.testing.assert_allclose(got[0], x.astype(np.float64).sum(), rtol=1e-4)
    assert got[1] == x.max()
    np.testing.assert_allclose(got[2], x.astype(np.float64).mean(), rtol=1e-4)


def test_big_matmul_with_gradient_and_update(device):
    """The tiled path with an SGD epilogue: gradients and the update agree with numpy."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((96, 130)).astype(np.float32)
    w0 = rng.standard_normal((130, 70)).astype(np.float32) * 0.1
    w = ad.Tensor(w0, name="w")
    loss = (ad.Tensor(x, requires_grad=False) @ w).square().sum()
    loss.backward()
    w.sub_(w.grad * 1e-3)
    ad.execute(device=device)
    grad = 2 * x.T @ (x @ w0)
    np.testing.assert_allclose(w.numpy(), w0 - 1e-3 * grad, rtol=1e-4, atol=1e-4)


def test_matmul_of_sliced_operands_big_enough_for_the_tiled_kernel(device):
    """Operands that start inside their buffer (a weight's row slice, as attention's q/k/v
    projections take them): the kernel must add the slice's start to the buffer offset."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 64, 128)).astype(np.float32)
    w = rng.standard_normal((384, 128)).astype(np.float32) * 0.1
    bias = rng.standard_normal(384).astype(np.float32)
    got = _run(device, lambda: [ad.Tensor(x) @ ad.Tensor(w, name="w")[128:256].T + ad.Tensor(bias)[128:256],
                                ad.Tensor(x)[1:3, 5:] @ ad.Tensor(w, name="w2")[256:].T,
                                ad.Tensor(w, name="w3")[10:138].T @ ad.Tensor(x)[2, :, :].T])
    np.testing.assert_allclose(got[0], x @ w[128:256].T + bias[128:256], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[1], x[1:3, 5:] @ w[256:].T, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[2], w[10:138].T @ x[2].T, rtol=1e-4, atol=1e-4)


def test_attention_at_a_size_that_uses_the_tiled_kernels(device):
    """The larger benchmark model's attention (d 128, 4 heads, seq 64) against numpy."""
    from autodiff import nn
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 64, 128)).astype(np.float32)
    attention = nn.MultiheadAttention(128, 4, batch_first=True)
    w = attention.in_proj_weight.numpy()
    b = attention.in_proj_bias.numpy()
    wo, bo = attention.out_proj.weight.numpy(), attention.out_proj.bias.numpy()
    got = _run(device, lambda: [attention(ad.Tensor(x), ad.Tensor(x), ad.Tensor(x), need_weights=False)[0]])
    q, k, v = (np.transpose((x @ w[i * 128:(i + 1) * 128].T + b[i * 128:(i + 1) * 128]).reshape(2, 64, 4, 32),
                            (0, 2, 1, 3)) for i in range(3))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(32)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    want = (weights @ v).transpose(0, 2, 1, 3).reshape(2, 64, 128) @ wo.T + bo
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-4)


def test_linear_relu_uses_the_tiled_matmul_kernel():
    """relu reads the product twice (where(x > 0, x, 0)): both copies are the one accumulator."""
    from autodiff.backends.opencl import opencl_available
    if not opencl_available():
        pytest.skip("no OpenCL device")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((64, 96)).astype(np.float32)
    w = rng.standard_normal((96, 80)).astype(np.float32)
    b = rng.standard_normal(80).astype(np.float32)
    got: list[np.ndarray] = []
    ad.Receiver(lambda v: got.append(v), [(ad.Tensor(x) @ ad.Tensor(w, name="w") + ad.Tensor(b, name="b")).relu()],
                name="y")
    compiled = ad.compile(device="opencl")
    compiled.run()
    (source,) = compiled.kernels.values()
    assert "reqd_work_group_size" in source          # the tiled generator's kernel
    np.testing.assert_allclose(got[0], np.maximum(x @ w + b, 0), rtol=1e-4, atol=1e-4)


def test_exp_over_its_whole_range(device):
    """OpenCL renders exp as its own polynomial: overflow, nan, +-inf; results below FLT_MIN
    may be 0 there instead of denormal (arithmetic on denormals is 13x slower on x86)."""
    x = np.concatenate([np.linspace(-110, 95, 20001, dtype=np.float32),
                        np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 88.72, 88.73, -87.3, -103.9, -104.0],
                                 np.float32)])
    got = _run(device, lambda: [ad.Tensor(x).exp()])[0]
    with np.errstate(over="ignore"):
        want = np.exp(x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=5e-7, atol=np.finfo(np.float32).tiny)


def test_erf_over_its_whole_range(device):
    """OpenCL renders erf as its own polynomials (|x| < 1 and above), float vectors included:
    checked against float64 erf around the seam at 1, near 0, far out, and nan, +-inf, -0."""
    from math import erf
    x = np.concatenate([np.linspace(-6, 6, 24001, dtype=np.float32),
                        np.linspace(0.999, 1.001, 2001, dtype=np.float32),
                        np.float32(10.0) ** np.arange(-30, 1, dtype=np.float32),
                        np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 3.99, 4.0, 4.01, 40.0, -1.0], np.float32)])
    got = _run(device, lambda: [ad.Tensor(x).erf()])[0]
    want = np.array([erf(v) for v in x.astype(np.float64)])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
    np.testing.assert_allclose(got, want, rtol=3e-7, atol=1.2e-7)


def test_embedding_of_no_indices_has_no_rows_and_a_zero_gradient(device):
    """The index check of an empty index tensor used to fail at trace time (a max over nothing)."""
    import autodiff.nn.functional as F
    weight = ad.Tensor(np.ones((4, 3), np.float32), name="weight")
    rows = F.embedding(ad.Tensor(np.zeros((0,), np.int32), requires_grad=False), weight)
    rows.sum().backward()
    got: list[np.ndarray] = []
    ad.Receiver(lambda r, g: got.extend([r, g]), [rows, weight.grad])
    ad.execute(device=device)
    assert got[0].shape == (0, 3)
    np.testing.assert_array_equal(got[1], np.zeros((4, 3), np.float32))


def test_tanh_of_a_nan_the_compiler_knows_stays_nan(device):
    """A mean over an empty axis (nan, as torch) fused into tanh and a sum: PoCL's tanh gave a
    tiny number for a NaN known at compile time, so the sum read 0 (found by a random program)."""
    ad.reset()
    empty = ad.Tensor(np.zeros((0, 4), np.float32))
    total = empty.mean(0, keepdim=True).tanh().sum()
    seen: list[float] = []
    ad.Receiver(lambda v: seen.append(float(v)), [total])
    ad.execute(device=device)
    assert len(seen) == 1 and np.isnan(seen[0])
