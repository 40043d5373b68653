"""Feeder / Receiver / ir_for semantics: call counts, order, nesting, every=k, carried state."""
from __future__ import annotations

import numpy as np
import pytest

import autodiff as ad


def test_feeder_called_once_per_iteration_in_order(device):
    calls: list[int] = []
    seen: list[float] = []

    def feed() -> np.ndarray:
        calls.append(len(calls))
        return np.full((2,), len(calls), np.float32)

    def body():
        x = ad.Feeder(feed, shape=(2,), name="x")
        ad.Receiver(lambda v: seen.append(float(v)), [x.sum()], name="sum")

    ad.ir_for(5, body)
    ad.execute(device=device)
    assert calls == [0, 1, 2, 3, 4]
    assert seen == [2.0, 4.0, 6.0, 8.0, 10.0]


def test_loop_index_and_range(device):
    seen: list[int] = []
    ad.ir_for(range(3, 11, 2), lambda i: ad.Receiver(lambda v: seen.append(int(v)), [i]))
    ad.execute(device=device)
    assert seen == [3, 5, 7, 9]


def test_nested_loops_order_and_indices(device):
    seen: list[tuple[str, int, int]] = []

    def outer(i):
        def inner(j):
            ad.Receiver(lambda a, b: seen.append(("in", int(a), int(b))), [i, j])
        ad.ir_for(3, inner)
        ad.Receiver(lambda a: seen.append(("out", int(a), -1)), [i])

    ad.ir_for(2, outer)
    ad.execute(device=device)
    expected = []
    for i in range(2):
        expected += [("in", i, j) for j in range(3)] + [("out", i, -1)]
    assert seen == expected


def test_receiver_every_k(device):
    seen: list[int] = []
    ad.ir_for(10, lambda i: ad.Receiver(lambda v: seen.append(int(v)), [i], every=3))
    ad.execute(device=device)
    assert seen == [2, 5, 8]   # the 3rd, 6th and 9th iterations


def test_receiver_outside_and_inside_loop_program_order(device):
    events: list[str] = []
    p = ad.Tensor(np.zeros(2, np.float32), name="p")
    ad.Receiver(lambda v: events.append(f"before {v.sum():g}"), [p * 1])

    def body():
        p.add_(1.0)
        ad.Receiver(lambda v: events.append(f"in {v.sum():g}"), [p * 1])

    ad.ir_for(2, body)
    ad.Receiver(lambda v: events.append(f"after {v.sum():g}"), [p * 1])
    ad.execute(device=device)
    assert events == ["before 0", "in 2", "in 4", "after 4"]


def test_inplace_update_carries_across_iterations(device):
    acc = ad.Tensor(np.zeros((3,), np.float32), name="acc")
    step = ad.Tensor(np.arange(3, dtype=np.float32), name="step")
    ad.ir_for(4, lambda: acc.assign(acc * 2 + step))
    ad.execute(device=device)
    expected = np.zeros(3, np.float32)
    for _ in range(4):
        expected = expected * 2 + np.arange(3)
    np.testing.assert_array_equal(acc.numpy(), expected)


def test_read_before_update_keeps_old_value(device):
    p = ad.Tensor(np.ones(2, np.float32), name="p")
    old = p * 1
    p.assign(p + 10)
    new = p * 1
    got = []
    ad.Receiver(lambda a, b: got.append((a.copy(), b.copy())), [old, new])
    ad.execute(device=device)
    np.testing.assert_array_equal(got[0][0], [1, 1])
    np.testing.assert_array_equal(got[0][1], [11, 11])


def test_loop_invariant_value_from_outside(device):
    x = ad.Tensor(np.full(2, 3.0, np.float32))
    doubled = x * 2              # computed once, before the loop
    acc = ad.Tensor(np.zeros(2, np.float32))
    ad.ir_for(3, lambda: acc.add_(doubled))
    ad.execute(device=device)
    np.testing.assert_array_equal(acc.numpy(), [18, 18])


def test_second_execute_continues_from_persistent_values(device):
    p = ad.Tensor(np.zeros(1, np.float32))
    ad.ir_for(2, lambda: p.add_(1))
    ad.execute(device=device)
    ad.execute(device=device)
    assert p.numpy()[0] == 4


def test_compile_then_run_twice(device):
    p = ad.Tensor(np.zeros(1, np.float32))
    p.add_(1)
    compiled = ad.compile(device=device)
    assert p.numpy()[0] == 0   # compiling runs nothing
    compiled.run()
    report = compiled.run()
    assert p.numpy()[0] == 2
    assert report.run_seconds >= 0 and report.compile_seconds >= 0


def test_training_loop_sgd_decreases_loss(device):
    rng = np.random.default_rng(0)
    w = ad.Tensor(rng.standard_normal((3, 1)).astype(np.float32), name="w")
    true_w = np.array([[1.0], [-2.0], [0.5]], np.float32)
    losses: list[float] = []

    def feed() -> np.ndarray:
        return rng.standard_normal((8, 3)).astype(np.float32)

    def body():
        x = ad.Feeder(feed, shape=(8, 3), name="x")
        y = x @ ad.Tensor(true_w, requires_grad=False)
        loss = ((x @ w - y) ** 2).mean()
        w.grad = None
        loss.backward()
        w.sub_(w.grad * 0.1)
        ad.Receiver(lambda v: losses.append(float(v)), [loss], name="loss")

    ad.ir_for(100, body)
    ad.execute(device=device)
    assert len(losses) == 100
    assert losses[-1] < 1e-3 * losses[0]
    np.testing.assert_allclose(w.numpy(), true_w, atol=1e-2)


def test_program_context_isolated(device):
    outer = ad.Tensor(np.zeros(1, np.float32))
    with ad.Program() as p:
        q = ad.Tensor(np.zeros(1, np.float32))
        q.add_(5)
        p.execute(device=device)
    assert q.numpy()[0] == 5
    assert len(ad.current_program().root.nodes) == 0
    assert outer.numpy()[0] == 0


def test_reset_clears_program():
    ad.Tensor(np.zeros(1, np.float32)).add_(1)
    assert ad.current_program().root.nodes
    ad.reset()
    assert not ad.current_program().root.nodes
    assert not ad.current_program().variables


def test_manual_seed_reproducible():
    ad.manual_seed(7)
    a = ad.randn(3, 4).numpy()
    ad.reset()
    ad.manual_seed(7)
    b = ad.randn(3, 4).numpy()
    np.testing.assert_array_equal(a, b)


def test_random_uniform_new_each_iteration_and_in_range(device):
    draws: list[np.ndarray] = []
    ad.ir_for(3, lambda: ad.Receiver(lambda v: draws.append(v), [ad.random_uniform((1000,))]))
    ad.execute(device=device)
    assert len(draws) == 3
    assert not np.array_equal(draws[0], draws[1])
    for d in draws:
        assert d.min() >= 0 and d.max() < 1
        assert abs(d.mean() - 0.5) < 0.05


def test_gradients_accumulate_until_zero_grad(device):
    w = ad.Tensor(np.array([2.0], np.float32))
    (w * 3).sum().backward()
    (w * w).sum().backward()          # accumulates: 3 + 2w = 7
    first = w.grad
    got = []
    ad.Receiver(lambda g: got.append(float(g[0])), [first])
    w.grad = None
    (w * 5).sum().backward()
    ad.Receiver(lambda g: got.append(float(g[0])), [w.grad])
    ad.execute(device=device)
    assert got == [7.0, 5.0]


def test_intermediate_numpy_inside_ir_for_raises_with_hint():
    # outside a loop an intermediate's value is read on demand (test_eager.py); inside a body
    # there is no one value at trace time
    x = ad.Tensor(np.ones(2, np.float32))

    def body() -> None:
        with pytest.raises(ad.TraceError, match="Receiver"):
            (x + 1).numpy()
    ad.ir_for(1, body)
