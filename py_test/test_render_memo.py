"""Megakernel stages and single kernels rendered once per kernel structure (codegen/program.py
`memoized_stages`, `memoized_singles`) give exactly the source, offset tables, constants and
parameters of rendering every kernel."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import autodiff as ad
from autodiff import nn
from autodiff.codegen.program import FEATURES, render_program
from autodiff.codegen.renderer import OpenCLLanguage
from autodiff.compiler import STAGES, Compilation
from autodiff.backends.registry import backend
from autodiff.proc.structure import structure

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from reference_model import trace_reference_step  # noqa: E402


def _trace_layers(layers: int) -> None:
    """Equal layers with what makes stages differ: an embedding (run-time indices), dropout
    (the loop counter in its random bits), layer norm, and the loop index in a value."""
    rng = np.random.default_rng(0)
    embed = nn.Embedding(11, 16)
    blocks = [nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Dropout(0.25), nn.LayerNorm(16)) for _ in range(layers)]
    params = embed.parameters() + [p for b in blocks for p in b.parameters()]
    opt = nn.SGD(params, lr=0.05)
    tokens = rng.integers(0, 11, size=(6,)).astype(np.int32)

    def step(i):
        x = embed(ad.Feeder(lambda: tokens, shape=(6,), dtype=np.int32, name="tokens"))
        for block in blocks:
            x = block(x) + x * (i.float() * 0.01 + 1.0)
        loss = (x * x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ad.Receiver(lambda v: None, [loss], name="loss")
    ad.ir_for(3, step)


def _render(layers: int, memo: str, monkeypatch, features: frozenset[str] = frozenset(FEATURES),
            trace: Callable[[int], None] = _trace_layers) -> list:
    monkeypatch.setenv("AUTODIFF_RENDER_MEMO", memo)
    ad.reset()
    ad.manual_seed(0)
    trace(layers)
    c = Compilation(ad.current_program(), backend("numpy-proc"), frozenset(), None, False)
    for stage in STAGES:
        if stage.name != "device build":
            stage.run(c)
    kinds = {b.id: b.kind for b in c.proc.buffers}
    program = render_program(c.proc, OpenCLLanguage(8), features,
                             lambda b: "arena" if kinds[b] == "temp" else "state")
    assert program.megakernels or "megakernel" not in features, "no megakernel: nothing memoized to compare"
    return [(r.name, r.body, r.table, r.constants, r.sizes(),
             [(p.kind, p.buffer_id, p.var, p.extra, p.value) for p in r.params]) for r in program.rendered]


@pytest.mark.parametrize("layers", [1, 3])
def test_memoized_stages_render_exactly_what_rendering_each_does(layers, monkeypatch):
    assert _render(layers, "1", monkeypatch) == _render(layers, "0", monkeypatch)


def test_memoized_single_kernels_render_exactly_what_rendering_each_does(monkeypatch):
    """Without megakernels every kernel is rendered alone: tiled products, vector and transposing
    copies, reductions; three equal layers repeat most of them."""
    features = frozenset(FEATURES) - {"megakernel", "iterations_per_launch"}
    memoized = _render(3, "1", monkeypatch, features)
    assert len({body for _, body, *_ in memoized}) < len(memoized)   # the layers' kernels repeat
    assert memoized == _render(3, "0", monkeypatch, features)


def _trace_transformer(layers: int) -> None:
    trace_reference_step(layers=layers, steps=2, d_model=32, heads=4, ff=64, seq=16, batch=2)


def test_memoized_tiled_products_render_exactly_what_rendering_each_does(monkeypatch):
    """A small transformer's kernels alone: its products are tiled (their epilogues read
    other buffers and the loop's variables), its attention packs transpose."""
    features = frozenset(FEATURES) - {"megakernel", "iterations_per_launch"}
    memoized = _render(2, "1", monkeypatch, features, _trace_transformer)
    assert sum("acc_0_0" in body for _, body, *_ in memoized) >= 8      # tiled products
    assert memoized == _render(2, "0", monkeypatch, features, _trace_transformer)


def test_equal_layers_have_equal_structures_and_different_ones_do_not():
    ad.reset()
    _trace_layers(3)
    c = Compilation(ad.current_program(), backend("numpy-proc"), frozenset(), None, False)
    for stage in STAGES:
        if stage.name != "device build":
            stage.run(c)
    buffers = {b.id: b for b in c.proc.buffers}
    kernels = c.proc.kernels()
    keys = [structure(k, buffers).key for k in kernels]
    assert len(set(keys)) < len(keys)            # the layers repeat
    for kernel, key in zip(kernels, keys):        # a different shape is a different structure
        twin = [k for k, other in zip(kernels, keys) if other == key]
        assert all(k.out.shape == kernel.out.shape and k.out.dtype == kernel.out.dtype for k in twin)


def test_a_memoized_program_trains_as_on_the_numpy_device(device):
    results = []
    for dev in ("numpy", device):
        ad.reset()
        ad.manual_seed(0)
        _trace_layers(3)
        ad.execute(device=dev)
        results.append([np.array(v.value) for v in ad.current_program().variables])
    for got, want in zip(results[1], results[0]):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("disable", [{"megakernel"}, {"megakernel", "tiled_transpose", "vectorize"}],
                         ids=["blocks", "plain"])
def test_equal_windows_of_a_buffer_build_once(device, disable, rng):
    """The q, k and v thirds of one projection, each copied transposed: three kernels that read
    the same window at three places render to one function (the window's start goes into the
    offset argument), and each copies its own third."""
    if device not in ("opencl", "cuda"):
        pytest.skip("rendered kernels only")
    data = rng.standard_normal((64, 3 * 128)).astype(np.float32)
    qkv = ad.Tensor(data, requires_grad=False)
    outs = [ad.Tensor(np.zeros((128, 64), np.float32), requires_grad=False) for _ in range(3)]
    for n, out in enumerate(outs):
        out.copy_(qkv[:, n * 128:(n + 1) * 128].T * 2.0)
    compiled = ad.compile(device=device, disable=disable)
    compiled.run()
    for n, out in enumerate(outs):
        np.testing.assert_array_equal(out.numpy(), data[:, n * 128:(n + 1) * 128].T * 2.0)
    rendered = compiled.executor.rendered
    assert len(rendered) == 3 and len({r.body for r in rendered}) == 1, [r.source for r in rendered]
    extras = sorted(p.extra for r in rendered for p in r.params if p.kind == "offset" and p.extra)
    assert extras == [128, 256], extras
