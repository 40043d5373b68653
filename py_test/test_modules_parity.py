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
    with pytest.raises(ad.TraceError):
        F.hardtanh(x, 1.0, -1.0)
    with pytest.raises(ValueError):
        nn.Hardtanh(1.0, 1.0)


def test_inplace_activations_update_their_input_as_torch(device):
    """inplace=True: the input tensor (the same Python object) holds the result afterwards,
    in a chain like torch's `nn.Sequential(nn.Linear, nn.ReLU(inplace=True), ...)`, with the
    same values and gradients; a persistent input is assigned."""
    def build(lib, F_, x):
        h = x * 1.0
        returned = F_.leaky_relu(h, 0.1, inplace=True)
        h2 = lib.ReLU(inplace=True)(h - 0.5)
        h3 = lib.Dropout(0.0, inplace=True)(lib.SiLU(inplace=True)(h2 * 2.0))
        return returned is h, h + h3 + F_.hardtanh(h3 * 1.0, -0.5, 0.5, inplace=True)

    data = _x(3, 4)
    tx = torch.tensor(data, requires_grad=True)
    t_same, t_out = build(torch.nn, TF, tx)
    t_out.sum().backward()
    x = ad.Tensor(data, name="x")
    same, out = build(nn, F, x)
    assert same and t_same
    out.sum().backward()
    state = ad.Tensor(np.array([-1.0, 2.0], np.float32), name="state", requires_grad=False)
    assert F.relu(state, inplace=True) is state
    got: list[np.ndarray] = []
    ad.Receiver(lambda a, g, s: got.extend([a, g, s]), [out, x.grad, state])
    ad.execute(device=device)
    np.testing.assert_allclose(got[0], t_out.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], tx.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[2], [0.0, 2.0])


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


def _torch_batch_norm_without_bias(features: int) -> torch.nn.Module:
    """torch.nn.BatchNorm1d(features, bias=False); torch before 2.13 (2.11 on the GPU machine)
    has no `bias=`, so there the bias parameter is taken away (F.batch_norm takes None)."""
    try:
        return torch.nn.BatchNorm1d(features, bias=False)
    except TypeError:
        module = torch.nn.BatchNorm1d(features)
        module.register_parameter("bias", None)
        return module


def test_batch_norm_variants_one_program(device):
    """No affine / no bias, no running statistics (batch statistics in eval too), an eval
    forward from loaded statistics, and the functional forms, against torch in one program."""
    loaded = torch.nn.BatchNorm1d(4)
    loaded.running_mean.copy_(torch.from_numpy(_x(4, seed=1)))
    loaded.running_var.copy_(torch.from_numpy(np.abs(_x(4, seed=2)) + 0.5))
    loaded.weight.data.copy_(torch.from_numpy(_x(4, seed=3)))
    ours_loaded = nn.BatchNorm1d(4)
    ours_loaded.load_state_dict(loaded.state_dict())
    loaded.eval()
    ours_loaded.eval()
    mean, var = _x(3, seed=4), np.abs(_x(3, seed=5)) + 0.1
    w, b = _x(3, seed=6), _x(3, seed=7)
    a_mean, a_var, a_w, a_b = (ad.Tensor(v, requires_grad=False) for v in (mean, var, w, b))
    t_mean, t_var, t_w, t_b = (torch.from_numpy(v) for v in (mean, var, w, b))
    no_stats = nn.BatchNorm2d(3, affine=False, track_running_stats=False).eval()
    cases = [
        (nn.BatchNorm1d(5, affine=False), torch.nn.BatchNorm1d(5, affine=False), _x(7, 5)),
        (nn.BatchNorm1d(5, bias=False), _torch_batch_norm_without_bias(5), _x(2, 5, 1)),
        (no_stats, torch.nn.BatchNorm2d(3, affine=False, track_running_stats=False).eval(), _x(2, 3, 2, 3)),
        (ours_loaded, loaded, _x(5, 4, 3)),
        (lambda t: F.batch_norm(t, a_mean, a_var, a_w, a_b, False, 0.1, 1e-3),
         lambda t: TF.batch_norm(t, t_mean, t_var, t_w, t_b, False, 0.1, 1e-3), _x(2, 3, 4)),
        (lambda t: F.batch_norm(t, None, None, a_w, None, True),
         lambda t: TF.batch_norm(t, None, None, t_w, None, True), _x(4, 3)),
    ]
    _run_and_compare(cases, device, rtol=1e-4, atol=1e-4)
    assert ours_loaded.num_batches_tracked.numpy() == 0   # eval does not count batches


def test_batch_norm_state_dict_round_trip_both_ways():
    theirs = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    theirs(torch.randn(8, 3))   # moves the running statistics and counts one batch
    ours = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ours.load_state_dict(theirs.state_dict())   # int64 num_batches_tracked becomes int32
    state = ours.state_dict()
    assert list(state) == list(theirs.state_dict())
    assert state["1.num_batches_tracked"].dtype == np.int32 and state["1.num_batches_tracked"] == 1
    for key, value in theirs.state_dict().items():
        np.testing.assert_array_equal(state[key], value.numpy())
    back = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    back.load_state_dict(to_torch(ours))
    assert back[1].num_batches_tracked.dtype == torch.int64 and int(back[1].num_batches_tracked) == 1
    np.testing.assert_array_equal(back[1].running_var.numpy(), theirs[1].running_var.numpy())
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    # buffers are state, not parameters: optimizers never see them
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert len(ours.buffers()) == 3 and not ours.buffers()[0].requires_grad


def test_batch_norm_errors():
    for make, shape in ((lambda: nn.BatchNorm1d(3), (2, 3, 4, 5)), (lambda: nn.BatchNorm2d(3), (2, 3, 4)),
                        (lambda: nn.BatchNorm1d(3), (1, 3)), (lambda: nn.BatchNorm2d(4), (2, 3, 4, 4))):
        with pytest.raises(ad.TraceError):
            make()(ad.Tensor(np.zeros(shape, np.float32)))
    with pytest.raises(ad.TraceError, match="dtype"):
        nn.BatchNorm1d(3, dtype=torch.float64)
    with pytest.raises(ValueError):
        nn.GroupNorm(4, 6)
    with pytest.raises(ad.TraceError, match="divisible"):
        F.group_norm(ad.Tensor(np.zeros((2, 6), np.float32)), 4)


def test_batch_norm_empty_batch_leaves_statistics(device):
    ours = nn.BatchNorm1d(3)
    out = ours(ad.Tensor(np.zeros((0, 3), np.float32)))
    assert out.shape == (0, 3)
    ad.execute(device=device)
    np.testing.assert_array_equal(ours.running_mean.numpy(), 0.0)
    np.testing.assert_array_equal(ours.running_var.numpy(), 1.0)
    assert ours.num_batches_tracked.numpy() == 1   # torch counts the empty batch too


# --- GroupNorm -----------------------------------------------------------------------------

def _affine_group_norm(groups: int, channels: int, **kwargs) -> tuple[nn.GroupNorm, torch.nn.GroupNorm]:
    ours, theirs = nn.GroupNorm(groups, channels, **kwargs), torch.nn.GroupNorm(groups, channels, **kwargs)
    if kwargs.get("affine", True):
        ours.weight._var.value[:] = _x(channels, seed=channels)
        ours.bias._var.value[:] = _x(channels, seed=channels + 1)
        theirs.load_state_dict(to_torch(ours))
    return ours, theirs


def test_group_norm(device):
    cases = [
        (*_affine_group_norm(3, 6), _x(2, 6, 5)),
        (*_affine_group_norm(2, 4, eps=1e-3), _x(3, 4)),
        (*_affine_group_norm(4, 4), _x(1, 4, 1, 3)),
        (*_affine_group_norm(1, 3, affine=False), _x(2, 3, 2, 2)),
        (*_affine_group_norm(2, 4), np.zeros((0, 4, 3), np.float32)),
    ]
    gw, gb = _x(6, seed=11), _x(6, seed=12)
    cases.append((lambda t: F.group_norm(t, 2, ad.Tensor(gw), ad.Tensor(gb)),
                  lambda t: TF.group_norm(t, 2, torch.from_numpy(gw), torch.from_numpy(gb)), _x(2, 6, 3)))
    _run_and_compare(cases, device, rtol=1e-4, atol=1e-4)
    assert list(nn.GroupNorm(2, 4).state_dict()) == list(torch.nn.GroupNorm(2, 4).state_dict())


# --- Module features -----------------------------------------------------------------------

def test_module_list_and_dict_names_like_torch():
    ours = nn.ModuleList([nn.Linear(2, 3)])
    ours.append(nn.BatchNorm1d(3)).extend([nn.ReLU(), nn.Linear(3, 1)])
    ours.insert(1, nn.Linear(3, 3))
    theirs = torch.nn.ModuleList([torch.nn.Linear(2, 3)])
    theirs.append(torch.nn.BatchNorm1d(3)).extend([torch.nn.ReLU(), torch.nn.Linear(3, 1)])
    theirs.insert(1, torch.nn.Linear(3, 3))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert len(ours) == 5 and isinstance(ours[-1], nn.Linear) and isinstance(ours[2], nn.BatchNorm1d)
    assert [type(m).__name__ for m in ours] == [type(m).__name__ for m in theirs]
    assert len(ours[1:3]) == 2
    del ours[0]
    del theirs[0]
    assert list(ours.state_dict()) == list(theirs.state_dict())

    d = nn.ModuleDict({"enc": nn.Linear(2, 2), "norm": nn.GroupNorm(1, 2)})
    d["head"] = nn.Linear(2, 1)
    t_d = torch.nn.ModuleDict({"enc": torch.nn.Linear(2, 2), "norm": torch.nn.GroupNorm(1, 2)})
    t_d["head"] = torch.nn.Linear(2, 1)
    assert list(d.keys()) == list(t_d.keys()) and list(d) == list(t_d) and "norm" in d
    assert [type(m).__name__ for m in d.values()] == ["Linear", "GroupNorm", "Linear"]
    assert [k for k, _ in d.items()] == list(t_d.keys())
    assert list(d.state_dict()) == list(t_d.state_dict())
    assert isinstance(d.pop("norm"), nn.GroupNorm) and len(d) == 2 
    assert not any(k.startswith("norm.") for k in d.state_dict())


def test_parameter_buffers_and_apply():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(np.ones(3, np.float32))
            self.register_buffer("shift", ad.Tensor(np.zeros(3, np.float32)))
            self.register_buffer("scratch", ad.Tensor(np.zeros(2, np.float32)), persistent=False)
            self.body = nn.Sequential(nn.Linear(3, 3), nn.Tanh())

        def forward(self, x):
            return self.body(x * self.scale + self.shift)

    net = Net()
    assert [n for n, _ in net.named_parameters()] == ["scale", "body.0.weight", "body.0.bias"]
    assert [n for n, _ in net.named_buffers()] == ["shift", "scratch"]
    assert list(net.state_dict()) == ["scale", "shift", "body.0.weight", "body.0.bias"]
    assert isinstance(net.scale, nn.Parameter) and isinstance(net.body[0].weight, nn.Parameter)
    shared = nn.Parameter(net.scale)   # shares the device value, as torch shares storage
    assert shared._var is net.scale._var
    with pytest.raises(ad.TraceError):
        nn.Parameter(net.scale * 2)

    order: list[str] = []
    net.apply(lambda m: order.append(type(m).__name__))
    t_order: list[str] = []
    torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh())).apply(
        lambda m: t_order.append(type(m).__name__))
    assert order == ["Linear", "Tanh", "Sequential", "Net"]
    assert t_order == ["Linear", "Tanh", "Sequential", "Sequential"]
    net.apply(lambda m: nn.init.zeros_(m.bias) if isinstance(m, nn.Linear) else None)
    np.testing.assert_array_equal(net.body[0].bias.numpy(), 0.0)

    net.shift = ad.Tensor(np.full(3, 2.0, np.float32))   # a buffer stays a buffer when reassigned
    assert "shift" in dict(net.named_buffers()) and "shift" not in dict(net.named_parameters())
    opt = nn.SGD(net.parameters(), lr=0.1)
    assert len(opt.params) == 3


def test_changed_attribute_after_tracing_warns_once():
    drop, norm = nn.Dropout(0.5), nn.BatchNorm1d(2)
    x = ad.Tensor(_x(4, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        drop.p = 0.3        # not traced yet: no warning
        norm.momentum = 0.2
    drop(x)
    norm(x)
    with pytest.warns(UserWarning, match=r"Dropout\.p changed from 0\.3 to 0\.1.*keeps p=0\.3"):
        drop.p = 0.1
    with pytest.warns(UserWarning, match=r"BatchNorm1d\.eps"):
        norm.eps = 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        drop.p = 0.2        # once per attribute
        drop.eval()         # the mode is meant to change between traces
        ad.reset()          # a new program traces afresh
        norm.momentum = 0.5


def test_mode_is_read_at_trace_time(device):
    """train()/eval() choose what the next trace does: both forwards run in one program."""
    norm = nn.BatchNorm1d(3)
    x = _x(6, 3)
    got: list[np.ndarray] = []
    ad.Receiver(lambda a: got.append(a), [norm(ad.Tensor(x))])
    norm.eval()
    ad.Receiver(lambda a: got.append(a), [norm(ad.Tensor(x))])
    ad.execute(device=device)
    theirs = torch.nn.BatchNorm1d(3)
    np.testing.assert_allclose(got[0], theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)
    theirs.eval()
    np.testing.assert_allclose(got[1], theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


# --- nn.init ---------------------------------------------------------------------------------

def test_calculate_gain_matches_torch():
    for name in ("linear", "conv2d", "sigmoid", "tanh", "relu", "leaky_relu", "selu"):
        assert nn.init.calculate_gain(name) == pytest.approx(torch.nn.init.calculate_gain(name))
    assert nn.init.calculate_gain("leaky_relu", 0.2) == pytest.approx(torch.nn.init.calculate_gain("leaky_relu", 0.2))
    with pytest.raises(ValueError):
        nn.init.calculate_gain("swish")


def _bound_and_std(fn_ours: Callable, fn_theirs: Callable, shape: tuple[int, ...]) -> None:
    """Same distribution as torch's: equal support bound (uniform) and standard deviation."""
    t = ad.Tensor(np.zeros(shape, np.float32))
    fn_ours(t)
    ours = t.numpy()
    theirs = fn_theirs(torch.empty(shape)).numpy()
    assert abs(ours.std() - theirs.std()) < 0.05 * theirs.std(), (ours.std(), theirs.std())
    assert abs(ours.mean() - theirs.mean()) < 0.05 * theirs.std() + 1e-3


def test_init_distributions_match_torch():
    torch.manual_seed(0)
    shape = (64, 48, 3, 3)
    pairs = [
        (lambda t: nn.init.uniform_(t, -2, 3), lambda t: torch.nn.init.uniform_(t, -2, 3)),
        (lambda t: nn.init.normal_(t, 1.0, 0.5), lambda t: torch.nn.init.normal_(t, 1.0, 0.5)),
        (lambda t: nn.init.trunc_normal_(t, 0, 1, -1, 1), lambda t: torch.nn.init.trunc_normal_(t, 0, 1, -1, 1)),
        (lambda t: nn.init.xavier_uniform_(t, 2.0), lambda t: torch.nn.init.xavier_uniform_(t, 2.0)),
        (lambda t: nn.init.xavier_normal_(t), lambda t: torch.nn.init.xavier_normal_(t)),
        (lambda t: nn.init.kaiming_uniform_(t, a=5 ** 0.5), lambda t: torch.nn.init.kaiming_uniform_(t, a=5 ** 0.5)),
        (lambda t: nn.init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu"),
         lambda t: torch.nn.init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu")),
    ]
    for ours, theirs in pairs:
        _bound_and_std(ours, theirs, shape)
    t = ad.Tensor(np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(nn.init.constant_(t, 0.25).numpy(), 0.25)
    np.testing.assert_array_equal(nn.init.ones_(t).numpy(), 1.0)
    np.testing.assert_array_equal(nn.init.zeros_(t).numpy(), 0.0)
    bound = 3 ** 0.5 * torch.nn.init.calculate_gain("relu") / 48 ** 0.5
    w = nn.init.kaiming_uniform_(ad.Tensor(np.zeros((5, 48), np.float32)), nonlinearity="relu").numpy()
    assert np.abs(w).max() <= bound
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        nn.init.xavier_uniform_(ad.Tensor(np.zeros(3, np.float32)))
    with pytest.raises(ad.TraceError, match="generator"):
        nn.init.normal_(t, generator=torch.Generator())
    ad.manual_seed(3)
    a = nn.init.normal_(ad.Tensor(np.zeros(4, np.float32))).numpy()
    ad.manual_seed(3)
    np.testing.assert_array_equal(nn.init.normal_(ad.Tensor(np.zeros(4, np.float32))).numpy(), a)


def test_layer_default_init_matches_torch_distributions():
    torch.manual_seed(0)
    pairs = [(lambda: nn.Linear(300, 200), lambda: torch.nn.Linear(300, 200)),
             (lambda: nn.Conv2d(16, 32, 3), lambda: torch.nn.Conv2d(16, 32, 3)),
             (lambda: nn.Embedding(100, 64), lambda: torch.nn.Embedding(100, 64)),
             (lambda: nn.LayerNorm(8), lambda: torch.nn.LayerNorm(8)),
             (lambda: nn.BatchNorm2d(8), lambda: torch.nn.BatchNorm2d(8)),
             (lambda: nn.GroupNorm(2, 8), lambda: torch.nn.GroupNorm(2, 8))]
    for make_ours, make_theirs in pairs:
        ours, theirs = make_ours().state_dict(), make_theirs().state_dict()
        assert list(ours) == list(theirs)
        for key, value in theirs.items():
            value = value.numpy()
            assert ours[key].shape == value.shape and ours[key].dtype.kind == value.dtype.kind, key
            if value.std() > 0:
                assert abs(ours[key].std() - value.std()) < 0.1 * value.std(), key
                assert np.abs(ours[key]).max() <= np.abs(value).max() * 1.2, key
            else:
                np.testing.assert_array_equal(ours[key], value, err_msg=key)


def test_init_value_reaches_the_device(device):
    lin = nn.Linear(3, 2)
    nn.init.constant_(lin.weight, 0.5)
    nn.init.zeros_(lin.bias)
    got: list[np.ndarray] = []
    ad.Receiver(lambda a: got.append(a), [lin(ad.Tensor(np.ones((1, 3), np.float32)))])
    ad.execute(device=device)
    np.testing.assert_allclose(got[0], [[1.5, 1.5]])


def test_tied_weights_state_dict_like_torch():
    """A shared parameter is one parameter but appears under each name in state_dict (torch)."""
    ours = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    ours[1].weight = ours[0].weight
    theirs = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    theirs[1].weight = theirs[0].weight
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    ours.load_state_dict(theirs.state_dict())
    np.testing.assert_array_equal(ours[1].weight.numpy(), theirs[0].weight.detach().numpy())
