"""Conv1d, ConvTranspose2d, adaptive and 1-d pooling, attention and the transformer decoder
against PyTorch: same state_dict, same outputs, same parameter and input gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import autodiff as ad
from autodiff import nn
from autodiff.errors import TraceError
from autodiff.nn import functional as F
from conftest import devices_slow_on
from test_modules import _compare, _x


def _functional(ours, theirs, inputs: list[np.ndarray], device: str, **tolerances) -> None:
    """Compare two parameterless functions (outputs and input gradients)."""
    _compare(nn.Module(), torch.nn.Module(), inputs, device, run_ours=lambda m, *xs: ours(*xs),
             run_theirs=lambda m, *xs: theirs(*xs), **tolerances)


def _flat(*outputs):
    """Several outputs as one vector, so one traced program checks them all."""
    if isinstance(outputs[0], torch.Tensor):
        return torch.cat([o.reshape(-1) for o in outputs])
    return ad.concat([o.reshape(-1) for o in outputs])


# --- convolutions and pooling ------------------------------------------------------------

@pytest.mark.parametrize("kwargs, length", [
    (dict(stride=1, padding=0, dilation=1, groups=1), 9),
    (dict(stride=2, padding=2, dilation=2, groups=2), 8),
    (dict(padding="same", dilation=2), 7),
])
def test_conv1d(device, kwargs, length):
    _compare(nn.Conv1d(4, 6, 3, **kwargs), torch.nn.Conv1d(4, 6, 3, **kwargs), [_x(2, 4, length)], device)


def test_conv1d_unbatched_kernel_one(device):
    _compare(nn.Conv1d(3, 2, 1, bias=False), torch.nn.Conv1d(3, 2, 1, bias=False), [_x(3, 1)], device)


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(stride=2, padding=1, output_padding=1),
    dict(stride=(3, 2), padding=(0, 2), dilation=(1, 2), output_padding=(2, 1)),
    dict(stride=2, padding=3, groups=2),   # padding past dilation*(k-1): the output is cropped
])
def test_conv_transpose2d(device, kwargs):
    _compare(nn.ConvTranspose2d(4, 6, 3, **kwargs), torch.nn.ConvTranspose2d(4, 6, 3, **kwargs),
             [_x(2, 4, 5, 4)], device)


def test_conv_transpose2d_output_size_unbatched_and_functional(device):
    """output_size picks output_padding; an unbatched image; and F.conv_transpose2d with a
    1x1 spatial input and a (2, 3) kernel, all in one program."""
    ours, theirs = nn.ConvTranspose2d(3, 2, (2, 3), stride=2), torch.nn.ConvTranspose2d(3, 2, (2, 3), stride=2)
    weight = _x(3, 5, 2, 3, seed=4)

    def run(module, x, tiny, w, conv):
        return _flat(module(x, output_size=[7, 10]), conv(tiny, w, stride=3, padding=(0, 1)))

    _compare(ours, theirs, [_x(3, 3, 4), _x(1, 3, 1, 1, seed=2), weight], device,
             run_ours=lambda m, *xs: run(m, *xs, F.conv_transpose2d),
             run_theirs=lambda m, *xs: run(m, *xs, torch.nn.functional.conv_transpose2d))


def test_conv_transpose2d_errors():
    x = ad.Tensor(_x(1, 2, 4, 4))
    with pytest.raises(TraceError, match="output_padding"):
        F.conv_transpose2d(x, ad.Tensor(_x(2, 2, 3, 3)), stride=2, output_padding=2)
    with pytest.raises(TraceError, match="output_size of"):
        nn.ConvTranspose2d(2, 2, 3, stride=2)(x, output_size=(20, 20))
    with pytest.raises(TraceError, match="padding_mode"):
        nn.ConvTranspose2d(2, 2, 3, padding_mode="reflect")


@pytest.mark.parametrize("size, output_size", [((7, 5), (3, 2)), ((6, 4), (3, None)), ((3, 2), 4), ((5, 1), 1)])
def test_adaptive_avg_pool2d(device, size, output_size):
    """Non-dividing cells overlap; an output larger than the input repeats elements."""
    _compare(nn.Sequential(nn.Conv2d(2, 3, 1), nn.AdaptiveAvgPool2d(output_size)),
             torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.AdaptiveAvgPool2d(output_size)),
             [_x(2, 2, *size)], device)


def test_adaptive_avg_pool2d_unbatched(device):
    _functional(lambda x: F.adaptive_avg_pool2d(x, (2, 3)),
                lambda x: torch.nn.functional.adaptive_avg_pool2d(x, (2, 3)), [_x(3, 5, 7)], device)


def test_adaptive_avg_pool2d_empty_shapes():
    """torch allows an empty output and no channels (its backward does not: values are moot)."""
    x = _x(3, 5, 7)
    for sizes, data in (((0, 3), x), (2, x[:0])):
        expected = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(data), sizes).shape
        assert F.adaptive_avg_pool2d(ad.Tensor(data), sizes).shape == tuple(expected)


def test_pool1d(device):
    def run(x, max_pool, avg_pool):
        return _flat(max_pool(x), avg_pool(x))

    ours = (nn.MaxPool1d(3, stride=2, padding=1, dilation=2), nn.AvgPool1d(2, padding=1))
    theirs = (torch.nn.MaxPool1d(3, stride=2, padding=1, dilation=2), torch.nn.AvgPool1d(2, padding=1))
    _functional(lambda x: run(x, *ours), lambda x: run(x, *theirs), [_x(2, 3, 9)], device)
    with pytest.raises(TraceError, match="ceil_mode"):
        nn.MaxPool1d(2, ceil_mode=True)(ad.Tensor(_x(1, 2, 4)))


# --- attention ---------------------------------------------------------------------------

def test_scaled_dot_product_attention(device):
    """A bool mask (True takes part) with one fully masked query (0, not nan), a float
    mask, is_causal over a longer source, a custom scale, and grouped-query heads."""
    bool_mask = np.ones((3, 5), bool)
    bool_mask[1] = False
    bool_mask[2, :2] = False
    float_mask = _x(2, 1, 3, 5, seed=9)

    def run(q, k, v, kv_few, mask, add, sdpa):
        return _flat(sdpa(q, k, v, attn_mask=mask), sdpa(q, k, v, attn_mask=add, scale=0.3),
                     sdpa(q, k, v, is_causal=True), sdpa(q, kv_few, kv_few, enable_gqa=True),
                     sdpa(q, k, v, attn_mask=mask, is_causal=True))

    _functional(lambda *xs: run(*xs, F.scaled_dot_product_attention),
                lambda *xs: run(*xs, torch.nn.functional.scaled_dot_product_attention),
                [_x(2, 4, 3, 6), _x(2, 4, 5, 6, seed=1), _x(2, 4, 5, 6, seed=2), _x(2, 2, 5, 6, seed=3),
                 bool_mask, float_mask], device)


@pytest.mark.parametrize("batch_first", [False, True])
def test_multihead_attention_padding_masks_and_weights(device, batch_first):
    """A bool key_padding_mask (True ignored) with a per-head (N*H, L, S) bool attn_mask and
    per-head weights, then float key_padding_mask and attn_mask, then no weights."""
    ours = nn.MultiheadAttention(8, 2, batch_first=batch_first)
    theirs = torch.nn.MultiheadAttention(8, 2, batch_first=batch_first)
    padding = np.array([[False, False, True, False, True], [True, False, False, False, False]])
    float_padding = np.where(padding, -1.5, 0.25).astype(np.float32)
    head_mask = np.random.default_rng(3).random((4, 3, 5)) < 0.3
    head_mask[:, :, 1] = False   # every query keeps a key
    shape = (2, 3, 8) if batch_first else (3, 2, 8)
    kv_shape = (2, 5, 8) if batch_first else (5, 2, 8)

    def run(m, q, kv, pad, float_pad, attn, heads):
        out1, w1 = m(q, kv, kv, key_padding_mask=pad, attn_mask=heads, average_attn_weights=False)
        out2, w2 = m(q, kv, kv, key_padding_mask=float_pad, attn_mask=attn)
        out3, none = m(q, kv, kv, key_padding_mask=pad, need_weights=False)
        assert none is None
        return _flat(out1, w1, out2, w2, out3)

    _compare(ours, theirs, [_x(*shape), _x(*kv_shape, seed=1), padding, float_padding, _x(3, 5, seed=2),
                            head_mask], device, run_ours=run, run_theirs=run)


def test_multihead_attention_kdim_vdim_unbatched(device):
    ours = nn.MultiheadAttention(6, 3, kdim=4, vdim=5, bias=False)
    theirs = torch.nn.MultiheadAttention(6, 3, kdim=4, vdim=5, bias=False)
    padding = np.array([False, True, False, False])

    def run(m, q, k, v, pad):
        out, weights = m(q, k, v, key_padding_mask=pad)
        return _flat(out, weights)

    _compare(ours, theirs, [_x(3, 6), _x(4, 4, seed=1), _x(4, 5, seed=2), padding], device,
             run_ours=run, run_theirs=run)


# --- transformer -------------------------------------------------------------------------

def test_pytorch_defaults():
    """The defaults that decide results are PyTorch's (batch_first=False, dropout 0.1)."""
    layer = nn.TransformerEncoderLayer(8, 2)
    assert not layer.self_attn.batch_first and layer.dropout.p == 0.1 and layer.linear1.out_features == 2048
    decoder_layer = nn.TransformerDecoderLayer(8, 2)
    assert not decoder_layer.multihead_attn.batch_first and decoder_layer.dropout3.p == 0.1
    model = nn.Transformer(16, 2, 1, 1, 32)
    assert not model.batch_first and model.encoder.norm is not None and model.decoder.norm is not None


@pytest.mark.parametrize("device", devices_slow_on("opencl"))
def test_transformer_encoder_sequence_first_with_padding(device):
    """PyTorch's default (S, N, E) layout, gelu, and a src_key_padding_mask."""
    ours = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0, activation="gelu"), 2)
    theirs = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0,
                                                                          activation="gelu"),
                                         2, enable_nested_tensor=False)
    padding = np.array([[False, False, False, True], [False, True, False, False], [False] * 4])
    _compare(ours, theirs, [_x(4, 3, 8), padding], device, rtol=2e-4,
             run_ours=lambda m, x, pad: m(x, src_key_padding_mask=pad),
             run_theirs=lambda m, x, pad: m(x, src_key_padding_mask=pad))


@pytest.mark.parametrize("device", devices_slow_on("opencl"))
@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_decoder(device, norm_first):
    """Decoder layers (two post-norm, one pre-norm: OpenCL builds cost) and a final norm,
    causal tgt mask, a float tgt and a bool memory padding mask, batch first."""
    layers = 1 if norm_first else 2
    layer = nn.TransformerDecoderLayer(8, 2, 12, dropout=0.0, batch_first=True, norm_first=norm_first)
    ours = nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(8))
    t_layer = torch.nn.TransformerDecoderLayer(8, 2, 12, dropout=0.0, batch_first=True, norm_first=norm_first)
    theirs = torch.nn.TransformerDecoder(t_layer, layers, norm=torch.nn.LayerNorm(8))
    tgt_padding = np.where([[False, False, True, False], [False] * 4], -np.inf, 0).astype(np.float32)
    memory_padding = np.array([[False, True, False], [False, False, True]])
    causal = torch.nn.Transformer.generate_square_subsequent_mask(4)

    def run(m, tgt, memory, tgt_pad, memory_pad, mask):
        return m(tgt, memory, tgt_mask=mask, tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=memory_pad,
                 tgt_is_causal=True)

    _compare(ours, theirs, [_x(2, 4, 8), _x(2, 3, 8, seed=1), tgt_padding, memory_padding], device, rtol=2e-4,
             run_ours=lambda m, *xs: run(m, *xs, nn.causal_mask(4)),
             run_theirs=lambda m, *xs: run(m, *xs, causal))


@pytest.mark.parametrize("device", devices_slow_on("opencl"))
@pytest.mark.filterwarnings("ignore:enable_nested_tensor")
def test_transformer(device):
    """nn.Transformer in its default (S, N, E) layout, in eval mode (dropout off), with a
    causal tgt_mask and a bool memory_mask."""
    ours, theirs = nn.Transformer(8, 2, 1, 1, 12).eval(), torch.nn.Transformer(8, 2, 1, 1, 12).eval()
    memory_mask = np.random.default_rng(4).random((4, 3)) < 0.3
    memory_mask[:, 0] = False

    def runner(generate):
        return lambda m, src, tgt, mask: m(src, tgt, memory_mask=mask, tgt_mask=generate(4))

    _compare(ours, theirs, [_x(3, 2, 8), _x(4, 2, 8, seed=1), memory_mask], device, rtol=3e-4,
             run_ours=runner(nn.Transformer.generate_square_subsequent_mask),
             run_theirs=runner(torch.nn.Transformer.generate_square_subsequent_mask))
