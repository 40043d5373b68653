"""Float constants are kernel arguments: a learning rate changes no kernel source (so a new
one rebuilds nothing), and the values still match the numpy-proc executor."""
from __future__ import annotations

import numpy as np
import pytest

import autodiff as ad
from autodiff import nn
from autodiff.backends.opencl import opencl_available


def _train(lr: float, device: str, disable: frozenset[str]):
    ad.reset()
    ad.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = nn.SGD(model.parameters(), lr=lr, momentum=0.9)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 8)).astype(np.float32), rng.standard_normal((32, 4)).astype(np.float32)

    def step():
        loss = ((model(ad.Tensor(x)) - ad.Tensor(y)) ** 2).mean() * 1.7
        opt.zero_grad()
        loss.backward()
        opt.step()

    ad.ir_for(3, step)
    compiled = ad.compile(device=device, disable=set(disable))
    compiled.run()
    return compiled, {k: np.array(v) for k, v in model.state_dict().items()}


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
@pytest.mark.parametrize("disable", [frozenset(), frozenset({"megakernel"})], ids=["megakernels", "single"])
def test_learning_rate_is_an_argument_not_source(disable):
    results = {}
    for lr in (0.01, 0.0037):
        compiled, state = _train(lr, "opencl", disable)
        _, expected = _train(lr, "numpy-proc", disable)
        for name in state:
            np.testing.assert_allclose(state[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=f"{lr} {name}")
        results[lr] = (compiled.kernels, state)
    (sources_a, state_a), (sources_b, state_b) = results.values()
    assert sources_a == sources_b
    assert not all(np.allclose(state_a[k], state_b[k]) for k in state_a)   # the two rates did differ
    assert not any("0.0037" in source or "0.01f" in source for source in sources_a.values())
