"""Which kernels reach the tiled matmul kernel: operand packing and one product per kernel."""
from __future__ import annotations

import numpy as np
import pytest

import autodiff as ad
from autodiff.backends.opencl import opencl_available
from autodiff.schedule.matmul import match_matmul
from autodiff.proc.cost import TILED_DOT_WORK
from autodiff.proc.ir import Reduce, walk_expr


def _compile(build, disable=frozenset()):
    got: list[np.ndarray] = []
    ad.Receiver(lambda *a: got.extend(a), build(), name="out")
    compiled = ad.compile(device="numpy-proc", disable=set(disable))
    compiled.run()
    return compiled, got


def _products(compiled) -> list:
    buffers = {b.id: b for b in compiled.proc.buffers}
    out = []
    for kernel in compiled.proc.kernels():
        reduces = set(e for e in walk_expr(kernel.value) if isinstance(e, Reduce))
        if reduces:
            out.append((kernel, len(reduces), match_matmul(kernel, buffers)))
    return out


def _attention_scores(x: np.ndarray, w: np.ndarray):
    def build():
        q = (ad.Tensor(x) @ ad.Tensor(w, name="w").T).reshape(4, 64, 4, 32).permute(0, 2, 1, 3)
        heads = (q @ q.mT) @ q                                       # (4, 4, 64, 32), one product per head
        merged = heads.permute(0, 2, 1, 3).reshape(4, 64, 128)      # heads merged back: k = h*32 + d
        return [q @ q.mT, merged @ ad.Tensor(w, name="w2")]
    return build


def _expected(x: np.ndarray, w: np.ndarray) -> list[np.ndarray]:
    q = (x @ w.T).reshape(4, 64, 4, 32).transpose(0, 2, 1, 3)
    scores = q @ q.transpose(0, 1, 3, 2)
    heads = scores @ q
    return [scores, heads.transpose(0, 2, 1, 3).reshape(4, 64, 128) @ w]


def test_heads_split_out_of_rows_are_read_in_place():
    """probs @ v per head reads each head's (64, 32) block of v out of rows of 128: the tiled
    kernel takes the row distance and the (batch, head) offsets, no copy. (The dot-product
    tiling, q @ k^T, still gets packed operands: measured faster than reading in place.)"""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 64, 128)).astype(np.float32)
    w = rng.standard_normal((128, 128)).astype(np.float32) * 0.1
    probs = rng.random((4, 4, 64, 64)).astype(np.float32)

    def build():
        v = (ad.Tensor(x) @ ad.Tensor(w, name="w").T).reshape(4, 64, 4, 32).permute(0, 2, 1, 3)
        return [ad.Tensor(probs) @ v]
    compiled, got = _compile(build)
    v = (x @ w.T).reshape(4, 64, 4, 32).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(got[0], probs @ v, rtol=1e-4, atol=1e-3)
    assert not [k for k in compiled.proc.kernels() if k.ops == ["pack"]]
    matches = [match for _, _, match in _products(compiled) if match is not None]
    assert any(m.shape.batch_inner == 4 and m.shape.b_lead == 128 for m in matches)


def test_operands_the_tiled_kernel_cannot_read_are_packed_first():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 64, 128)).astype(np.float32)
    w = rng.standard_normal((128, 128)).astype(np.float32) * 0.1
    compiled, got = _compile(_attention_scores(x, w))
    for value, want in zip(got, _expected(x, w)):
        np.testing.assert_allclose(value, want, rtol=1e-4, atol=1e-3)
    packs = [k for k in compiled.proc.kernels() if k.ops == ["pack"]]
    assert packs                  # the merged heads: k = h*32 + d is no stride of one axis
    assert all(match is not None for _, _, match in _products(compiled))

    ad.reset()
    unpacked, same = _compile(_attention_scores(x, w), disable={"operand_packing"})
    assert not [k for k in unpacked.proc.kernels() if k.ops == ["pack"]]
    assert any(match is None for _, _, match in _products(unpacked))
    for a, b in zip(got, same):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_small_products_are_not_packed():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 2, 16)).astype(np.float32)
    compiled, got = _compile(lambda: [ad.Tensor(x).reshape(2, 2, 2, 8).permute(0, 2, 1, 3)
                                      @ ad.Tensor(x).reshape(2, 2, 2, 8).permute(0, 2, 3, 1)])
    assert not [k for k in compiled.proc.kernels() if k.ops == ["pack"]]


def test_two_large_products_stay_in_separate_kernels():
    """Each keeps the tiled kernel (one product + epilogue) instead of a per-output loop."""
    rng = np.random.default_rng(2)
    a, b = (rng.standard_normal((64, 64)).astype(np.float32) for _ in range(2))
    w1, w2 = (rng.standard_normal((64, 48)).astype(np.float32) for _ in range(2))
    assert 64 * 48 * 64 >= TILED_DOT_WORK
    compiled, got = _compile(lambda: [(ad.Tensor(a) @ ad.Tensor(w1, name="w1")
                                       + ad.Tensor(b) @ ad.Tensor(w2, name="w2")).relu()])
    np.testing.assert_allclose(got[0], np.maximum(a @ w1 + b @ w2, 0), rtol=1e-4, atol=1e-4)
    products = _products(compiled)
    assert len(products) == 2
    assert all(count == 1 and match is not None for _, count, match in products)


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
@pytest.mark.parametrize("batched", [False, True])
def test_a_transposed_b_is_copied_untransposed_first_on_opencl(batched):
    """x @ w.T (a Linear layer's weight) and q @ k.mT per head: the OpenCL backend asks for B as
    (k, n) (`Backend.untransposed_b`), so a copy of B comes first and the product reads it
    as A @ B; `transposed_b_packing` off leaves the product on B^T. numpy-proc does not ask."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 64, 48) if batched else (96, 48)).astype(np.float32)
    w = rng.standard_normal((3, 80, 48) if batched else (80, 48)).astype(np.float32)

    def build():
        return [ad.Tensor(x) @ ad.Tensor(w, name="w").mT + 1.0]

    def compiled_with(device, disable=frozenset()):
        ad.reset()
        got: list[np.ndarray] = []
        ad.Receiver(lambda v: got.append(v), build(), name="out")
        compiled = ad.compile(device=device, disable=set(disable))
        compiled.run()
        np.testing.assert_allclose(got[0], x @ np.swapaxes(w, -1, -2) + 1, rtol=1e-4, atol=1e-4)
        return [match for _, _, match in _products(compiled)], compiled.proc.kernels()

    matches, kernels = compiled_with("opencl")
    assert [k.ops for k in kernels].count(["pack"]) == 1
    assert len(matches) == 1 and matches[0] is not None and not matches[0].shape.b_transposed
    for device, disable in (("opencl", {"transposed_b_packing"}), ("numpy-proc", set())):
        matches, kernels = compiled_with(device, disable)
        assert ["pack"] not in [k.ops for k in kernels]
        assert matches[0] is not None and matches[0].shape.b_transposed


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
def test_a_product_of_few_rows_reads_its_transposed_b_in_place():
    """Two rows (examples/linear.py): copying B would cost about what the product does."""
    from autodiff.schedule.packing import PACK_B_MIN_ROWS
    x = np.random.default_rng(5).standard_normal((2, 255)).astype(np.float32)
    w = np.random.default_rng(6).standard_normal((255, 255)).astype(np.float32)
    assert 2 < PACK_B_MIN_ROWS and 2 * 255 * 255 >= TILED_DOT_WORK
    got: list[np.ndarray] = []
    ad.Receiver(lambda v: got.append(v), [ad.Tensor(x) @ ad.Tensor(w, name="w").T], name="out")
    compiled = ad.compile(device="opencl")
    compiled.run()
    np.testing.assert_allclose(got[0], x @ w.T, rtol=1e-4, atol=1e-4)
    assert ["pack"] not in [k.ops for k in compiled.proc.kernels()]


@pytest.mark.parametrize("switch", ["operand_packing", "tiled_matmul", "transposed_b_packing"])
def test_attention_training_agrees_with_packing_off(switch, device):
    from autodiff import nn
    if device == "numpy":
        pytest.skip("the graph executor has no kernels")

    def train(disable):
        ad.reset()
        ad.manual_seed(0)
        model = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
        opt = nn.SGD(model.parameters(), lr=0.05)
        data = np.random.default_rng(3).standard_normal((2, 32, 64)).astype(np.float32)

        def step():
            loss = (model(ad.Tensor(data)) * ad.Tensor(data)).sum() / 100
            opt.zero_grad()
            loss.backward()
            opt.step()
        ad.ir_for(3, step)
        ad.compile(device=device, disable=disable).run()
        return {k: np.array(v) for k, v in model.state_dict().items()}

    on, off = train(set()), train({switch})
    for name in on:
        np.testing.assert_allclose(on[name], off[name], rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("m, k, n, a_transposed", [(144, 32, 64, False), (144, 32, 1024, True), (102, 32, 64, False)])
def test_tiled_products_whose_grid_overhangs_the_rows_store_nothing_past_them(m, k, n, a_transposed, device):
    """Blocks of 6 rows dividing m, but not into whole work-groups of 16 (144 rows: 24 blocks
    launched as 32): the work-items past the edge stay for the barriers and must not store.
    They wrote 48 rows past the output and corrupted the heap (a crash, or a wrong CNN
    gradient) before their stores were guarded."""
    rng = np.random.default_rng(m)
    a = rng.standard_normal((k, m) if a_transposed else (m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    below = rng.standard_normal((m, n)).astype(np.float32)   # an output living next to the product's
    A, B, C = ad.Tensor(a, name="a"), ad.Tensor(b, name="b"), ad.Tensor(below, name="c")
    product = (A.T if a_transposed else A) @ B
    got: list[np.ndarray] = []
    ad.Receiver(lambda p, c: got.extend([p, c]), [product, C * 1.0])
    ad.execute(device=device)
    np.testing.assert_allclose(got[0], (a.T if a_transposed else a) @ b, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got[1], below)
