"""Module features (ModuleList/Dict, Parameter, buffers, apply, trace-time attributes), nn.init,
BatchNorm/GroupNorm and activations, each against PyTorch."""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import autodiff as ad
from autodiff import nn
import autodiff.nn.functional as F
from autodiff.checkpoint import to_torch


def _x(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _run_and_compare(cases: list[tuple[Callable, Callable, np.ndarray]], device: str,
                     rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """One traced program for all cases: each (ours, theirs, input) gives its output and the
    gradient of a random weighting of it with respect to the input, compared with torch."""
    got: list[np.ndarray] = []
    expected: list[tuple[np.ndarray, np.ndarray]] = []
    outs: list[ad.Tensor] = []
    for i, (ours, theirs, x) in enumerate(cases):
        t_x = torch.tensor(x, requires_grad=True)
        t_out = theirs(t_x)
        weights = np.random.default_rng(100 + i).standard_normal(tuple(t_out.shape)).astype(np.float32)
        (t_out * torch.from_numpy(weights)).sum().backward()
        expected.append((t_out.detach().numpy(), t_x.grad.numpy()))
        a_x = ad.Tensor(x, name=f"x{i}")
        a_out = ours(a_x)
        (a_out * ad.Tensor(weights, requires_grad=False)).sum().backward()
        outs += [a_out, a_x.grad]
    ad.Receiver(lambda *arrays: got.extend(arrays), outs)
    ad.execute(device=device)
    for i, (out, grad) in enumerate(expected):
        np.testing.assert_allclose(got[2 * i], out, rtol=rtol, atol=atol, err_msg=f"case {i} output")
        np.testing.assert_allclose(got[2 * i + 1], grad, rtol=rtol, atol=atol, err_msg=f"case {i} gradient")


# --- activations ---------------------------------------------------------------------------

def _edgy(*shape: int, seed: int = 0) -> np.ndarray:
    """Random values with the kinks and switches of the activations in them."""
    x = (_x(*shape, seed=seed) * 3).ravel()
    edges = np.array([0.0, -3.0, 3.0, -1.0, 1.0, 6.0, 30.0, -30.0, 2.5, 10.0, -0.5, 2.0], np.float32)
    x[:min(len(x), len(edges))] = edges[:len(x)]
    return x.reshape(shape)


def test_activations_functional_and_modules(device):
    x = _edgy(3, 7)
    cases = [
        (F.leaky_relu, TF.leaky_relu, x),
        (F.elu, TF.elu, x),
        (F.softplus, TF.softplus, x),
        (F.mish, TF.mish, x),
        (F.hardswish, TF.hardswish, x),
        (F.hardtanh, TF.hardtanh, x),
        (F.relu6, TF.relu6, x),
        (lambda t: F.log_softmax(t, 1), lambda t: TF.log_softmax(t, 1), x),
        (nn.LeakyReLU(0.2), torch.nn.LeakyReLU(0.2), x),
        (nn.ELU(0.5), torch.nn.ELU(0.5), x),
        (nn.Softplus(2.0, 5.0), torch.nn.Softplus(2.0, 5.0), x),
        (nn.Mish(), torch.nn.Mish(), x),
        (nn.Hardswish(), torch.nn.Hardswish(), x),
        (nn.Hardtanh(-0.5, 2.0), torch.nn.Hardtanh(-0.5, 2.0), x),
        (nn.ReLU6(), torch.nn.ReLU6(), x),
        (nn.LogSoftmax(0), torch.nn.LogSoftmax(0), x),
    ]
    _run_and_compare(cases, device)


def test_activations_edge_shapes(device):
    # an axis of 1, odd sizes, and no elements at all
    modules = [(nn.LeakyReLU(), torch.nn.LeakyReLU()), (nn.ELU(), torch.nn.ELU()),
               (nn.Softplus(), torch.nn.Softplus()), (nn.Mish(), torch.nn.Mish()),
               (nn.Hardswish(), torch.nn.Hardswish()), (nn.Hardtanh(), torch.nn.Hardtanh()),
               (nn.LogSoftmax(-1), torch.nn.LogSoftmax(-1))]
    shapes = [(1, 1), (5, 1), (0, 3)]
    cases = [(ours, theirs, _edgy(*shape, seed=i)) for i, (ours, theirs) in enumerate(modules)
             for shape in shapes]
    _run_and_compare(cases, device)


def test_softmax_implicit_dim_is_torchs():
    x = ad.Tensor(_x(2, 3, 4))
    with pytest.warns(UserWarning, match="Implicit dimension choice for log_softmax"):
        out = nn.LogSoftmax()(x)
    ad.Receiver(lambda a: np.testing.assert_allclose(
        a, torch.nn.LogSoftmax(0)(torch.from_numpy(_x(2, 3, 4))).numpy(), rtol=1e-5, atol=1e-6), [out])
    with pytest.warns(UserWarning, match="Implicit dimension choice for softmax"):
        ours = nn.Softmax()(ad.Tensor(_x(3, 4)))
    ad.Receiver(lambda a: np.testing.assert_allclose(a, TF.softmax(torch.from_numpy(_x(3, 4)), 1).numpy(),
                                                     rtol=1e-5, atol=1e-6), [ours])
    ad.execute(device="numpy")


def test_activation_argument_errors():
    x = ad.Tensor(_x(2, 3))
    for fn in (lambda: F.leaky_relu(x, inplace=True), lambda: nn.ELU(inplace=True)(x),
               lambda: F.hardtanh(x, 1.0, -1.0)):
        with pytest.raises(ad.TraceError):
            fn()
    with pytest.raises(ValueError):
        nn.Hardtanh(1.0, 1.0)


# --- BatchNorm in a training loop --------------------------------------------------------

BN_CONFIGS = {
    "1d_2d_input": (nn.BatchNorm1d, torch.nn.BatchNorm1d, (6, 3), {}),
    "1d_3d_input_cumulative": (nn.BatchNorm1d, torch.nn.BatchNorm1d, (4, 3, 5), {"momentum": None}),
    "2d_momentum": (nn.BatchNorm2d, torch.nn.BatchNorm2d, (2, 3, 4, 5), {"momentum": 0.3, "eps": 1e-3}),
    "2d_one_channel_odd": (nn.BatchNorm2d, torch.nn.BatchNorm2d, (3, 1, 1, 3), {}),
}
STEPS = 4


@pytest.mark.parametrize("config", list(BN_CONFIGS))
def test_batch_norm_training_loop_then_eval(device, config):
    ours_cls, theirs_cls, shape, kwargs = BN_CONFIGS[config]
    channels = shape[1]
    rng = np.random.default_rng(3)
    batches = (rng.standard_normal((STEPS,) + shape) * 2 + 1).astype(np.float32)
    weights = rng.standard_normal((STEPS,) + shape).astype(np.float32)
    x_eval = _x(*shape, seed=9)

    theirs = theirs_cls(channels, **kwargs)
    ours = ours_cls(channels, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    t_opt = torch.optim.SGD(theirs.parameters(), lr=0.1)
    t_train: list[tuple[np.ndarray, np.ndarray]] = []
    for step in range(STEPS):
        t_x = torch.tensor(batches[step], requires_grad=True)
        t_opt.zero_grad()
        out = theirs(t_x)
        (out * torch.from_numpy(weights[step])).sum().backward()
        t_opt.step()
        t_train.append((out.detach().numpy(), t_x.grad.numpy()))
    theirs.eval()
    t_eval = theirs(torch.from_numpy(x_eval)).detach().numpy()

    xs, ws = iter(batches), iter(weights)   # the Feeders draw one batch per iteration
    got_train: list[tuple[np.ndarray, np.ndarray]] = []
    opt = nn.SGD(ours.parameters(), lr=0.1)

    def step() -> None:
        x = ad.Feeder(lambda: next(xs), shape, name="x")
        w = ad.Feeder(lambda: next(ws), shape, name="w")
        out = ours(x)
        loss = (out * w).sum()
        opt.zero_grad()
        (x_grad,) = ad.grad(loss, [x])
        loss.backward()
        opt.step()
        ad.Receiver(lambda o, g: got_train.append((o, g)), [out, x_grad], name="train")

    ad.ir_for(STEPS, step)
    ours.eval()
    got_eval: list[np.ndarray] = []
    ad.Receiver(lambda o: got_eval.append(o), [ours(ad.Tensor(x_eval, name="x_eval"))], name="eval")
    ad.execute(device=device)

    for i, ((o, g), (t_o, t_g)) in enumerate(zip(got_train, t_train)):
        np.testing.assert_allclose(o, t_o, rtol=1e-4, atol=1e-5, err_msg=f"train output {i}")
        np.testing.assert_allclose(g, t_g, rtol=1e-3, atol=1e-4, err_msg=f"input gradient {i}")
    assert len(got_train) == STEPS
    state, t_state = ours.state_dict(), theirs.state_dict()
    assert list(state) == list(t_state)
    for key, value in t_state.items():
        np.testing.assert_allclose(state[key], value.numpy(), rtol=1e-4, atol=1e-5, err_msg=key)
    assert state["num_batches_tracked"].dtype == np.int32 and state["num_batches_tracked"] == STEPS
    np.testing.assert_allclose(got_eval[0], t_eval, rtol=1e-4, atol=1e-5, err_msg="eval output")
