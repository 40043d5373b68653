"""RMSprop, Adagrad, parameter groups, torch-layout state dicts, gradient clipping and LR
schedulers, each run inside `ir_for` against torch doing the same steps on the same weights."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pytest
import torch

import autodiff as ad
from autodiff import checkpoint, nn
from autodiff.nn.optim import SGD, Adagrad, Adam, AdamW, RMSprop, lr_scheduler

STEPS = 30
RNG = np.random.default_rng(3)
X = RNG.standard_normal((6, 4)).astype(np.float32)
Y = RNG.standard_normal((6, 2)).astype(np.float32)
W0 = RNG.standard_normal((4, 2)).astype(np.float32)
B0 = RNG.standard_normal(2).astype(np.float32)


def _ours(device: str, make_opt: Callable, make_sched: Callable | None = None, steps: int = STEPS,
          clip: Callable | None = None) -> tuple[dict, list[list[float]], list, object]:
    """Train w, b on the fixed batch inside ir_for; returns final weights, the rates the
    scheduler reported before each step, clip's traced results per step, and the optimizer."""
    w, b = ad.Tensor(W0.copy(), name="w"), ad.Tensor(B0.copy(), name="b")
    opt = make_opt(w, b)
    sched = make_sched(opt) if make_sched else None
    x, y = ad.Tensor(X, requires_grad=False), ad.Tensor(Y, requires_grad=False)
    rates: list[list[float]] = []
    clipped: list = []

    def body() -> None:
        if sched is not None:
            ad.Receiver(lambda *r: rates.append([float(v) for v in r]), sched.get_last_lr(), name="lr")
        opt.zero_grad()
        (((x @ w + b) - y) ** 2).mean().backward()
        if clip is not None:
            ad.Receiver(lambda *v: clipped.append(v), clip([w, b]), name="clip")
        opt.step()
        if sched is not None:
            sched.step()

    ad.ir_for(steps, body)
    ad.execute(device=device)
    return {"w": w.numpy(), "b": b.numpy()}, rates, clipped, opt


def _theirs(make_opt: Callable, make_sched: Callable | None = None, steps: int = STEPS,
            clip: Callable | None = None) -> tuple[dict, list[list[float]], list, object]:
    w = torch.tensor(W0.copy(), requires_grad=True)
    b = torch.tensor(B0.copy(), requires_grad=True)
    opt = make_opt(w, b)
    sched = make_sched(opt) if make_sched else None
    x, y = torch.from_numpy(X), torch.from_numpy(Y)
    rates, clipped = [], []
    for _ in range(steps):
        if sched is not None:
            rates.append(list(sched.get_last_lr()))
        opt.zero_grad()
        (((x @ w + b) - y) ** 2).mean().backward()
        if clip is not None:
            clipped.append(clip([w, b]))
        opt.step()
        if sched is not None:
            sched.step()
    return {"w": w.detach().numpy(), "b": b.detach().numpy()}, rates, clipped, opt


def _compare(device: str, ours: Callable, theirs: Callable, make_sched=None, make_tsched=None,
             rtol: float = 1e-5, atol: float = 1e-6, steps: int = STEPS, clips: tuple = (None, None)) -> tuple:
    got = _ours(device, ours, make_sched, steps, clips[0])
    expected = _theirs(theirs, make_tsched, steps, clips[1])
    for name in ("w", "b"):
        assert not np.allclose(got[0][name], W0 if name == "w" else B0), name   # it moved
        np.testing.assert_allclose(got[0][name], expected[0][name], rtol=rtol, atol=atol, err_msg=name)
    np.testing.assert_allclose(np.array(got[1]), np.array(expected[1]), rtol=1e-5, atol=1e-9, err_msg="lr")
    return got, expected


OPTIMIZERS: dict[str, tuple[Callable, Callable]] = {
    "rmsprop": (lambda w, b: RMSprop([w, b]), lambda w, b: torch.optim.RMSprop([w, b])),
    "rmsprop_centered_momentum": (
        lambda w, b: RMSprop([w, b], lr=3e-3, alpha=0.9, eps=1e-6, weight_decay=0.1, momentum=0.8, centered=True),
        lambda w, b: torch.optim.RMSprop([w, b], lr=3e-3, alpha=0.9, eps=1e-6, weight_decay=0.1, momentum=0.8,
                                         centered=True)),
    "adagrad": (lambda w, b: Adagrad([w, b], lr=0.1), lambda w, b: torch.optim.Adagrad([w, b], lr=0.1)),
    "adagrad_decay_init": (
        lambda w, b: Adagrad([w, b], lr=0.2, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.3),
        lambda w, b: torch.optim.Adagrad([w, b], lr=0.2, lr_decay=0.05, weight_decay=0.1,
                                         initial_accumulator_value=0.3)),
    "adam_groups_maximize": (
        lambda w, b: Adam([{"params": [w], "weight_decay": 0.1}, {"params": b, "lr": 0.05, "betas": (0.5, 0.9)}],
                          lr=1e-2),
        lambda w, b: torch.optim.Adam([{"params": [w], "weight_decay": 0.1},
                                       {"params": b, "lr": 0.05, "betas": (0.5, 0.9)}], lr=1e-2)),
    "sgd_groups": (
        lambda w, b: SGD([{"params": [w], "momentum": 0.9, "nesterov": True}, {"params": [b], "maximize": True}],
                         lr=0.05),
        lambda w, b: torch.optim.SGD([{"params": [w], "momentum": 0.9, "nesterov": True},
                                      {"params": [b], "maximize": True}], lr=0.05)),
}


@pytest.mark.parametrize("config", list(OPTIMIZERS))
def test_optimizer_matches_torch_and_state_dicts_cross_load(config: str, device: str) -> None:
    ours, theirs = OPTIMIZERS[config]
    got, expected = _compare(device, ours, theirs, steps=8)
    opt, topt = got[3], expected[3]
    state, tstate = opt.state_dict(), topt.state_dict()
    # the same layout and values as torch's
    assert [g["params"] for g in state["param_groups"]] == [g["params"] for g in tstate["param_groups"]]
    for ours_group, torch_group in zip(state["param_groups"], tstate["param_groups"]):
        assert set(ours_group) <= set(torch_group) | {"gamma", "decay_every", "min_lr"}
        assert all(ours_group[k] == torch_group[k] for k in ours_group if k != "params" and k in torch_group)
    for index, values in tstate["state"].items():
        values = {k: v for k, v in values.items() if v is not None}
        assert set(state["state"][index]) == set(values)
        for key, value in values.items():
            np.testing.assert_allclose(state["state"][index][key], value.numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=f"{index}.{key}")
    # torch accepts ours, ours accepts torch's
    fresh_torch = theirs(torch.zeros(4, 2, requires_grad=True), torch.zeros(2, requires_grad=True))
    fresh_torch.load_state_dict(checkpoint.to_torch(opt))
    for index, values in fresh_torch.state_dict()["state"].items():
        for key, value in values.items():
            if value is not None:
                np.testing.assert_array_equal(value.numpy(), state["state"][index][key])
    fresh = ours(ad.Tensor(np.zeros((4, 2), np.float32)), ad.Tensor(np.zeros(2, np.float32)))
    fresh.load_state_dict(tstate)
    for index, values in fresh.state_dict()["state"].items():
        for key, value in values.items():
            np.testing.assert_allclose(value, tstate["state"][index][key].numpy(), rtol=0, atol=0)


# --- schedulers ---------------------------------------------------------------------------

def _sgd(w, b):
    return SGD([{"params": [w]}, {"params": [b], "lr": 0.02}], lr=0.05, momentum=0.9)


def _tsgd(w, b):
    return torch.optim.SGD([{"params": [w]}, {"params": [b], "lr": 0.02}], lr=0.05, momentum=0.9)


S = lr_scheduler
T = torch.optim.lr_scheduler
SCHEDULERS: dict[str, tuple[Callable, Callable]] = {
    "step": (lambda o: S.StepLR(o, 4, gamma=0.5), lambda o: T.StepLR(o, 4, gamma=0.5)),
    "multistep": (lambda o: S.MultiStepLR(o, [3, 7, 7, 20], gamma=0.6), lambda o: T.MultiStepLR(o, [3, 7, 7, 20], gamma=0.6)),
    "exponential": (lambda o: S.ExponentialLR(o, 0.9), lambda o: T.ExponentialLR(o, 0.9)),
    "cosine": (lambda o: S.CosineAnnealingLR(o, T_max=12, eta_min=1e-3), lambda o: T.CosineAnnealingLR(o, 12, 1e-3)),
    "lambda": (lambda o: S.LambdaLR(o, [lambda e: 0.97 ** e, lambda e: ad.minimum(1.0, (e + 1) / 10)]),
               lambda o: T.LambdaLR(o, [lambda e: 0.97 ** e, lambda e: min(1.0, (e + 1) / 10)])),
    "constant": (lambda o: S.ConstantLR(o, factor=0.5, total_iters=4), lambda o: T.ConstantLR(o, 0.5, 4)),
    "linear": (lambda o: S.LinearLR(o, start_factor=0.1, total_iters=10), lambda o: T.LinearLR(o, 0.1, total_iters=10)),
    "onecycle": (lambda o: S.OneCycleLR(o, max_lr=[0.1, 0.05], total_steps=STEPS),
                 lambda o: T.OneCycleLR(o, max_lr=[0.1, 0.05], total_steps=STEPS)),
    "sequential": (lambda o: S.SequentialLR(o, [S.LinearLR(o, 0.2, total_iters=5), S.CosineAnnealingLR(o, 20)], [5]),
                   lambda o: T.SequentialLR(o, [T.LinearLR(o, 0.2, total_iters=5), T.CosineAnnealingLR(o, 20)], [5])),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_scheduler_in_ir_for_matches_torch(name: str, device: str) -> None:
    """The rate before each of 30 steps (get_last_lr) and the weights after them."""
    ours, theirs = SCHEDULERS[name]
    got, _ = _compare(device, _sgd, _tsgd, ours, theirs, rtol=2e-5, atol=2e-6)
    assert len(got[1]) == STEPS and len({tuple(r) for r in got[1]}) > 1   # the rate changed


def test_onecycle_three_phase_cycles_adam_beta1(device: str) -> None:
    make = lambda o: S.OneCycleLR(o, max_lr=0.05, total_steps=STEPS + 2, three_phase=True,  # noqa: E731
                                  anneal_strategy="linear", pct_start=0.25)
    tmake = lambda o: T.OneCycleLR(o, max_lr=0.05, total_steps=STEPS + 2, three_phase=True,  # noqa: E731
                                   anneal_strategy="linear", pct_start=0.25)
    _compare(device, lambda w, b: AdamW([w, b]), lambda w, b: torch.optim.AdamW([w, b]), make, tmake,
             rtol=2e-5, atol=2e-6)


def test_scheduler_counter_is_saved_and_restored(tmp_path) -> None:
    w = ad.Tensor(W0.copy())
    opt = SGD([w], lr=0.1)
    sched = S.StepLR(opt, 2)
    sched.load_state_dict(T.StepLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)]), 2).state_dict())
    sched.load_state_dict({"last_epoch": np.array(5)})
    checkpoint.save(tmp_path / "c.safetensors", {"optim": opt, "sched": sched})
    other = S.ExponentialLR(SGD([ad.Tensor(W0.copy())], lr=0.1), 0.5)
    checkpoint.restore(tmp_path / "c.safetensors", sched=other)
    assert int(other.last_epoch.numpy()) == 5


def test_scheduler_misuse_is_an_error() -> None:
    w = ad.Tensor(W0.copy())
    opt = SGD([w], lr=0.1)
    S.StepLR(opt, 2)
    S.ExponentialLR(opt, 0.5)
    (w * w).sum().backward()
    with pytest.raises(ad.TraceError, match="chaining"):
        opt.step()
    with pytest.raises(ad.TraceError, match="momentum > 0"):
        S.OneCycleLR(SGD([ad.Tensor(W0.copy())]), max_lr=0.1, total_steps=10)
    traced = SGD([ad.Tensor(W0.copy())], lr=0.1)
    traced.step()
    with pytest.raises(ad.TraceError, match="already traced"):
        S.StepLR(traced, 2)


def test_changing_a_hyper_parameter_after_tracing_warns() -> None:
    w, b = ad.Tensor(W0.copy()), ad.Tensor(B0.copy())
    opt = Adam([{"params": [b]}, {"params": [w]}], lr=1e-2)
    opt.param_groups[1]["lr"] = 0.5   # before tracing: taken, no warning
    (w * w).sum().backward()
    opt.step()
    opt.param_groups[1]["lr"] = 0.5   # unchanged: no warning
    with pytest.warns(UserWarning, match=r"param_groups\[1\]\['lr'\] changed from 0.5 to 0.1.*scheduler"):
        opt.param_groups[1]["lr"] = 0.1
    with pytest.warns(UserWarning, match="betas"):
        opt.param_groups[0]["betas"] = (0.8, 0.9)
    assert opt.param_groups[1]["lr"] == 0.1 and opt.lr == opt.defaults["lr"] == 1e-2


def test_param_group_errors() -> None:
    w = ad.Tensor(W0.copy())
    with pytest.raises(ad.TraceError, match="more than one group"):
        Adam([{"params": [w]}, {"params": [w]}])
    with pytest.raises(ad.TraceError, match="unknown hyper-parameters"):
        Adam([{"params": [w], "momentum": 0.9}])
    with pytest.raises(ad.TraceError, match="amsgrad"):
        Adam([w], amsgrad=True)
    with pytest.raises(ValueError):
        RMSprop([w], alpha=-1)
    with pytest.raises(ValueError, match="param groups"):
        Adam([w]).load_state_dict(torch.optim.Adam([{"params": [torch.zeros(1)]},
                                                    {"params": [torch.zeros(1)]}]).state_dict())


# --- gradient clipping --------------------------------------------------------------------

def _clip_both(max_norm: float, norm_type: float, value: float | None):
    def ours(params):
        if value is not None:
            nn.utils.clip_grad_value_(params, value)
        return [nn.utils.clip_grad_norm_(params, max_norm, norm_type)]

    def theirs(params):
        if value is not None:
            torch.nn.utils.clip_grad_value_(params, value)
        return [torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type).item()]
    return ours, theirs


@pytest.mark.parametrize("max_norm, norm_type, value", [(0.5, 2.0, None), (0.3, math.inf, 0.4), (0.6, 1.5, 0.2)])
def test_clip_grad_in_ir_for_matches_torch(max_norm: float, norm_type: float, value, device: str) -> None:
    ours, theirs = _clip_both(max_norm, norm_type, value)
    sgd = lambda w, b: SGD([w, b], lr=0.1, momentum=0.5)  # noqa: E731
    tsgd = lambda w, b: torch.optim.SGD([w, b], lr=0.1, momentum=0.5)  # noqa: E731
    got, expected = _compare(device, sgd, tsgd, clips=(ours, theirs), steps=10)
    norms = [float(v[0]) for v in got[2]]
    np.testing.assert_allclose(norms, [v[0] for v in expected[2]], rtol=1e-5)
    assert max(norms) > max_norm   # the clipping acted


def test_clip_grad_norm_error_if_nonfinite(device: str) -> None:
    w = ad.Tensor(np.array([1.0, -1.0], np.float32))
    (w * ad.Tensor(np.array([np.inf, 1.0], np.float32), requires_grad=False)).sum().backward()
    nn.utils.clip_grad_norm_([w], 1.0, error_if_nonfinite=True)
    with pytest.raises(ad.ReceiverError, match="non-finite"):
        ad.execute(device=device)


def test_state_of_a_never_stepped_torch_optimizer_resets_ours() -> None:
    """torch makes a parameter's state at its first step, so a fresh torch optimizer's
    state_dict has no entries: loading it starts ours again from the initial state."""
    weight = ad.Tensor(np.ones((2, 3), np.float32), name="w")
    opt = Adagrad([weight], lr=0.1, initial_accumulator_value=0.5)
    (weight * weight).sum().backward()
    opt.step()
    ad.execute(device="numpy")
    assert float(opt.state_dict()["state"][0]["sum"].sum()) != 3.0
    fresh = torch.optim.Adagrad([torch.nn.Parameter(torch.ones(2, 3))], lr=0.1, initial_accumulator_value=0.5)
    opt.load_state_dict(fresh.state_dict())
    state = opt.state_dict()["state"][0]
    np.testing.assert_array_equal(state["sum"], np.full((2, 3), 0.5, np.float32))
    assert int(state["step"]) == 0
