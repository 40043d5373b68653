"""Optimizers inside `ir_for` against torch.optim from the same weights; SGD step decay."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch

import autodiff as ad
from autodiff import nn
import autodiff.nn.functional as F
from autodiff.nn.optim import SGD, Adam, AdamW

STEPS, BATCH = 20, 16

# (autodiff optimizer, torch optimizer) factories, each from a parameter list
CONFIGS: dict[str, tuple[Callable, Callable]] = {
    "adam": (lambda p: Adam(p, lr=1e-2),
             lambda p: torch.optim.Adam(p, lr=1e-2)),
    "adam_l2_betas": (lambda p: Adam(p, lr=3e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
                      lambda p: torch.optim.Adam(p, lr=3e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    "adamw": (lambda p: AdamW(p, lr=1e-2, weight_decay=0.1),
              lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1)),
    "adamw_default_decay": (lambda p: AdamW(p, lr=5e-3),
                            lambda p: torch.optim.AdamW(p, lr=5e-3)),
    "sgd_momentum": (lambda p: SGD(p, lr=0.1, momentum=0.9),
                     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    "sgd_nesterov_decay": (lambda p: SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=True),
                           lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2,
                                                     nesterov=True)),
}


def _batches() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    xs = rng.standard_normal((STEPS, BATCH, 4)).astype(np.float32)
    ys = np.sin(xs @ rng.standard_normal((4, 2))).astype(np.float32)
    return xs, ys


def _torch_params(state: dict[str, np.ndarray], make_opt: Callable, xs, ys) -> dict[str, np.ndarray]:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
    opt = make_opt(model.parameters())
    for step in range(STEPS):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(torch.from_numpy(xs[step])), torch.from_numpy(ys[step]))
        loss.backward()
        opt.step()
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_optimizer_in_ir_for_matches_torch(config: str, device: str) -> None:
    make_ours, make_torch = CONFIGS[config]
    xs, ys = _batches()
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    initial = model.state_dict()
    opt = make_ours(model.parameters())
    fed = {"x": 0, "y": 0}

    def feed(key: str, data: np.ndarray) -> Callable[[], np.ndarray]:
        def fn() -> np.ndarray:
            fed[key] += 1
            return data[fed[key] - 1]
        return fn

    def train_step() -> None:
        x = ad.Feeder(feed("x", xs), (BATCH, 4), name="x")
        y = ad.Feeder(feed("y", ys), (BATCH, 2), name="y")
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    ad.ir_for(STEPS, train_step)
    ad.execute(device=device)

    expected = _torch_params(initial, make_torch, xs, ys)
    assert fed == {"x": STEPS, "y": STEPS}
    for name, value in model.state_dict().items():
        assert not np.allclose(value, initial[name]), name   # the parameters did move
        np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_adam_state_matches_torch_state(device: str) -> None:
    """Moment buffers and step counters are listed by stable names, equal to torch's state."""
    xs, ys = _batches()
    weight = np.linspace(-1, 1, 8, dtype=np.float32).reshape(4, 2)
    w = ad.Tensor(weight, name="w")
    opt = Adam([w], lr=1e-2)
    assert sorted(opt.state_dict()["state"][0]) == ["exp_avg", "exp_avg_sq", "step"]
    rows = iter(xs)

    def train_step() -> None:
        x = ad.Feeder(lambda: next(rows), (BATCH, 4), name="x")
        ((x @ w - 1.0) ** 2).mean().backward()
        opt.step()
        opt.zero_grad()

    ad.ir_for(5, train_step)
    ad.execute(device=device)

    tw = torch.tensor(weight, requires_grad=True)
    topt = torch.optim.Adam([tw], lr=1e-2)
    for step in range(5):
        topt.zero_grad()
        ((torch.from_numpy(xs[step]) @ tw - 1.0) ** 2).mean().backward()
        topt.step()
    state = opt.state_dict()["state"][0]
    tstate = topt.state[tw]
    assert state["step"].dtype == np.int32 and int(state["step"]) == 5 == int(tstate["step"])
    np.testing.assert_allclose(state["exp_avg"], tstate["exp_avg"].numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(state["exp_avg_sq"], tstate["exp_avg_sq"].numpy(), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(w.numpy(), tw.detach().numpy(), rtol=1e-5, atol=1e-6)


def _decayed_lrs(lr: float, gamma: float, every: int, min_lr: float, steps: int) -> np.ndarray:
    return np.array([max(lr * gamma ** (t // every), min_lr) for t in range(steps)])


def test_sgd_step_decay_in_ir_for(device: str) -> None:
    """lr_t = max(lr * gamma ** (t // decay_every), min_lr), counted on the device."""
    lr, gamma, every, min_lr, steps = 0.1, 0.5, 3, 0.01, 14
    p = ad.Tensor(np.zeros(3, np.float32), name="p")
    opt = SGD([p], lr=lr, gamma=gamma, decay_every=every, min_lr=min_lr)
    seen: list[float] = []

    def train_step() -> None:
        ad.Receiver(lambda v: seen.append(float(v)), [opt.learning_rate()], name="lr")
        (p * ad.Tensor(np.array([1, 2, -1], np.float32), requires_grad=False)).sum().backward()
        opt.step()
        opt.zero_grad()

    ad.ir_for(steps, train_step)
    ad.execute(device=device)

    expected = _decayed_lrs(lr, gamma, every, min_lr, steps)
    assert expected[-1] == min_lr and expected[-4] > min_lr   # the run reaches the clamp
    np.testing.assert_allclose(seen, expected, rtol=1e-6)
    # gradient is the constant [1, 2, -1], so p moves by -lr_t * grad each step
    np.testing.assert_allclose(p.numpy(), -expected.sum() * np.array([1, 2, -1]), rtol=1e-6)
    assert opt.state_dict()["state"] == {0: {"step": np.array(steps, np.int32)}}


def test_sgd_decay_with_momentum_continues_across_runs(device: str) -> None:
    """The step counter persists: running the compiled program again keeps decaying."""
    lr, gamma, every, momentum = 0.2, 0.7, 2, 0.9
    p = ad.Tensor(np.ones(2, np.float32), name="p")
    opt = SGD([p], lr=lr, momentum=momentum, weight_decay=0.05, gamma=gamma, decay_every=every)

    def train_step() -> None:
        (p * p).sum().backward()
        opt.step()
        opt.zero_grad()

    ad.ir_for(5, train_step)
    program = ad.compile(device=device)
    program.run()
    program.run()

    value, buf = np.ones(2, np.float64), np.zeros(2, np.float64)
    for t, step_lr in enumerate(_decayed_lrs(lr, gamma, every, 0.0, 10)):
        grad = 2 * value + 0.05 * value
        buf = grad if t == 0 else momentum * buf + grad
        value = value - step_lr * buf
    np.testing.assert_allclose(p.numpy(), value, rtol=1e-5)
    assert int(opt.state_dict()["state"][0]["step"]) == 10


def test_sgd_without_decay_keeps_no_counter() -> None:
    p = ad.Tensor(np.ones(2, np.float32))
    assert SGD([p], lr=0.1).state_dict()["state"] == {}
    assert list(SGD([p], lr=0.1, momentum=0.9).state_dict()["state"][0]) == ["momentum_buffer"]
    assert SGD([p], lr=0.1).learning_rate() == 0.1


@pytest.mark.parametrize("bad", [dict(decay_every=0), dict(gamma=0.0), dict(nesterov=True),
                                 dict(lr=-1.0), dict(decay_every=1.5)])
def test_sgd_rejects_bad_settings(bad: dict) -> None:
    p = ad.Tensor(np.ones(2, np.float32))
    with pytest.raises(ValueError):
        SGD([p], **{"lr": 0.1, **bad})


def test_adam_rejects_bad_betas_and_loads_state_strictly() -> None:
    p = ad.Tensor(np.ones((2, 2), np.float32))
    with pytest.raises(ValueError):
        Adam([p], betas=(1.0, 0.999))
    opt = AdamW([p])
    assert opt.weight_decay == 1e-2
    state = opt.state_dict()
    state["state"][0]["step"] = np.array(7.0)     # a float from elsewhere keeps the counter's int32
    opt.load_state_dict(state)
    step = opt.state_dict()["state"][0]["step"]
    assert step.dtype == np.int32 and int(step) == 7
    exp_avg = state["state"][0]["exp_avg"]
    with pytest.raises(KeyError):
        opt.load_state_dict({"state": {0: {"exp_avg": exp_avg}}, "param_groups": state["param_groups"]})
    with pytest.raises(KeyError):
        opt.load_state_dict({"state": {**state["state"], 1: {"exp_avg": exp_avg}},
                             "param_groups": state["param_groups"]})
