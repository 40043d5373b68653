"""Failures give the same, stated state on every device: index checks, Receivers that raise,
device limits (issue: never a silently wrong number)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import autodiff as ad
import autodiff.nn.functional as F
from autodiff import nn
from autodiff.backends.host import FAILURE_LEAD


def _raised(device: str, disable: set = frozenset()) -> BaseException:
    with pytest.raises(Exception) as info:
        ad.execute(device, disable=set(disable))
    return info.value


# --- index checks ----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [12, -1])
def test_embedding_index_out_of_range_is_an_error(device, bad):
    emb = nn.Embedding(10, 4)
    out = emb(ad.Tensor(np.array([1, bad, 3], np.int32), requires_grad=False))   # the line named
    ad.Receiver(lambda v: None, [out])
    err = _raised(device)
    assert isinstance(err, ad.IndexOutOfRangeError) and isinstance(err, IndexError)
    assert str(err).startswith(f"embedding: index {bad} is out of range for size 10 (valid: 0 to 9; at ")
    assert "test_failures.py:" in str(err) and "outside any loop" in str(err)


def test_cross_entropy_target_out_of_range_is_an_error(device, rng):
    logits = ad.Tensor(rng.standard_normal((3, 10)).astype(np.float32))
    target = ad.Tensor(np.array([1, 12, 0], np.int32), requires_grad=False)
    ad.Receiver(lambda v: None, [F.cross_entropy(logits, target)])
    err = _raised(device)
    assert isinstance(err, ad.IndexOutOfRangeError) and "cross_entropy: index 12" in str(err)


def test_index_check_names_the_iteration_of_a_fed_index(device):
    emb = nn.Embedding(5, 2)
    batches = iter([np.array([0, 1], np.int32), np.array([2, 3], np.int32), np.array([4, 7], np.int32)])

    def step():
        idx = ad.Feeder(lambda: next(batches), shape=(2,), dtype=np.int32, name="idx")
        ad.Receiver(lambda v: None, [emb(idx).sum()])
    ad.ir_for(3, step)
    err = _raised(device)
    assert isinstance(err, ad.IndexOutOfRangeError)
    assert "index 7 is out of range for size 5" in str(err) and str(err).endswith("iteration 2")


def test_valid_indices_and_checks_switched_off(device):
    emb = nn.Embedding(10, 4)
    got = []
    ad.Receiver(lambda v: got.append(v), [emb(ad.Tensor(np.array([0, 9], np.int32), requires_grad=False))])
    ad.execute(device)
    np.testing.assert_allclose(got[0], emb.weight.numpy()[[0, 9]])
    compiled = ad.compile(device, disable={"index_check"})
    assert not any(n.op.value == "receiver" and n.args.check for n in compiled.graph.walk())


# --- Receivers that raise ----------------------------------------------------------------------

def _counting_loop(count: int, fail_at: float, calls: list) -> ad.Tensor:
    w = ad.Tensor(np.zeros(1, np.float32), name="w")

    def check(v: np.ndarray) -> None:
        calls.append(float(v[0]))
        if v[0] >= fail_at:
            raise RuntimeError("diverged")

    def step() -> None:
        w.assign(w + 1)
        ad.Receiver(check, [w], name="watch")
    ad.ir_for(count, step)
    return w


def test_a_raising_receiver_stops_at_the_same_point_on_every_device(device):
    calls: list = []
    w = _counting_loop(200, 6, calls)
    for _ in range(3):   # and from run to run
        w._var.value = np.zeros(1, np.float32)
        calls.clear()
        err = _raised(device)
        assert isinstance(err, ad.ReceiverError) and "watch" in str(err)
        # failing iteration 5, then FAILURE_LEAD more iterations, Receivers silent
        assert err.completed_iterations == 5 + FAILURE_LEAD + 1
        assert w.numpy()[0] == 5 + FAILURE_LEAD + 1
        assert calls == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_a_raising_receiver_in_an_inner_loop(device):
    w = ad.Tensor(np.zeros(1, np.float32), name="w")

    def inner() -> None:
        w.assign(w + 1)
        ad.Receiver(lambda v: 1 / 0 if v[0] == 3 else None, [w], name="inner")
    ad.ir_for(3, lambda: ad.ir_for(100, inner))
    err = _raised(device)
    assert isinstance(err, ad.ReceiverError)
    assert err.completed_iterations == 3 and w.numpy()[0] == 300   # every outer iteration ran in full


def test_a_raising_receiver_outside_loops_stops_at_once(device):
    w = ad.Tensor(np.zeros(1, np.float32), name="w")
    ad.Receiver(lambda v: 1 / 0, [w + 1], name="first")
    w.assign(w + 5)
    err = _raised(device)
    assert isinstance(err, ad.ReceiverError) and err.completed_iterations is None
    assert w.numpy()[0] == 0


# --- device limits -------------------------------------------------------------------------------

def test_a_buffer_over_the_largest_allocation_is_a_clear_error():
    from autodiff.backends.opencl import OpenCLExecutor, choose_device, opencl_available
    if not opencl_available():
        pytest.skip("no OpenCL device")
    x = ad.Tensor(np.ones(4, np.float32))
    ad.Receiver(lambda v: None, [x * 2])
    compiled = ad.compile("numpy-proc")
    largest = choose_device().max_mem_alloc_size
    plan = dataclasses.replace(compiled.plan, arena_bytes=largest + 64)
    with pytest.raises(ad.DeviceMemoryError, match="per allocation"):
        OpenCLExecutor(compiled.proc, plan)


def test_a_receiver_of_none_is_a_trace_error():
    w = ad.Tensor(np.ones(3, np.float32))
    with pytest.raises(ad.TraceError, match="None"):
        ad.Receiver(lambda v: None, [w.grad])
