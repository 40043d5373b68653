"""Interactive use: reading values of a lazily traced program (lazy.py) and the structural
compile cache (structural.py), against PyTorch's eager results."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import autodiff as ad
import autodiff.nn.functional as F
from autodiff import nn
from autodiff.errors import TraceError


@pytest.fixture(autouse=True)
def interactive(request):
    """Reads run on the test's device; every test starts with an empty compile cache."""
    ad.clear_compile_cache()
    device = request.getfixturevalue("device") if "device" in request.fixturenames else "numpy"
    ad.set_default_device(device)
    yield
    ad.set_default_device(None)
    ad.clear_compile_cache()


def test_read_runs_pending_updates_exactly_once(device):
    w0 = np.arange(6, dtype=np.float32).reshape(2, 3) / 10
    w = ad.Tensor(w0, name="w")
    y = (w * 2).sum()
    w.sub_(1.0)                      # traced before the read: runs with it, once
    assert y.item() == pytest.approx((w0 * 2).sum(), rel=1e-6)
    np.testing.assert_allclose(w.numpy(), w0 - 1, rtol=1e-6)
    assert y.item() == pytest.approx((w0 * 2).sum(), rel=1e-6)   # known now: nothing runs again
    np.testing.assert_allclose(w.numpy(), w0 - 1, rtol=1e-6)
    z = w * 3                        # the trace goes on from the new value
    np.testing.assert_allclose(z.numpy(), (w0 - 1) * 3, rtol=1e-6)
    assert ad.compile_cache_info().misses == 2


def test_training_loop_matches_torch_and_compiles_once(device):
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((6, 4, 5)).astype(np.float32)
    ys = rng.integers(0, 3, (6, 4)).astype(np.int32)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = nn.SGD(model.parameters(), lr=0.1, momentum=0.9)
    reference = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        for ours, theirs in zip(model.parameters(), reference.parameters()):
            theirs.copy_(torch.from_numpy(ours.numpy()))
    topt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for x, y in zip(xs, ys):
        loss = F.cross_entropy(model(ad.Tensor(x, requires_grad=False)), ad.Tensor(y, requires_grad=False))
        loss.backward()
        opt.step()
        opt.zero_grad()
        tloss = torch.nn.functional.cross_entropy(reference(torch.from_numpy(x)), torch.from_numpy(y).long())
        tloss.backward()
        topt.step()
        topt.zero_grad()
        assert loss.item() == pytest.approx(tloss.item(), rel=1e-4, abs=1e-5)
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        np.testing.assert_allclose(ours.numpy(), theirs.detach().numpy(), rtol=1e-4, atol=1e-5)
    info = ad.compile_cache_info()
    assert (info.misses, info.hits) == (1, len(xs) - 1)


def test_a_long_interactive_loop_keeps_no_record_of_old_steps(device):
    """What backward() records to refuse a second pass goes with the steps' nodes."""
    model = nn.Linear(4, 2)
    opt = nn.SGD(model.parameters(), lr=0.1)
    x = np.ones((3, 4), np.float32)
    sizes = []
    for _ in range(12):
        loss = model(ad.Tensor(x, requires_grad=False)).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        loss.item()
        sizes.append(len(ad.current_program().freed_by_backward))
    assert max(sizes[4:]) <= max(sizes[:4])   # bounded, not one step's worth more per step


def test_grad_and_backward_after_reading_the_loss(device):
    w0 = np.array([[0.5, -1.0], [2.0, 0.25]], np.float32)
    x0 = np.array([[1.0, 2.0], [-3.0, 0.5]], np.float32)
    w = ad.Tensor(w0, name="w")
    loss = ((ad.Tensor(x0, requires_grad=False) @ w).tanh() ** 2).sum()
    value = loss.item()              # the forward runs; backward() below still reaches w
    loss.backward()
    tw = torch.tensor(w0, requires_grad=True)
    tloss = ((torch.tensor(x0) @ tw).tanh() ** 2).sum()
    tloss.backward()
    assert value == pytest.approx(tloss.item(), rel=1e-5)
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_a_value_held_before_an_update_keeps_the_old_value(device):
    w = ad.Tensor(np.ones(3, np.float32), name="w")
    (w * 1).sum().item()   # a read makes the program interactive
    before = w * 2
    w.add_(1.0)
    np.testing.assert_allclose(w.numpy(), [2, 2, 2])        # runs the update; `before` comes back too
    np.testing.assert_allclose(before.numpy(), [2, 2, 2])   # the value at its point of the program


def test_a_read_the_update_overwrote_is_an_error():
    w = ad.Tensor(np.ones(3, np.float32), name="w")
    (w * 1).sum().item()
    loss = (w * w).sum()
    w.sub_(0.5)
    w.numpy()                        # the update runs; `loss` is kept, not the read of w it needs
    loss.backward()
    with pytest.raises(TraceError, match="modified by an inplace operation"):
        w.grad.numpy()


def test_printing_and_conversions():
    t = ad.Tensor(np.array([1.5, -2.0], np.float32)) * 2
    s = t.sum()
    assert repr(t) == "tensor([ 3., -4.])"
    assert str(s) == "tensor(-1.)"
    assert f"{s:.2f}" == "-1.00" and float(s) == -1.0 and int(s) == -1
    np.testing.assert_array_equal(np.asarray(t), [3.0, -4.0])
    assert repr((t > 0).int()) == "tensor([1, 0], dtype=int32)"
    with pytest.raises(ValueError, match="2 elements cannot be converted"):
        t.item()


def test_reading_inside_ir_for_is_an_error():
    w = ad.Tensor(np.ones(2, np.float32), name="w")
    inside = []

    def body():
        y = w * 2
        with pytest.raises(TraceError, match="no one value to read now"):
            y.numpy()
        inside.append(y)
        assert repr(y).startswith("Tensor(node")    # repr does not run anything here
        w.add_(y)

    ad.ir_for(2, body)
    with pytest.raises(TraceError, match="computed inside an ir_for body"):
        inside[0].numpy()


def test_ahead_of_time_program_then_reads(device):
    """mnist.py's shape: an ir_for program run by execute(), then values read."""
    w = ad.Tensor(np.zeros(3, np.float32), name="w")
    seen = []
    ad.ir_for(4, lambda: w.add_(1.0))
    ad.Receiver(lambda v: seen.append(v.copy()), [w * 1])
    ad.execute(device=device)
    assert (w * 10).sum().item() == pytest.approx(120.0)   # after the loop ran once, not again
    np.testing.assert_allclose(w.numpy(), [4, 4, 4])
    np.testing.assert_allclose(seen[0], [4, 4, 4])
    assert len(seen) == 1


def test_effects_traced_between_reads_run_once(device):
    w = ad.Tensor(np.zeros(2, np.float32), name="w")
    got = []
    w.add_(1.0)
    ad.Receiver(lambda v: got.append(v.copy()), [w * 1], name="seen")
    fed = ad.Feeder(lambda: np.array([10.0, 20.0], np.float32), (2,), name="fed")
    total = (fed + w).sum()
    assert total.item() == pytest.approx(32.0)
    assert fed.numpy().tolist() == [10.0, 20.0]               # a Feeder's value is kept, not fed again
    ad.execute(device=device)                                 # interactive: runs only what is pending
    assert len(got) == 1
    np.testing.assert_allclose(got[0], [1, 1])


def test_cache_counts_and_clear():
    w = ad.Tensor(np.ones(2, np.float32), name="w")
    for _ in range(3):
        (w * 2).sum().item()
    (w * 2).mean().item()
    info = ad.compile_cache_info()
    assert (info.hits, info.misses, info.size) == (2, 2, 2)
    ad.clear_compile_cache()
    assert ad.compile_cache_info() == ad.CacheInfo(0, 0, 0)


def test_a_step_run_in_the_background_raises_at_the_next_read():
    w = ad.Tensor(np.ones(2, np.float32), name="w")
    (w * 1).sum().item()

    def broken(value: np.ndarray) -> None:
        raise RuntimeError("receiver failed")
    w.add_(1.0)
    ad.Receiver(broken, [w * 1], name="broken")
    w.grad = None                    # zero_grad(): the step runs when the next op is traced
    y = w * 3                        # traced while the step runs
    with pytest.raises(ad.ReceiverError, match="receiver failed"):
        y.numpy()
    np.testing.assert_allclose(y.numpy(), [6, 6])   # the update ran; the trace goes on


def test_autodiffs_own_messages_do_not_run_anything():
    t = ad.Tensor(np.ones(2, np.float32)) * 2
    with pytest.raises(TraceError, match=r"got Tensor\(node %\d+, shape=\(2,\)"):
        nn.SGD([t], lr=0.1)
    assert not ad.current_program().eager and ad.compile_cache_info().misses == 0


def test_a_program_that_reads_nothing_compiles_as_before(device):
    w = ad.Tensor(np.ones(2, np.float32), name="w")
    seen = []
    ad.ir_for(3, lambda: w.add_(1.0))
    ad.Receiver(lambda v: seen.append(float(v.sum())), [w * 1])
    before = ad.print_graph(file=io.StringIO())
    ad.execute(device=device)
    ad.execute(device=device)        # ahead of time, execute() runs the whole program again
    assert seen == [8.0, 14.0] and ad.print_graph(file=io.StringIO()) == before
    assert not ad.current_program().eager and ad.compile_cache_info().misses == 0
