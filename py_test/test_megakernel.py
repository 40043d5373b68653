"""Megakernels: where runs of small kernels are cut, and that equal layers share one function."""
from __future__ import annotations

import numpy as np
import pytest

import autodiff as ad
from autodiff import nn
from autodiff.schedule.megakernel import cut_run, repeats
from autodiff.backends.opencl import opencl_available


def pieces(s: str, lengths: list[int]) -> list[str]:
    out, at = [], 0
    for n in lengths:
        out.append(s[at:at + n])
        at += n
    return out


def test_repeats_finds_the_unit_not_a_multiple_of_it():
    s = "xy" + "abcde" * 4
    period = repeats(s, max_period=12)
    assert period[2] == 5          # 'abcdeabcde' repeats too, but its unit is 'abcde'
    assert period[0] == 0
    assert repeats("abab" + "c", 8)[0] == 2


def test_cut_covers_the_run_and_respects_the_piece_limit():
    s = "pq" + "ABCDEFGHIJKLM" * 5 + "xyz"
    lengths = cut_run(s, {}, max_stages=4, max_period=32)
    assert sum(lengths) == len(s)
    assert max(lengths) <= 4


def test_every_copy_of_a_repeating_unit_is_cut_the_same_way():
    unit = "ABCDEFGHIJKLMNOPQRSTU"              # longer than a piece: cut into equal parts
    s = "pq" + unit * 6 + "xyz"
    cut = pieces(s, cut_run(s, {}, max_stages=8, max_period=64))
    first = cut[1:4]
    assert "".join(first) == unit
    assert cut[1:19] == first * 6


def test_copies_of_a_short_unit_share_one_piece():
    assert cut_run("a" * 32, {}, max_stages=48) == [32]          # 32 equal updates: one launch
    cut = pieces("x" + "ab" * 30, cut_run("x" + "ab" * 30, {}, max_stages=8, max_period=16))
    assert cut[0] == "x" and cut[1:8] == ["abababab"] * 7 and cut[8] == "abab"


def test_pieces_of_earlier_runs_are_reused():
    known: dict = {}
    a = pieces("abcdefgh", cut_run("abcdefgh", known, max_stages=4))
    b = pieces("xxabcdefgh", cut_run("xxabcdefgh", known, max_stages=4))
    assert a == ["abcd", "efgh"]
    assert b[-2:] == a


def _train_layers(device: str, layers: int, disable: set[str] = frozenset()) -> dict[str, np.ndarray]:
    ad.reset()
    ad.manual_seed(0)
    model = nn.TransformerEncoder(num_layers=layers, d_model=16, num_heads=2, ff_dim=32)
    opt = nn.SGD(model.parameters(), lr=0.05)
    data = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)

    def step():
        x = ad.Feeder(lambda: data, (4, 16), name="x")
        loss = (model(x) * ad.Tensor(data)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()

    ad.ir_for(5, step)
    compiled = ad.compile(device=device, disable=set(disable))
    compiled.run()
    return compiled, {k: np.array(v) for k, v in model.state_dict().items()}


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
def test_equal_layers_share_megakernels_and_agree_with_numpy():
    compiled, got = _train_layers("opencl", layers=4)
    deeper, _ = _train_layers("opencl", layers=7)
    functions = [launch.kernel.function_name for launch in compiled.executor.mega_launches]
    more = [launch.kernel.function_name for launch in deeper.executor.mega_launches]
    assert len(more) > len(functions)
    assert len(set(more)) == len(set(functions))        # three more layers, no new function
    _, want = _train_layers("numpy-proc", layers=4)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)
    _, alone = _train_layers("opencl", layers=4, disable={"megakernel"})
    for name in want:
        np.testing.assert_allclose(alone[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)
