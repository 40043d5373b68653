"""Every nn module against the PyTorch module loaded with the same state_dict."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch

import autodiff as ad
from autodiff import nn


def _compare(ours: nn.Module, theirs: torch.nn.Module, inputs: list[np.ndarray], device: str,
             run_ours: Callable | None = None, run_theirs: Callable | None = None,
             rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Forward output and every parameter gradient (and float input gradients) agree."""
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    theirs.zero_grad(set_to_none=True)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    run_ours = run_ours or (lambda m, *xs: m(*xs))
    run_theirs = run_theirs or (lambda m, *xs: m(*xs))

    t_inputs = [torch.tensor(x, requires_grad=x.dtype == np.float32) for x in inputs]
    t_out = run_theirs(theirs, *[t if t.dtype != torch.int32 else t.long() for t in t_inputs])
    weights = np.random.default_rng(5).standard_normal(tuple(t_out.shape)).astype(np.float32)
    (t_out * torch.from_numpy(weights)).sum().backward()

    a_inputs = [ad.Tensor(x, name=f"in{i}") for i, x in enumerate(inputs)]
    a_out = run_ours(ours, *a_inputs)
    (a_out * ad.Tensor(weights, requires_grad=False)).sum().backward()
    t_params = dict(theirs.named_parameters())
    reached = {n: p for n, p in ours.named_parameters() if p.grad is not None}
    assert list(reached) == [n for n, p in t_params.items() if p.grad is not None]
    names = list(reached)
    float_inputs = [t for t in a_inputs if t.dtype == "float32"]
    got: list[np.ndarray] = []
    ad.Receiver(lambda *arrays: got.extend(arrays),
                [a_out] + [p.grad for p in reached.values()] + [t.grad for t in float_inputs])
    ad.execute(device=device)

    np.testing.assert_allclose(got[0], t_out.detach().numpy(), rtol=rtol, atol=atol, err_msg="output")
    for name, grad in zip(names, got[1:1 + len(names)]):
        np.testing.assert_allclose(grad, t_params[name].grad.numpy(), rtol=10 * rtol, atol=10 * atol,
                                   err_msg=f"grad of {name}")
    t_float_inputs = [t for t in t_inputs if t.dtype == torch.float32]
    for i, (grad, t) in enumerate(zip(got[1 + len(names):], t_float_inputs)):
        np.testing.assert_allclose(grad, t.grad.numpy(), rtol=10 * rtol, atol=10 * atol, err_msg=f"input {i}")


def _x(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_linear_sequential(device):
    ours = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3), nn.SiLU())
    theirs = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3), torch.nn.SiLU())
    _compare(ours, theirs, [_x(4, 5)], device)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(device, approximate):
    _compare(nn.Sequential(nn.Linear(6, 6), nn.GELU(approximate)),
             torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.GELU(approximate)), [_x(3, 6)], device)


def test_layer_norm(device):
    ours, theirs = nn.LayerNorm(8), torch.nn.LayerNorm(8)
    ours.weight._var.value[:] = _x(8, seed=1)
    ours.bias._var.value[:] = _x(8, seed=2)
    _compare(ours, theirs, [_x(2, 3, 8)], device)


def test_rms_norm(device):
    ours, theirs = nn.RMSNorm(8, eps=1e-6), torch.nn.RMSNorm(8, eps=1e-6)
    ours.weight._var.value[:] = _x(8, seed=1)
    _compare(ours, theirs, [_x(2, 3, 8)], device)


def test_embedding_with_repeated_indices(device):
    ours, theirs = nn.Embedding(10, 4), torch.nn.Embedding(10, 4)
    indices = np.array([[1, 3, 3], [0, 1, 9]], np.int32)
    _compare(ours, theirs, [indices], device)


def test_softmax_module(device):
    _compare(nn.Sequential(nn.Linear(4, 5), nn.Softmax(-1)),
             torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Softmax(-1)), [_x(3, 4)], device)


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention(device, batch_first):
    ours = nn.MultiheadAttention(8, 2, batch_first=batch_first)
    theirs = torch.nn.MultiheadAttention(8, 2, batch_first=batch_first)
    _compare(ours, theirs, [_x(2, 5, 8)], device,
             run_ours=lambda m, x: m(x, x, x)[0], run_theirs=lambda m, x: m(x, x, x)[0])


def test_multihead_attention_causal_mask_and_weights(device):
    ours, theirs = nn.MultiheadAttention(8, 4, batch_first=True), torch.nn.MultiheadAttention(8, 4, batch_first=True)
    mask = np.triu(np.ones((5, 5), bool), 1)
    _compare(ours, theirs, [_x(2, 5, 8), _x(2, 5, 8, seed=3)], device,
             run_ours=lambda m, q, kv: m(q, kv, kv, attn_mask=nn.causal_mask(5))[0],
             run_theirs=lambda m, q, kv: m(q, kv, kv, attn_mask=torch.from_numpy(mask))[0])
    ad.reset()
    _compare(ours.__class__(8, 4, batch_first=True), theirs, [_x(2, 5, 8)], device,
             run_ours=lambda m, x: m(x, x, x, attn_mask=mask)[1],
             run_theirs=lambda m, x: m(x, x, x, attn_mask=torch.from_numpy(mask))[1])


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_two_layers(device, norm_first):
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=norm_first)
    ours = nn.TransformerEncoder(layer, num_layers=2)
    t_layer = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=norm_first)
    theirs = torch.nn.TransformerEncoder(t_layer, num_layers=2, enable_nested_tensor=False)
    _compare(ours, theirs, [_x(2, 6, 16)], device, rtol=2e-4)


def test_transformer_encoder_shorthand_and_unbatched(device):
    ours = nn.TransformerEncoder(num_layers=2, d_model=16, num_heads=4, ff_dim=32)
    t_layer = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    theirs = torch.nn.TransformerEncoder(t_layer, num_layers=2, enable_nested_tensor=False)
    _compare(ours, theirs, [_x(3, 16)], device, rtol=2e-4)


def test_transformer_encoder_causal(device):
    ours = nn.TransformerEncoder(num_layers=1, d_model=8, num_heads=2, ff_dim=16)
    t_layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    theirs = torch.nn.TransformerEncoder(t_layer, num_layers=1, enable_nested_tensor=False)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(4)
    _compare(ours, theirs, [_x(2, 4, 8)], device, rtol=2e-4,
             run_ours=lambda m, x: m(x, is_causal=True),
             run_theirs=lambda m, x: m(x, mask=mask, is_causal=True))


@pytest.mark.parametrize("stride, padding, dilation, groups", [
    (1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (2, 1, 1, 2),
])
def test_conv2d(device, stride, padding, dilation, groups):
    ours = nn.Conv2d(4, 6, 3, stride=stride, padding=padding, dilation=dilation, groups=groups)
    theirs = torch.nn.Conv2d(4, 6, 3, stride=stride, padding=padding, dilation=dilation, groups=groups)
    _compare(ours, theirs, [_x(2, 4, 9, 8)], device)


def test_conv_net_with_pools(device):
    ours = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 2, 2),
                         nn.AvgPool2d(2, stride=1), nn.Flatten(), nn.Linear(2 * 2 * 2, 3))
    theirs = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                 torch.nn.Conv2d(3, 2, 2), torch.nn.AvgPool2d(2, stride=1),
                                 torch.nn.Flatten(), torch.nn.Linear(8, 3))
    _compare(ours, theirs, [_x(2, 1, 8, 8)], device)


def test_max_pool_with_padding(device):
    _compare(nn.Sequential(nn.Conv2d(2, 2, 1), nn.MaxPool2d(3, stride=2, padding=1)),
             torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.nn.MaxPool2d(3, stride=2, padding=1)),
             [_x(1, 2, 7, 7)], device)


def test_dropout_statistics_and_eval(device):
    x = ad.Tensor(np.ones((100, 100), np.float32))
    drop = nn.Dropout(0.25)
    got = []
    ad.Receiver(lambda a: got.append(a), [drop(x)])
    drop.eval()
    ad.Receiver(lambda a: got.append(a), [drop(x)])
    ad.execute(device=device)
    kept = got[0] != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(got[0][kept], 1 / 0.75, rtol=1e-6)
    np.testing.assert_array_equal(got[1], 1.0)
