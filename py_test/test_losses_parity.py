"""Every loss against torch.nn.functional: values and input gradients, every reduction.

Several losses run in one traced program (one OpenCL build per test): each case has its
own inputs, and the sum of the randomly weighted outputs is differentiated once.
"""
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

Case = tuple[str, list[np.ndarray], Callable, Callable]


def _x(*shape: int, seed: int = 0, low: float | None = None, high: float | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if low is not None:
        return rng.uniform(low, high, shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def _t(values, dtype=np.int32) -> np.ndarray:
    return np.asarray(values, dtype)


def _run(cases: list[Case], device: str, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Values and float-input gradients of every case agree with torch's."""
    outputs, grads = [], []
    for i, (name, inputs, ours, theirs) in enumerate(cases):
        # float64 inputs are constants (weights): float32 without a gradient
        t_in = [torch.tensor(x, dtype=torch.float32 if x.dtype == np.float64 else None,
                             requires_grad=x.dtype == np.float32) for x in inputs]
        t_out = theirs(*[t.long() if t.dtype == torch.int32 else t for t in t_in])
        weights = _x(*t_out.shape, seed=100 + i)
        (t_out * torch.from_numpy(weights)).sum().backward()
        a_in = [ad.Tensor(x.astype(np.float32) if x.dtype == np.float64 else x, name=f"{name}_{j}",
                          requires_grad=x.dtype != np.float64) for j, x in enumerate(inputs)]
        a_out = ours(*a_in)
        assert a_out.shape == tuple(t_out.shape), name
        (a_out * ad.Tensor(weights, requires_grad=False)).sum().backward()
        outputs.append((name, a_out, t_out.detach().numpy()))
        grads += [(f"{name} grad {j}", a.grad, t.grad.numpy())
                  for j, (a, t) in enumerate(zip(a_in, t_in)) if t.requires_grad]
    got: list[np.ndarray] = []
    ad.Receiver(lambda *arrays: got.extend(arrays), [o for _, o, _ in outputs] + [g for _, g, _ in grads])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # 0 / 0 in the all-ignored cases
        ad.execute(device=device)
    for (name, _, expected), value in zip(outputs + grads, got):
        np.testing.assert_allclose(value, expected, rtol=rtol, atol=atol, err_msg=name)


def test_cross_entropy_options(device):
    weight = _x(5, seed=9, low=0.2, high=2.0)
    targets = _t([1, -100, 4, 0, 2, 2, -100])
    w = lambda: ad.Tensor(weight, requires_grad=False)
    tw = torch.from_numpy(weight)
    cases: list[Case] = [
        ("plain", [_x(4, 5), _t([0, 4, 2, 2])], F.cross_entropy, TF.cross_entropy),
        ("ignored_weighted_mean", [_x(7, 5, seed=1), targets],
         lambda x, t: F.cross_entropy(x, t, weight=w()), lambda x, t: TF.cross_entropy(x, t, weight=tw)),
        ("ignored_weighted_smooth", [_x(7, 5, seed=2), targets],
         lambda x, t: F.cross_entropy(x, t, weight=w(), label_smoothing=0.2),
         lambda x, t: TF.cross_entropy(x, t, weight=tw, label_smoothing=0.2)),
        ("ignored_smooth_none", [_x(7, 5, seed=3), targets],
         lambda x, t: F.cross_entropy(x, t, reduction="none", label_smoothing=0.3),
         lambda x, t: TF.cross_entropy(x, t, reduction="none", label_smoothing=0.3)),
        ("custom_ignore_sum", [_x(7, 5, seed=4), _t([1, 3, 4, 0, 2, 2, 3])],
         lambda x, t: F.cross_entropy(x, t, ignore_index=2, reduction="sum", weight=w()),
         lambda x, t: TF.cross_entropy(x, t, ignore_index=2, reduction="sum", weight=tw)),
        ("spatial", [_x(2, 5, 3, 1, seed=5), _t([[[1], [-100], [4]], [[0], [3], [3]]])],
         lambda x, t: F.cross_entropy(x, t, weight=w(), label_smoothing=0.1),
         lambda x, t: TF.cross_entropy(x, t, weight=tw, label_smoothing=0.1)),
        ("spatial_none", [_x(2, 5, 3, seed=6), _t([[1, 0, 4], [0, 3, 3]])],
         lambda x, t: F.cross_entropy(x, t, reduction="none"),
         lambda x, t: TF.cross_entropy(x, t, reduction="none")),
        ("probs_weighted_smooth", [_x(3, 5, seed=7), _x(3, 5, seed=8, low=0.0, high=1.0)],
         lambda x, p: F.cross_entropy(x, p, weight=w(), label_smoothing=0.2),
         lambda x, p: TF.cross_entropy(x, p, weight=tw, label_smoothing=0.2)),
        ("probs_spatial", [_x(2, 5, 3, seed=10), _x(2, 5, 3, seed=11, low=0.0, high=1.0)],
         lambda x, p: F.cross_entropy(x, p), lambda x, p: TF.cross_entropy(x, p)),
        ("one_row_one_class", [_x(1, 1, seed=12), _t([0])], F.cross_entropy, TF.cross_entropy),
        ("unbatched", [_x(5, seed=13), _t(3)],
         lambda x, t: F.cross_entropy(x, t, weight=w(), label_smoothing=0.1),
         lambda x, t: TF.cross_entropy(x, t, weight=tw, label_smoothing=0.1)),
        ("module", [_x(7, 5, seed=14), targets],
         nn.CrossEntropyLoss(weight=weight, label_smoothing=0.05),
         torch.nn.CrossEntropyLoss(weight=tw, label_smoothing=0.05)),
    ]
    _run(cases, device)


def test_nll_loss_options(device):
    weight = _x(4, seed=9, low=0.2, high=2.0)
    tw = torch.from_numpy(weight)
    w = lambda: ad.Tensor(weight, requires_grad=False)
    cases: list[Case] = [
        ("weighted_ignored", [_x(5, 4), _t([3, -100, 0, 1, 1])],
         lambda x, t: F.nll_loss(x, t, weight=w()), lambda x, t: TF.nll_loss(x, t, weight=tw)),
        ("none", [_x(5, 4, seed=1), _t([3, -100, 0, 1, 1])],
         lambda x, t: F.nll_loss(x, t, reduction="none"), lambda x, t: TF.nll_loss(x, t, reduction="none")),
        ("spatial_sum", [_x(2, 4, 3, seed=2), _t([[0, 1, 2], [3, 3, -100]])],
         lambda x, t: F.nll_loss(x, t, reduction="sum", weight=w()),
         lambda x, t: TF.nll_loss(x, t, reduction="sum", weight=tw)),
        ("module", [_x(5, 4, seed=3), _t([3, 2, 0, 1, 1])], nn.NLLLoss(ignore_index=1), torch.nn.NLLLoss(ignore_index=1)),
    ]
    _run(cases, device)


def test_all_ignored_batches_give_nan_means(device):
    """torch divides by the weight of no targets: nan for 'mean', 0 for 'sum' (an empty batch too)."""
    ignored = _t([-100, -100, -100])
    cases: list[Case] = [
        ("ce_mean", [_x(3, 4), ignored], F.cross_entropy, TF.cross_entropy),
        ("ce_mean_smooth", [_x(3, 4, seed=1), ignored], lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1),
         lambda x, t: TF.cross_entropy(x, t, label_smoothing=0.1)),
        ("ce_sum", [_x(3, 4, seed=2), ignored], lambda x, t: F.cross_entropy(x, t, reduction="sum"),
         lambda x, t: TF.cross_entropy(x, t, reduction="sum")),
        ("nll_mean", [_x(3, 4, seed=3), ignored], F.nll_loss, TF.nll_loss),
        ("empty_batch_mean", [_x(0, 4, seed=4), _t(np.zeros(0))], F.cross_entropy, TF.cross_entropy),
        ("empty_batch_sum", [_x(0, 4, seed=5), _t(np.zeros(0))], lambda x, t: F.cross_entropy(x, t, reduction="sum"),
         lambda x, t: TF.cross_entropy(x, t, reduction="sum")),
    ]
    _run(cases, device)


def test_binary_and_regression_losses(device):
    bce_weight = _x(3, seed=2, low=0, high=2)   # torch's binary_cross_entropy has no weight gradient
    cases: list[Case] = [
        ("bce_weighted", [_x(4, 3, low=0.02, high=0.98), _x(4, 3, seed=1, low=0, high=1)],
         lambda x, t: F.binary_cross_entropy(x, t, weight=ad.Tensor(bce_weight, requires_grad=False)),
         lambda x, t: TF.binary_cross_entropy(x, t, weight=torch.from_numpy(bce_weight))),
        ("bce_none", [_x(5, seed=3, low=0.02, high=0.98), _x(5, seed=4, low=0, high=1)],
         lambda x, t: F.binary_cross_entropy(x, t, reduction="none"),
         lambda x, t: TF.binary_cross_entropy(x, t, reduction="none")),
        ("bce_logits_pos_weight", [_x(4, 3, seed=5) * 8, _x(4, 3, seed=6, low=0, high=1), _x(3, seed=7, low=0.5, high=3).astype(np.float64)],
         lambda x, t, p: F.binary_cross_entropy_with_logits(x, t, pos_weight=p),
         lambda x, t, p: TF.binary_cross_entropy_with_logits(x, t, pos_weight=p)),
        ("bce_logits_weight_sum", [_x(2, 3, seed=8) * 30, _x(2, 3, seed=9, low=0, high=1), _x(2, 1, seed=10, low=0, high=2).astype(np.float64)],
         lambda x, t, w: F.binary_cross_entropy_with_logits(x, t, weight=w, reduction="sum"),
         lambda x, t, w: TF.binary_cross_entropy_with_logits(x, t, weight=w, reduction="sum")),
        ("l1_sum", [_x(3, 4, seed=11), _x(3, 4, seed=12)], lambda x, t: F.l1_loss(x, t, reduction="sum"),
         lambda x, t: TF.l1_loss(x, t, reduction="sum")),
        ("smooth_l1", [_x(3, 4, seed=13) * 2, _x(3, 4, seed=14)], lambda x, t: F.smooth_l1_loss(x, t, beta=0.5),
         lambda x, t: TF.smooth_l1_loss(x, t, beta=0.5)),
        ("smooth_l1_beta0_none", [_x(3, 1, seed=15), _x(3, 1, seed=16)],
         lambda x, t: F.smooth_l1_loss(x, t, beta=0.0, reduction="none"),
         lambda x, t: TF.smooth_l1_loss(x, t, beta=0.0, reduction="none")),
        ("huber", [_x(5, 3, seed=17) * 3, _x(5, 3, seed=18)], lambda x, t: F.huber_loss(x, t, delta=2.0),
         lambda x, t: TF.huber_loss(x, t, delta=2.0)),
        ("mse_module", [_x(2, 3, seed=19), _x(2, 3, seed=20)], nn.MSELoss(reduction="sum"), torch.nn.MSELoss(reduction="sum")),
        ("bce_module", [_x(4, seed=21, low=0.1, high=0.9), _x(4, seed=22, low=0, high=1)], nn.BCELoss(), torch.nn.BCELoss()),
        ("bce_logits_module", [_x(4, seed=23), _x(4, seed=24, low=0, high=1)],
         nn.BCEWithLogitsLoss(pos_weight=np.full(4, 2.0, np.float32)),
         torch.nn.BCEWithLogitsLoss(pos_weight=torch.full((4,), 2.0))),
        ("l1_module", [_x(4, seed=25), _x(4, seed=26)], nn.L1Loss(), torch.nn.L1Loss()),
        ("smooth_l1_module", [_x(4, seed=27), _x(4, seed=28)], nn.SmoothL1Loss(beta=0.3), torch.nn.SmoothL1Loss(beta=0.3)),
        ("huber_module", [_x(4, seed=29), _x(4, seed=30)], nn.HuberLoss(reduction="none", delta=0.5),
         torch.nn.HuberLoss(reduction="none", delta=0.5)),
    ]
    _run(cases, device)


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
def test_kl_div_reductions(device):
    logp = lambda seed: np.log(_x(3, 4, seed=seed, low=0.05, high=1.0))
    target = _x(3, 4, seed=1, low=0, high=1)
    target[0, 1] = 0.0   # xlogy: a zero target contributes 0 (torch's target gradient there is nan)
    target = target.astype(np.float64)
    cases: list[Case] = [(f"kl_{reduction}", [logp(2 + i), target],
                          lambda x, t, r=reduction: F.kl_div(x, t, reduction=r),
                          lambda x, t, r=reduction: TF.kl_div(x, t, reduction=r))
                         for i, reduction in enumerate(["none", "mean", "sum", "batchmean"])]
    cases += [
        ("kl_log_target", [logp(7), logp(8)], lambda x, t: F.kl_div(x, t, reduction="batchmean", log_target=True),
         lambda x, t: TF.kl_div(x, t, reduction="batchmean", log_target=True)),
        ("kl_module", [logp(9), _x(3, 4, seed=10, low=0.05, high=1)], nn.KLDivLoss(reduction="batchmean"),
         torch.nn.KLDivLoss(reduction="batchmean")),
    ]
    _run(cases, device)


def test_losses_reject_bad_arguments():
    x = ad.Tensor(_x(3, 4))
    t = ad.Tensor(_t([0, 1, 2]))
    with pytest.raises(ad.TraceError, match="reduction"):
        F.cross_entropy(x, t, reduction="average")
    with pytest.raises(ad.TraceError, match="batchmean"):
        F.kl_div(x, x, reduction="bogus")
    with pytest.raises(ad.TraceError, match="size_average"):
        F.nll_loss(x, t, size_average=True)
    with pytest.raises(ad.TraceError, match="weight"):
        F.cross_entropy(x, t, weight=ad.Tensor(_x(3)))
    with pytest.raises(ad.TraceError, match="shape"):
        F.cross_entropy(x, ad.Tensor(_t([0, 1])))
    with pytest.raises(ad.TraceError, match="weight"):
        F.huber_loss(x, x, weight=x)
