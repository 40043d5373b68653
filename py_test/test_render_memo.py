"""Megakernel stages rendered once per kernel structure (codegen/program.py `memoized_stages`)
give exactly the source, offset tables and constants of rendering every stage."""
from __future__ import annotations

import numpy as np
import pytest

import autodiff as ad
from autodiff import nn
from autodiff.codegen.program import FEATURES, render_program
from autodiff.codegen.renderer import OpenCLLanguage
from autodiff.compiler import STAGES, Compilation
from autodiff.backends.registry import backend
from autodiff.proc.structure import structure


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


def _render(layers: int, memo: str, monkeypatch) -> list:
    monkeypatch.setenv("AUTODIFF_RENDER_MEMO", memo)
    ad.reset()
    ad.manual_seed(0)
    _trace_layers(layers)
    c = Compilation(ad.current_program(), backend("numpy-proc"), frozenset(), None, False)
    for stage in STAGES:
        if stage.name != "device build":
            stage.run(c)
    kinds = {b.id: b.kind for b in c.proc.buffers}
    program = render_program(c.proc, OpenCLLanguage(8), frozenset(FEATURES),
                             lambda b: "arena" if kinds[b] == "temp" else "state")
    assert program.megakernels, "no megakernel: the test would compare nothing memoized"
    return [(r.name, r.body, r.table, r.constants, [(p.kind, p.buffer_id, p.value) for p in r.params])
            for r in program.rendered]


@pytest.mark.parametrize("layers", [1, 3])
def test_memoized_stages_render_exactly_what_rendering_each_does(layers, monkeypatch):
    assert _render(layers, "1", monkeypatch) == _render(layers, "0", monkeypatch)


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
