"""Several loop iterations per launch (OpenCL, switch "iterations_per_launch"): a loop whose
body is one megakernel runs a chunk of iterations per launch, its Feeder values staged in a
ring and its Receiver values read back from one. Every result must be the one the plain
loop gives (bit for bit: the same stages run), and the numpy device's within float error,
also when a Feeder or a Receiver raises part-way through a chunk."""
from __future__ import annotations

import os

import numpy as np
import pytest

import autodiff as ad
from autodiff.backends.host import FAILURE_LEAD
from autodiff.backends.opencl import opencl_available

pytestmark = pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")

OFF = {"iterations_per_launch"}


def _trace(count: int, seen: dict, fail_feeder_at: int | None = None, fail_receiver_at: int | None = None,
           inner: int | None = None) -> ad.Tensor:
    """A small training loop: a float and an int32 Feeder whose values change every call, the
    loop index in the arithmetic, an update of a persistent tensor, Receivers every iteration
    and every 3rd (two tensors in one). With `inner`, that loop runs inside an outer loop."""
    rng = np.random.default_rng(7)
    w = ad.Tensor(np.linspace(-1, 1, 32, dtype=np.float32).reshape(8, 4), name="w")
    calls = {"x": 0}

    def x_values() -> np.ndarray:
        calls["x"] += 1
        if calls["x"] - 1 == fail_feeder_at:
            raise RuntimeError("no more data")
        return rng.standard_normal((3, 8)).astype(np.float32)
    labels = iter(np.arange(10_000, dtype=np.int32) % 4)

    def receive_loss(v: np.ndarray) -> None:
        seen.setdefault("loss", []).append(float(v))
        if len(seen["loss"]) - 1 == fail_receiver_at:
            raise ValueError("stop here")

    def step(i: ad.Tensor) -> None:
        x = ad.Feeder(x_values, shape=(3, 8), name="x")
        label = ad.Feeder(lambda: np.array([next(labels)], np.int32), shape=(1,), dtype=np.int32, name="label")
        h = (x @ w).tanh() * (i.float() * 0.01 + 1.0)
        loss = (h - label.float()).square().mean()
        w.sub_((x.T @ (h * 0.1)) * 0.05)
        ad.Receiver(receive_loss, [loss], name="loss")
        ad.Receiver(lambda a, b: seen.setdefault("every3", []).append((a.copy(), float(b))), [w, label.float().sum()],
                    name="w", every=3)
    if inner is None:
        ad.ir_for(count, step)
    else:
        ad.ir_for(count, lambda: ad.ir_for(inner, step))
    return w


def _run(device: str, disable: set, **options) -> tuple[dict, np.ndarray, BaseException | None, object]:
    ad.reset()
    seen: dict = {}
    w = _trace(seen=seen, **options)
    compiled = ad.compile(device=device, disable=disable)
    error = None
    try:
        compiled.run()
    except Exception as err:   # noqa: BLE001 - compared between devices below
        error = err
    return seen, w.numpy(), error, compiled


def _same(a: tuple, b: tuple, exact: bool) -> None:
    (seen_a, w_a, err_a, _), (seen_b, w_b, err_b, _) = a, b
    check = np.testing.assert_array_equal if exact else (lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5,
                                                                                              atol=1e-6))
    check(np.array(seen_a["loss"]), np.array(seen_b["loss"]))
    assert len(seen_a.get("every3", [])) == len(seen_b.get("every3", []))
    for (wa, la), (wb, lb) in zip(seen_a.get("every3", []), seen_b.get("every3", [])):
        check(wa, wb)
        assert la == lb
    check(w_a, w_b)
    assert type(err_a) is type(err_b)
    if err_a is not None:
        assert str(err_a) == str(err_b)
        assert getattr(err_a, "completed_iterations", None) == getattr(err_b, "completed_iterations", None)


@pytest.mark.parametrize("options", [dict(count=37), dict(count=3, inner=11)], ids=["loop", "nested"])
def test_chunks_give_the_plain_loops_results(options):
    chunked = _run("opencl", set(), **options)
    iterated = chunked[3].executor.iterated
    assert iterated and all(i.per_launch >= 2 for i in iterated)
    iterations = options["count"] * options.get("inner", 1)
    assert chunked[3].executor.kernels_launched < iterations            # fewer launches than iterations
    _same(chunked, _run("opencl", OFF, **options), exact=True)
    _same(chunked, _run("numpy", set(), **options), exact=False)
    assert len(chunked[0]["loss"]) == iterations and chunked[2] is None


@pytest.mark.parametrize("fail", [dict(fail_feeder_at=13), dict(fail_receiver_at=5),
                                  dict(fail_receiver_at=2, count=FAILURE_LEAD + 40)],
                         ids=["feeder", "receiver", "receiver-long-loop"])
def test_a_failure_inside_a_chunk_stops_where_the_plain_loop_stops(fail):
    options = dict(count=37) | fail
    chunked = _run("opencl", set(), **options)
    assert chunked[2] is not None
    _same(chunked, _run("opencl", OFF, **options), exact=True)
    _same(chunked, _run("numpy", set(), **options), exact=False)
    if "fail_receiver_at" in fail:
        assert chunked[2].completed_iterations == min(options["count"], fail["fail_receiver_at"] + FAILURE_LEAD + 1)


def test_switch_off_keeps_one_launch_per_iteration():
    _, _, _, compiled = _run("opencl", OFF, count=9)
    assert not compiled.executor.iterated
    assert compiled.executor.kernels_launched >= 9


@pytest.mark.skipif("sink_receives" in os.environ.get("AUTODIFF_DISABLE", ""), reason="the switch under test is off")
@pytest.mark.parametrize("device_name", ["numpy-proc", "opencl"])
def test_receivers_move_behind_kernels_but_not_past_a_write_of_what_they_read(device_name):
    """schedule/receives.py: the loss Receiver leaves the middle of the body; the one reporting
    w before its update stays before it, and outside the loop nothing moves."""
    ad.reset()
    w = ad.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3), name="w")
    seen: dict = {}

    def step() -> None:
        ad.Receiver(lambda v: seen.setdefault("before", []).append(v.copy()), [w], name="before")
        loss = (w * w).sum()
        ad.Receiver(lambda v: seen.setdefault("loss", []).append(float(v)), [loss], name="loss")
        w.sub_(w * 0.1)
        ad.Receiver(lambda v: seen.setdefault("after", []).append(v.copy()), [w * 2.0], name="after")
    ad.Receiver(lambda v: seen.setdefault("first", []).append(v.copy()), [w * 1.0], name="first")
    ad.ir_for(4, step)
    compiled = ad.compile(device=device_name)
    compiled.run()
    loop = next(c for c in compiled.proc.commands if type(c).__name__ == "LoopCmd")
    order = [getattr(c, "name", "kernel") for c in loop.body]
    assert order.index("before") < next(n for n, c in enumerate(loop.body) if type(c).__name__ == "KernelCmd"
                                        and c.kernel.out.id == w_buffer_id(compiled))
    assert order[-2:] == ["loss", "after"]
    top = [type(c).__name__ for c in compiled.proc.commands]
    assert top.index("ReceiveCmd") < top.index("LoopCmd")   # "first": outside the loop, in place
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    for i in range(4):
        np.testing.assert_allclose(seen["before"][i], values, rtol=1e-6)
        np.testing.assert_allclose(seen["loss"][i], (values * values).sum(), rtol=1e-5)
        values = values - values * np.float32(0.1)
        np.testing.assert_allclose(seen["after"][i], values * 2, rtol=1e-6)


def w_buffer_id(compiled) -> int:
    return next(b.id for b in compiled.proc.buffers if b.name == "w")


def test_a_body_without_feeders_or_receivers_updating_many_tensors():
    """Adam with two parameter groups: int32 step counters and moments updated in place by
    stages of 1, 2 and 8 elements. PoCL 3.1 miscompiled this body in a for loop with the
    iteration count as an argument (the bias moment kept its old value): the kernel loops
    with a do-while."""
    from autodiff.nn.optim import Adam
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((6, 4)).astype(np.float32), rng.standard_normal((6, 2)).astype(np.float32)
    w0, b0 = rng.standard_normal((4, 2)).astype(np.float32), rng.standard_normal(2).astype(np.float32)
    results = []
    for disable in (set(), OFF):
        ad.reset()
        w, b = ad.Tensor(w0.copy(), name="w"), ad.Tensor(b0.copy(), name="b")
        opt = Adam([{"params": [w], "weight_decay": 0.1}, {"params": b, "lr": 0.05, "betas": (0.5, 0.9)}], lr=1e-2)
        tx, ty = ad.Tensor(x, requires_grad=False), ad.Tensor(y, requires_grad=False)

        def body() -> None:
            opt.zero_grad()
            (((tx @ w + b) - ty) ** 2).mean().backward()
            opt.step()
        ad.ir_for(7, body)
        compiled = ad.compile(device="opencl", disable=disable)
        compiled.run()
        assert bool(compiled.executor.iterated) == (not disable)
        results.append((w.numpy(), b.numpy()))
    for chunked, plain in zip(*results):
        np.testing.assert_array_equal(chunked, plain)
