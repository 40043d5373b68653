"""Tensor ops of PyTorch (clamp, log1p, expm1, logsumexp, cumsum, flip, repeat, topk, gather,
scatter_add, masked_fill, tril/triu, einsum, softmax methods) against torch on every device.

Each test runs one function `fn(module, *inputs)` through torch and through autodiff (the same
code: the names and arguments are torch's), and compares every output and the gradient of a
random weighting of the float outputs with respect to every float input.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch

import autodiff as ad
from autodiff.errors import IndexOutOfRangeError, TraceError

INF = float("inf")


def _torch_input(a: np.ndarray) -> torch.Tensor:
    if a.dtype == np.float32:
        return torch.tensor(a, requires_grad=True)
    return torch.tensor(a.astype(np.int64))


def _compare(device: str, fn: Callable, arrays: list[np.ndarray], rtol: float = 1e-5,
             atol: float = 1e-6, grad_rtol: float = 1e-4, grad_atol: float = 1e-5) -> None:
    """fn(torch, ...) and fn(ad, ...) agree: outputs, and gradients of the float inputs."""
    t_in = [_torch_input(a) for a in arrays]
    t_out = list(fn(torch, *t_in))
    rng = np.random.default_rng(7)
    weights = [rng.standard_normal(tuple(o.shape)).astype(np.float32) for o in t_out]
    t_loss = [(o * torch.from_numpy(w)).sum() for o, w in zip(t_out, weights) if o.requires_grad]
    if t_loss:
        sum(t_loss).backward()

    a_in = [ad.Tensor(a, name=f"in{i}") for i, a in enumerate(arrays)]
    a_out = list(fn(ad, *a_in))
    assert len(a_out) == len(t_out)
    a_loss = [(o * ad.Tensor(w, requires_grad=False)).sum()
              for o, w, t in zip(a_out, weights, t_out) if t.requires_grad]
    if a_loss:
        sum(a_loss[1:], a_loss[0]).backward()
    floats = [i for i, a in enumerate(arrays) if a.dtype == np.float32]
    grads = [a_in[i].grad if a_in[i].grad is not None else ad.zeros_like(a_in[i]) for i in floats]
    got: list[np.ndarray] = []
    ad.Receiver(lambda *values: got.extend(values), a_out + grads)
    ad.execute(device=device)

    for k, (ours, theirs) in enumerate(zip(got, t_out)):
        expected = theirs.detach().numpy()
        assert ours.shape == expected.shape, f"output {k}: shape {ours.shape} != {expected.shape}"
        if expected.dtype.kind in "iu":
            np.testing.assert_array_equal(ours, expected, err_msg=f"output {k}")
        else:
            np.testing.assert_allclose(ours, expected, rtol=rtol, atol=atol, err_msg=f"output {k}")
    for i, ours in zip(floats, got[len(t_out):]):
        theirs = t_in[i].grad
        expected = theirs.numpy() if theirs is not None else np.zeros_like(arrays[i])
        np.testing.assert_allclose(ours, expected, rtol=grad_rtol, atol=grad_atol, err_msg=f"grad of input {i}")


def _x(*shape: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _idx(high: int, *shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, shape).astype(np.int32)


# --- elementwise -----------------------------------------------------------------------

def test_clamp_and_clip(device):
    ints = np.arange(-4, 5, dtype=np.int32).reshape(3, 3)
    _compare(device, lambda m, x, lo, hi, n: [
        m.clamp(x, -0.5, 0.7), x.clamp(min=-0.3), x.clamp(max=0.2), m.clip(x, lo, hi),
        x.clip(min=lo), m.clamp(x, 0.5, -0.5),            # min > max gives max everywhere
        n.clamp(-2, 3), m.clamp(n, min=0.5)],             # int32 stays int32; a float bound promotes
        [_x(5, 7, scale=2), _x(7, seed=1) - 0.5, _x(5, 1, seed=2) + 0.5, ints])


TINY = [0.0, 1e-30, 1e-8, -1e-8, 3e-8, 6e-8, -6e-8, 1e-7, -1e-7, 2.5e-7, 1e-6, -3e-6, 1e-5, 1e-4,
        -1e-3, 0.0123, 0.3, -0.4, 0.4999, 0.5, -0.5, 0.51, -0.7, 0.9, 2.0, -5.0, 20.0, 80.0]


def test_log1p_expm1_accurate_near_zero(device):
    x = np.array(TINY, np.float32)
    with np.errstate(invalid="ignore"):
        exact_log1p = np.log1p(x.astype(np.float64))
    exact_expm1 = np.expm1(x.astype(np.float64))
    # forward against float64 and torch to 1 ulp-ish; gradients against torch
    _compare(device, lambda m, t: [m.log1p(t), t.expm1(), m.expm1(t * 0.25)], [x], rtol=3e-7, atol=0,
             grad_rtol=2e-6, grad_atol=0)
    ad.reset()
    got: list[np.ndarray] = []
    t = ad.Tensor(x)
    ad.Receiver(lambda a, b: got.extend([a, b]), [ad.log1p(t), ad.expm1(t)])
    ad.execute(device=device)
    np.testing.assert_allclose(got[0], exact_log1p, rtol=3e-7, atol=0)
    np.testing.assert_allclose(got[1], exact_expm1, rtol=3e-7, atol=0)


def test_log1p_expm1_edges(device):
    # log1p: -1 -> -inf (gradient inf), below -1 -> nan, inf -> inf; expm1: -inf -> -1, overflow
    x = np.array([-1.0, -2.0, INF, -INF, 100.0, -100.0, float("nan"), -0.999999], np.float32)
    _compare(device, lambda m, t: [t.log1p(), m.expm1(t)], [x], rtol=1e-6)


def test_masked_fill(device):
    mask = np.array([[1, 0, 0, 1], [0, 0, 1, 0], [1, 1, 1, 1]], np.int32)
    ints = np.arange(12, dtype=np.int32).reshape(3, 4)

    def fn(m, x, v, mask_, row_mask, n):
        bool_ = (lambda t: t.bool()) if m is torch else (lambda t: t)
        return [x.masked_fill(bool_(mask_), -1.5), m.masked_fill(x, bool_(mask_), v),
                x[0].masked_fill(bool_(mask_), 2.0),             # the mask broadcasts x to (3, 4)
                x.masked_fill(bool_(row_mask), -INF), n.masked_fill(bool_(mask_), 7.9)]
    _compare(device, fn, [_x(3, 4), np.array(0.25, np.float32), mask, mask[:1], ints])


# --- reductions and scans -----------------------------------------------------------------

def test_logsumexp(device):
    x = _x(3, 5)
    x[1] = -INF                                   # a row of -inf gives -inf (gradient nan)
    x[2, 3] = INF                                 # a row with +inf gives +inf
    big = _x(4, 6, seed=1, scale=30) + 60.0       # exp would overflow without the shift
    _compare(device, lambda m, a, b, c: [
        m.logsumexp(a, 1), a.logsumexp(-1, keepdim=True), b.logsumexp((0, 1)), m.logsumexp(b, 0),
        b[:, :1].logsumexp(1), m.logsumexp(c, 1), b.logsumexp(1, keepdim=True)],
        [x, big, np.zeros((2, 0), np.float32)])


@pytest.mark.parametrize("n", [1, 7, 300])
def test_cumsum(device, n):
    ints = _idx(1000, 3, n) - 500
    _compare(device, lambda m, x, i: [m.cumsum(x, 1), x.cumsum(0), i.cumsum(-1).int(),
                                      m.cumsum(x[:, :0], 1)],
             [_x(3, n), ints], rtol=2e-5, atol=2e-5)


# --- movement --------------------------------------------------------------------------

def test_flip_repeat_tril_triu(device):
    _compare(device, lambda m, x, y: [
        m.flip(x, (0,)), x.flip(0, 2), x.flip(-1), m.flip(y, (0, 1)),
        x.repeat(2, 1, 3), x.repeat(2, 1, 1, 2), y.repeat(1, 0), y.repeat(3, 1),
        m.tril(x), x.triu(1), m.triu(x, -1), y.tril(-1), x.tril(5),
    ], [_x(2, 3, 4), _x(1, 5, seed=1)])


def test_softmax_methods(device):
    _compare(device, lambda m, x, n: [x.softmax(1), x.log_softmax(0), m.softmax(x, -1),
                                      m.log_softmax(x, dim=1), x.cumsum(0, dtype=m.float32),
                                      n.cumsum(1, dtype=m.float32), x.softmax(0, dtype=m.float32)],
             [_x(3, 5), _idx(9, 3, 5)])


# --- gather / scatter_add / topk -------------------------------------------------------

def test_gather_along_every_dim(device):
    x = _x(4, 5, 3)
    ints = _idx(100, 4, 5, 3)
    _compare(device, lambda m, t, n, i0, i1, i2, e: [
        m.gather(t, 0, i0), t.gather(1, i1), t.gather(-1, i2), n.gather(1, i1),
        t[:, :1].gather(2, i2[:, :1]), m.gather(t, 1, e)],
        [x, ints, _idx(4, 6, 2, 3, seed=1), _idx(5, 3, 7, 2, seed=2), _idx(3, 4, 1, 5, seed=3),
         np.zeros((4, 0, 3), np.int32)])


def test_scatter_add_along_every_dim(device):
    x = _x(4, 5, 3)
    ints = _idx(100, 4, 5, 3)
    # repeated indices add up; src may be larger than the index (only its corner is read; torch
    # cannot differentiate that case, so its src is detached)
    _compare(device, lambda m, t, n, s, i0, i1, i2: [
        m.scatter_add(t, 0, i0, s[:3, :5]), t.scatter_add(1, i1, s[:, :3, :2]), t.scatter_add(-1, i2, s[:, :5, :2]),
        t.scatter_add(0, i0, s.detach()), n.scatter_add(1, i1, n[:, :3, :2]), n.scatter_add(1, i1, n)],
        [x, ints, _x(4, 6, 3, seed=4), _idx(4, 3, 5, 3, seed=1), _idx(5, 4, 3, 2, seed=2),
         _idx(3, 4, 5, 2, seed=3)])


def test_gather_scatter_index_out_of_range_raises(device):
    x = ad.Tensor(_x(3, 4))
    index = ad.Tensor(np.array([[0, 4]], np.int32))
    x.gather(1, index).sum().backward()
    with pytest.raises(IndexOutOfRangeError, match="gather: index 4 is out of range for size 4"):
        ad.execute(device=device)
    ad.reset()
    x = ad.Tensor(_x(3, 4))
    x.scatter_add(0, ad.Tensor(np.array([[-1, 0]], np.int32)), ad.Tensor(_x(1, 2)))
    with pytest.raises(IndexOutOfRangeError, match="scatter_add: index -1"):
        ad.execute(device=device)


def test_topk(device):
    x = np.random.default_rng(3).permutation(40).reshape(5, 8).astype(np.float32) / 7 - 2
    ties = np.array([[1.0, -INF, 3.0, -INF, -INF], [-INF] * 5], np.float32)
    ints = np.random.default_rng(4).permutation(30).reshape(3, 10).astype(np.int32)

    def fn(m, t, u, n):
        out = []
        for found in [m.topk(t, 3), t.topk(2, dim=0), t.topk(4, 1, largest=False), t.topk(8),
                      t.topk(0), n.topk(3)]:
            out += [found.values, found.indices.int()]
        # ties of -inf come in an unspecified order (and so do their gradients): values, and
        # indices that are distinct
        u = u.detach()
        for found in [u.topk(5), u.topk(4, largest=False)]:
            out += [found.values, u.gather(1, found.indices)]
        every = u.topk(5).indices
        unsorted = t.topk(3, sorted=False)   # torch's order is unspecified: compare the sets
        return out + [every.sum(1).int(), (every * every).sum(1).int(), unsorted.values.sum(1),
                      unsorted.indices.sum(1).int()]
    _compare(device, fn, [x, ties, ints])


# --- einsum -------------------------------------------------------------------------------

def test_einsum(device):
    a, b, c = _x(3, 4), _x(4, 5, seed=1), _x(3, 3, seed=2)
    p, q = _x(2, 3, 4, seed=3), _x(2, 4, 5, seed=4)
    v, w = _x(4, seed=5), _x(5, seed=6)
    _compare(device, lambda m, a, b, c, p, q, v, w: [
        m.einsum("ij,jk->ik", a, b), m.einsum("bij,bjk->bik", p, q), m.einsum("ij->ji", a),
        m.einsum("i,j->ij", v, w), m.einsum("ii->", c), m.einsum("ii->i", c),
        m.einsum("ij,jk", a, b), m.einsum("...ij,...jk->...ik", p, q), m.einsum("ij,ij->i", a, a),
        m.einsum("ij,jk,k->i", a, b, w), m.einsum("bij->", p), m.einsum("bij,jk->bik", p, b),
        m.einsum("Bij,j", p, v), m.einsum("ij,j->i", [a, v]), m.einsum("i,i", v, v),
        m.einsum("...ij,jk->...ik", p, b), m.einsum("...j,...j->...", p, p[:1]),   # ellipsis broadcast
        m.einsum("ij,jk->ik", a[:, :1], b[:1]), m.einsum("ij,jk->ik", a[:, :1], b)],  # size 1 broadcasts
        [a, b, c, p, q, v, w])


# --- trace-time errors ------------------------------------------------------------------

def test_errors_name_the_problem():
    x = ad.Tensor(_x(3, 4))
    cases = [
        (lambda: x.clamp(), "At least one of 'min' or 'max'"),
        (lambda: x.gather(1, ad.Tensor(_x(3, 4))), "index must be an int32 tensor"),
        (lambda: x.gather(1, ad.Tensor(_idx(4, 3))), "same number of dimensions"),
        (lambda: x.gather(0, ad.Tensor(_idx(3, 3, 5))), "Size does not match"),
        (lambda: x.scatter_add(0, ad.Tensor(_idx(3, 2, 4)), x[:1]), "smaller than src"),
        (lambda: x.topk(5), "k out of range"),
        (lambda: x.repeat(2), "can not be smaller"),
        (lambda: x.masked_fill(ad.Tensor(_x(3, 4)), 0), "int32 tensor"),
        (lambda: x.masked_fill(ad.Tensor(_idx(2, 3, 4)), ad.Tensor(_x(2))), "0-dimensional"),
        (lambda: ad.tril(x[0]), "at least 2 dimensions"),
        (lambda: ad.einsum("ij,jk->ik", x), "operand"),
        (lambda: ad.einsum("ij,jk->ik", x, x), "sizes 4 and 3"),
        (lambda: ad.einsum("ij->iz", x), "'z'"),
        (lambda: ad.einsum("i1->i", x), "letters"),
        (lambda: ad.gather(x, 1, ad.Tensor(_idx(4, 3, 4)), sparse_grad=True), "sparse_grad"),
        (lambda: x.softmax(0, dtype="int32"), "float32"),
    ]
    for make, message in cases:
        with pytest.raises(TraceError, match=message):
            make()


def test_edge_shapes(device):
    """0-d tensors, axes of size 1 and 0, int32 inputs of the float-valued ops."""
    _compare(device, lambda m, s, x, e, n: [
        m.log1p(n), m.expm1(n), s.logsumexp(0), s.cumsum(0), s.topk(1).values, s.repeat(2, 3),
        s.gather(0, n[0, 0]), m.flip(s, ()), x.flip(0), x.cumsum(1), x.logsumexp(0), x.topk(1, 0).values,
        m.tril(e), e.triu(2), e.flip(1), e.cumsum(1), m.einsum("ij,jk->ik", e.T, e), x.repeat(1, 1, 0),
        m.einsum("ij->", e), m.clamp(e, -1, 1), e.repeat(2, 1), m.einsum("ij,kj->ik", x, x)],
        [np.array(0.7, np.float32), _x(1, 3), np.zeros((2, 0), np.float32),
         np.array([[0, 1, -1]], np.int32)])
