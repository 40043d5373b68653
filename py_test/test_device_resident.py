"""Persistent tensors left on the device between runs (backends.base.DeviceValue, switch
"device_resident"): the same numbers with the switch on and off, no upload of a tensor whose
value nobody read, and every other holder of a value of the last run served before that
value is overwritten."""
from __future__ import annotations

import os

import numpy as np
import pytest

import autodiff as ad
import autodiff.nn.functional as F
from autodiff import nn
from autodiff.backends.base import DeviceValue

pytestmark = pytest.mark.skipif("device_resident" in os.environ.get("AUTODIFF_DISABLE", ""),
                                reason="the switch under test is off")


@pytest.fixture
def opencl() -> str:
    from autodiff.backends.opencl import opencl_available
    if not opencl_available():
        pytest.skip("no OpenCL device")
    return "opencl"


def _switch(monkeypatch: pytest.MonkeyPatch, on: bool) -> None:
    if on:
        monkeypatch.delenv("AUTODIFF_DISABLE", raising=False)
    else:
        monkeypatch.setenv("AUTODIFF_DISABLE", "device_resident")


def _model(seed: int = 0) -> tuple[nn.Module, nn.Optimizer]:
    ad.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    return model, nn.SGD(model.parameters(), lr=0.1, momentum=0.9)


def _batches(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [(rng.standard_normal((8, 6)).astype(np.float32), rng.integers(0, 3, 8).astype(np.int32))
            for _ in range(count)]


def _jit_training(opencl: str, read_between: bool) -> tuple[list[float], list[np.ndarray], list[int]]:
    """Losses and final parameters of 5 jit steps, and the uploads of parameters per call."""
    ad.reset()
    model, opt = _model()

    @ad.jit(device=opencl)
    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    batches = _batches(5)
    executor = step.compile(*batches[0]).executor
    uploads: list[str] = []
    upload = executor.upload
    executor.upload = lambda buffer, host: (uploads.append(buffer.name), upload(buffer, host))[1]
    losses, per_call = [], []
    for i, (x, y) in enumerate(batches):
        before = len(uploads)
        losses.append(float(step(x, y)))
        per_call.append(sum(1 for name in uploads[before:] if name in ("weight", "bias")))
        if read_between and i == 2:
            weight = model[0].weight._var.value     # read on the host, then changed in place
            weight[0, :] = 0.5
    return losses, [p.numpy() for p in model.parameters()], per_call


@pytest.mark.parametrize("read_between", [False, True], ids=["unread", "read-and-changed"])
def test_jit_steps_agree_with_the_switch_off_and_skip_uploads(opencl, monkeypatch, read_between):
    _switch(monkeypatch, True)
    losses, params, uploads = _jit_training(opencl, read_between)
    _switch(monkeypatch, False)
    losses_off, params_off, uploads_off = _jit_training(opencl, read_between)
    np.testing.assert_allclose(losses, losses_off, rtol=1e-6)
    for ours, theirs in zip(params, params_off):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
    assert uploads_off == [4] * 5                       # every call uploads the 4 parameters
    # on: only the first call, and the call after the host changed a weight (that one tensor)
    assert uploads == ([4, 0, 0, 1, 0] if read_between else [4, 0, 0, 0, 0])


def test_values_stay_on_the_device_until_read(opencl):
    ad.reset()
    model, opt = _model()

    @ad.jit(device=opencl)
    def step(x, y):
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()

    x, y = _batches(1)[0]
    step(x, y)
    weight = model[0].weight._var
    assert isinstance(weight.stored, DeviceValue)
    assert weight.shape == (16, 6) and weight.dtype == "float32"   # known without a download
    assert isinstance(weight.stored, DeviceValue)
    value = weight.value
    assert isinstance(value, np.ndarray) and weight.stored is value


def test_two_programs_sharing_parameters(opencl, monkeypatch):
    """One program updates the weights, another reads them: each sees the other's values."""
    def run() -> list[float]:
        ad.reset()
        model, opt = _model()

        @ad.jit(device=opencl)
        def train(x, y):
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()

        @ad.jit(device=opencl)
        def evaluate(x, y):
            return F.cross_entropy(model(x), y)

        out = []
        for x, y in _batches(4):
            train(x, y)
            out.append(float(evaluate(x, y)))
        return out
    _switch(monkeypatch, True)
    on = run()
    _switch(monkeypatch, False)
    np.testing.assert_allclose(on, run(), rtol=1e-6)


def test_two_models_alternating_in_one_cached_interactive_step(opencl, monkeypatch):
    """Both models' steps are one structural cache entry: binding the second model's tensors
    to its slots must first bring the first model's unread values to the host."""
    def run() -> list[np.ndarray]:
        ad.reset()
        ad.set_default_device(opencl)
        ad.clear_compile_cache()
        pairs = [_model(0), _model(1)]
        for x, y in _batches(6):
            for model, opt in pairs:
                loss = F.cross_entropy(model(ad.Tensor(x)), ad.Tensor(y))
                loss.backward()
                opt.step()
                opt.zero_grad()
                loss.item()
        return [p.numpy() for model, _ in pairs for p in model.parameters()]
    try:
        _switch(monkeypatch, True)
        on = run()
        assert ad.compile_cache_info().misses <= 2
        _switch(monkeypatch, False)
        off = run()
    finally:
        ad.set_default_device(None)
    for ours, theirs in zip(on, off):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)


def test_an_interactive_step_leaves_parameters_on_the_device_unless_a_user_receiver_runs(opencl):
    ad.reset()
    ad.set_default_device(opencl)
    try:
        model, opt = _model()
        seen: list[float] = []
        for with_receiver in (False, True):
            x, y = _batches(1)[0]
            loss = F.cross_entropy(model(ad.Tensor(x)), ad.Tensor(y))
            if with_receiver:
                ad.Receiver(lambda v: seen.append(float(v)), [loss], name="loss")
            loss.backward()
            opt.step()
            opt.zero_grad()
            loss.item()
            stored = model[0].weight._var.stored
            assert isinstance(stored, np.ndarray if with_receiver else DeviceValue)
        assert len(seen) == 1
    finally:
        ad.set_default_device(None)


def test_a_user_receiver_keeps_values_on_the_host(opencl):
    ad.reset()
    w = ad.Tensor(np.ones(3, np.float32), name="w")
    seen: list[float] = []
    w.assign(w * 2.0)
    ad.Receiver(lambda v: seen.append(float(v.sum())), [w])
    compiled = ad.compile(device=opencl)
    compiled.run()
    assert not compiled.executor.keeps_on_device
    assert isinstance(w._var.stored, np.ndarray)
    assert seen == [6.0]
