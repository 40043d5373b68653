"""ad.jit: one trace per signature, inputs bound per call, outputs as arrays, against PyTorch."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import autodiff as ad
import autodiff.nn.functional as F
from autodiff import nn
from autodiff.errors import TraceError


def test_traces_once_per_signature(device):
    @ad.jit(device=device)
    def f(x, y, scale):
        return (x * y).sum() * scale, x - y

    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((2, 3), np.float32)
    total, diff = f(a, b, 2.0)
    assert isinstance(total, np.ndarray) and total.shape == ()
    assert float(total) == pytest.approx(30.0)
    np.testing.assert_allclose(diff, a - b)
    total, _ = f(a + 1, b, 0.5)                 # new values, same signature: no new trace
    assert float(total) == pytest.approx(10.5)
    assert len(f.traces) == 1
    f(np.ones((4,), np.float32), np.ones((4,), np.float32), 1.0)
    assert len(f.traces) == 2


def test_training_step_matches_torch(device):
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = nn.Adam(model.parameters(), lr=0.01)
    reference = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        for ours, theirs in zip(model.parameters(), reference.parameters()):
            theirs.copy_(torch.from_numpy(ours.numpy()))
    topt = torch.optim.Adam(reference.parameters(), lr=0.01)

    @ad.jit(device=device)
    def train_step(x, y):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    for _ in range(4):
        x = rng.standard_normal((6, 5)).astype(np.float32)
        y = rng.integers(0, 3, 6)
        loss = train_step(x, y)
        tloss = torch.nn.functional.cross_entropy(reference(torch.from_numpy(x)), torch.from_numpy(y))
        tloss.backward()
        topt.step()
        topt.zero_grad()
        assert float(loss) == pytest.approx(tloss.item(), rel=1e-4)
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        np.testing.assert_allclose(ours.numpy(), theirs.detach().numpy(), rtol=1e-4, atol=1e-5)
    assert len(train_step.traces) == 1


def test_static_arguments_and_persistent_outputs():
    w = ad.Tensor(np.zeros(3, np.float32), name="w")

    def bump(x, times):
        for _ in range(times):
            w.add_(x)
        return w, {"double": x * 2}

    f = ad.jit(bump, static_argnums=1, device="numpy")
    out, extra = f(np.ones(3, np.float32), 2)
    assert out is w
    np.testing.assert_allclose(w.numpy(), [2, 2, 2])
    np.testing.assert_allclose(extra["double"], [2, 2, 2])
    f(np.ones(3, np.float32), 3)
    np.testing.assert_allclose(w.numpy(), [5, 5, 5])
    assert len(f.traces) == 2


def test_composes_with_grad(device):
    cube_grad = ad.jit(ad.grad(lambda x: (x ** 3).sum()), device=device)
    x = np.array([1.0, -2.0, 0.5], np.float32)
    np.testing.assert_allclose(cube_grad(x), 3 * x ** 2, rtol=1e-6)


def test_lower_and_compile_print_every_stage():
    f = ad.jit(lambda x: (x.exp() + 1).sum(), device="numpy-proc")
    x = np.ones((4, 4), np.float32)
    graph = f.lower(x).print("graph", file=io.StringIO())
    assert "feeder('arg0')" in graph and "receiver" in graph
    memory = f.lower(x).print("memory", file=io.StringIO())
    assert "arena" in memory
    compiled = f.compile(x)
    assert compiled.proc is not None and compiled.plan is not None
    assert f.compile(x) is compiled            # compiled once per signature


def test_errors():
    w = ad.Tensor(np.ones(2, np.float32), name="w")

    @ad.jit(device="numpy")
    def leaves_grad(x):
        (w * x).sum().backward()
        return x

    with pytest.raises(TraceError, match="zero_grad"):
        leaves_grad(np.ones(2, np.float32))
    assert w.grad is None
    f = ad.jit(lambda x: x * 2, device="numpy")
    with pytest.raises(TraceError, match="called while an ir_for body"):
        ad.ir_for(2, lambda: f(np.ones(2, np.float32)))


def test_runs_after_pending_interactive_updates():
    ad.set_default_device("numpy")
    try:
        w = ad.Tensor(np.ones(2, np.float32), name="w")
        (w * 1).sum().item()                   # interactive from here
        w.mul_(3.0)                            # pending: runs before the call below
        f = ad.jit(lambda: w * 1, device="numpy")
        np.testing.assert_allclose(f(), [3, 3])
        w.add_(1.0)                            # traced after the call: sees its result
        np.testing.assert_allclose(w.numpy(), [4, 4])
    finally:
        ad.set_default_device(None)
