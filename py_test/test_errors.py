"""Errors a user gets: at trace time with op, shapes and source line; from Feeders; from Receivers."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

import autodiff as ad
from autodiff import nn


def _line() -> str:
    """'test_errors.py:<line of the caller>'."""
    return f"test_errors.py:{inspect.currentframe().f_back.f_lineno}"


def test_broadcast_mismatch_names_op_shapes_and_line():
    a = ad.Tensor(np.ones((2, 3), np.float32))
    b = ad.Tensor(np.ones((4,), np.float32))
    with pytest.raises(ad.TraceError) as info:
        where = _line(); a + b  # noqa: E702 - the error must name this very line
    message = str(info.value)
    assert "add" in message and "(2, 3)" in message and "(4,)" in message
    assert where in message


def test_matmul_mismatch_names_both_shapes_and_line():
    a = ad.Tensor(np.ones((2, 3), np.float32))
    b = ad.Tensor(np.ones((4, 5), np.float32))
    with pytest.raises(ad.TraceError) as info:
        where = _line(); a @ b  # noqa: E702
    assert "matmul" in str(info.value) and "(2, 3)" in str(info.value) and "(4, 5)" in str(info.value)
    assert where in str(info.value)


def test_error_inside_module_points_at_user_line():
    layer = nn.Linear(3, 4)
    x = ad.Tensor(np.ones((2, 5), np.float32))
    with pytest.raises(ad.TraceError) as info:
        where = _line(); layer(x)  # noqa: E702
    assert where in str(info.value)


def test_bad_reshape_and_index():
    x = ad.Tensor(np.ones((2, 3), np.float32))
    with pytest.raises(ad.TraceError, match=r"reshape.*\(2, 3\)"):
        x.reshape(4, 2)
    with pytest.raises(ad.TraceError, match="out of range"):
        x[5]
    with pytest.raises(ad.TraceError, match="out of range"):
        x.sum(dim=2)


def test_value_from_loop_body_used_outside():
    p = ad.Tensor(np.ones(2, np.float32))
    inside = []
    ad.ir_for(2, lambda: inside.append(p * 2))
    with pytest.raises(ad.TraceError, match="ir_for"):
        inside[0] + 1


def test_feeder_wrong_shape_names_feeder_and_iteration(device):
    calls = []

    def feed() -> np.ndarray:
        calls.append(1)
        shape = (2, 3) if len(calls) < 3 else (3, 2)
        return np.zeros(shape, np.float32)

    ad.ir_for(5, lambda: ad.Receiver(lambda v: None, [ad.Feeder(feed, (2, 3), name="batch")]))
    with pytest.raises(ad.FeederError) as info:
        ad.execute(device=device)
    message = str(info.value)
    assert "batch" in message and "iteration 2" in message and "(3, 2)" in message


def test_feeder_wrong_dtype_is_an_error(device):
    x = ad.Feeder(lambda: np.zeros((2,), np.float64), (2,), name="x64")
    ad.Receiver(lambda v: None, [x])
    with pytest.raises(ad.FeederError, match="x64.*float64"):
        ad.execute(device=device)


def test_receiver_error_surfaces_and_keeps_persistent_values(device):
    p = ad.Tensor(np.zeros(1, np.float32), name="p")

    def check(v: np.ndarray) -> None:
        if v[0] >= 3:
            raise RuntimeError("stop here")

    def body():
        p.add_(1)
        ad.Receiver(check, [p * 1], name="watch")

    ad.ir_for(10, body)
    with pytest.raises(ad.ReceiverError) as info:
        ad.execute(device=device)
    assert "watch" in str(info.value) and info.value.receiver == "watch"
    assert isinstance(info.value.__cause__, RuntimeError)
    # the work done is kept: every device stops at the same point, the failing iteration plus
    # FAILURE_LEAD more of the outermost loop (here, the loop's end), and says so
    assert p.numpy()[0] == 10
    assert info.value.completed_iterations == 10


def test_unknown_device_and_option():
    with pytest.raises(ValueError, match="unknown device"):
        ad.execute(device="tpu")
    with pytest.raises(TypeError, match="unknown compile options"):
        ad.execute(device="numpy", fusion_level=3)


def test_assign_to_intermediate_is_an_error():
    x = ad.Tensor(np.ones(2, np.float32))
    with pytest.raises(ad.TraceError, match="persistent"):
        (x * 2).assign(x)


def test_backward_on_int_tensor_is_an_error():
    x = ad.Tensor(np.ones(2, np.int32))
    with pytest.raises(ad.TraceError, match="int32"):
        (x + 1).sum().backward()
