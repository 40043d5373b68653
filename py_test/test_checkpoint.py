"""Checkpoints: save -> load -> continue gives the losses of an uninterrupted run."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import autodiff as ad
from autodiff import checkpoint, nn
import autodiff.nn.functional as F
from autodiff.nn.data import DataLoader
from autodiff.nn.optim import SGD, Adam, AdamW

OPTIMIZERS: dict[str, Callable] = {
    "adam": lambda p: Adam(p, lr=1e-2, weight_decay=1e-3),
    "adamw": lambda p: AdamW(p, lr=1e-2),
    "sgd_momentum_decay": lambda p: SGD(p, lr=0.05, momentum=0.9, nesterov=True, gamma=0.8,
                                        decay_every=3, min_lr=0.01),
}


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 4)).astype(np.float32)
    return x, np.tanh(x @ rng.standard_normal((4, 2))).astype(np.float32)


def _train(make_opt: Callable, steps: int, init_seed: int, resume_from: Path | None = None,
           save_to: Path | None = None) -> tuple[list[float], dict[str, np.ndarray]]:
    """Train in a fresh program; optionally restore before and save after."""
    losses: list[float] = []
    with ad.Program() as program:
        ad.manual_seed(init_seed)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        opt = make_opt(model.parameters())
        loader = DataLoader(*_data(), batch_size=8, seed=1)   # 6 steps per epoch: resumes mid-epoch
        if resume_from is not None:
            checkpoint.restore(resume_from, model=model, optim=opt, data=loader)

        def train_step() -> None:
            x, y = loader.feeders()
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ad.Receiver(lambda v: losses.append(float(v)), [loss], name="loss")

        ad.ir_for(steps, train_step)
        program.execute()
        if save_to is not None:
            checkpoint.save(save_to, {"model": model, "optim": opt, "data": loader,
                                      "steps": np.array(steps, np.int32)})
    return losses, model.state_dict()


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_resume_gives_the_losses_of_an_uninterrupted_run(optimizer: str, tmp_path: Path) -> None:
    make_opt = OPTIMIZERS[optimizer]
    straight, final = _train(make_opt, 20, init_seed=0)
    path = tmp_path / "run.safetensors"
    first, _ = _train(make_opt, 10, init_seed=0, save_to=path)
    # the resumed program starts from other random weights: only the checkpoint can fix them
    second, resumed_final = _train(make_opt, 10, init_seed=99, resume_from=path)

    assert first == straight[:10]
    assert second == straight[10:]
    for name, value in final.items():
        np.testing.assert_array_equal(resumed_final[name], value, err_msg=name)


def test_saved_keys_dtypes_and_values(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    opt = Adam(model.parameters())
    opt.load_state_dict({**checkpoint.flatten(opt), "state.1.step": np.array(4, np.int32)})
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, {"model": model, "optim": opt, "epoch": np.array(2.5)})

    flat = checkpoint.load(path)
    assert sorted(flat) == ["epoch", "model.0.bias", "model.0.weight", "optim.state.0.exp_avg",
                            "optim.state.0.exp_avg_sq", "optim.state.0.step", "optim.state.1.exp_avg",
                            "optim.state.1.exp_avg_sq", "optim.state.1.step"]
    assert flat["epoch"].dtype == np.float32 and float(flat["epoch"]) == 2.5
    assert flat["optim.state.1.step"].dtype == np.int32 and int(flat["optim.state.1.step"]) == 4
    np.testing.assert_array_equal(flat["model.0.weight"], model.state_dict()["0.weight"])


def test_single_object_and_tensor_round_trip(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, model)
    assert sorted(checkpoint.load(path)) == ["bias", "weight"]
    saved = model.state_dict()
    model.load_state_dict({k: np.zeros_like(v) for k, v in saved.items()})
    checkpoint.restore(path, model)
    for name, value in saved.items():
        np.testing.assert_array_equal(model.state_dict()[name], value)

    scale = ad.Tensor(np.float32(3.0), name="scale", requires_grad=False)
    checkpoint.save(path, {"scale": scale})
    scale.assign(0.0)
    ad.execute()
    assert scale.item() == 0.0
    checkpoint.restore(path, scale=scale)
    assert scale.item() == 3.0


def test_restore_errors(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, {"model": model})
    with pytest.raises(KeyError, match="nothing saved under 'optim'"):
        checkpoint.restore(path, optim=Adam(model.parameters()))
    with pytest.raises(KeyError):
        checkpoint.restore(path, nn.Linear(3, 2))   # saved under a name: keys are 'model.*'
    with pytest.raises(TypeError):
        checkpoint.restore(path)
    with pytest.raises(TypeError, match="needs a name"):
        checkpoint.save(path, np.zeros(3))
    with pytest.raises(Exception, match="shape"):
        checkpoint.restore(path, model=nn.Linear(4, 2))


def test_to_torch_round_trip_through_torch_linear() -> None:
    torch = pytest.importorskip("torch")
    model = nn.Linear(3, 2)
    state = checkpoint.to_torch(model.state_dict())
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    linear = torch.nn.Linear(3, 2)
    linear.load_state_dict(state)                 # torch accepts it as is
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    expected = x @ model.state_dict()["weight"].T + model.state_dict()["bias"]
    np.testing.assert_allclose(linear(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-6)

    back = nn.Linear(3, 2)
    back.load_state_dict(linear.state_dict())     # and back: torch tensors are accepted
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[name], value, err_msg=name)
        np.testing.assert_array_equal(checkpoint.to_torch(model)[name].numpy(), value, err_msg=name)
