"""End to end: an MLP trained on scikit-learn's digits matches PyTorch step for step."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import autodiff as ad
from autodiff import nn
import autodiff.nn.functional as F

STEPS, BATCH = 50, 64


def _digits_batches(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    picks = np.concatenate([order] * 2)[: STEPS * BATCH].reshape(STEPS, BATCH)
    return x[picks], y[picks]


def _torch_losses(state: dict[str, np.ndarray], xs: np.ndarray, ys: np.ndarray) -> list[float]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    losses = []
    for step in range(STEPS):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(xs[step])),
                                                 torch.from_numpy(ys[step]).long())
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_mlp_on_digits_matches_torch(device):
    xs, ys = _digits_batches()
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    state = model.state_dict()
    opt = nn.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    step_of = {"x": 0, "y": 0}

    def next_x() -> np.ndarray:
        step_of["x"] += 1
        return xs[step_of["x"] - 1]

    def next_y() -> np.ndarray:
        step_of["y"] += 1
        return ys[step_of["y"] - 1]

    losses: list[float] = []

    def train_step():
        x = ad.Feeder(next_x, (BATCH, 64), name="x")
        y = ad.Feeder(next_y, (BATCH,), np.int32, name="y")
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ad.Receiver(lambda v: losses.append(float(v)), [loss], name="loss")

    ad.ir_for(STEPS, train_step)
    ad.execute(device=device)

    expected = _torch_losses(state, xs, ys)
    assert len(losses) == STEPS
    np.testing.assert_allclose(losses, expected, rtol=1e-4)
    assert losses[-1] < 0.5 * losses[0]


def test_state_dict_round_trip_with_torch_names():
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    names = list(model.state_dict())
    reference = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    assert names == list(reference.state_dict())
    model.load_state_dict(reference.state_dict())
    for name, value in reference.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[name], value.numpy())
    with pytest.raises(KeyError):
        model.load_state_dict({"0.weight": np.zeros((3, 4), np.float32)})
