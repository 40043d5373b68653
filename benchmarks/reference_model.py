"""The reference workload: L post-norm transformer encoder layers trained with SGD.

d_model 64, 4 heads, ff 128, ReLU, no dropout; input (2, 64) filled with 0.3;
loss = sum(output) / 1000; SGD lr 0.01; the steps run inside one ir_for.
Shared by the benchmarks and the regression tests.
"""
from __future__ import annotations

import numpy as np

import autodiff as ad
from autodiff import nn


# The larger model of issue 8: batch 8, seq 64, d_model 128, 4 heads, ff 512, 2 layers, 200 steps.
LARGE = dict(layers=2, steps=200, d_model=128, heads=4, ff=512, seq=64, batch=8)


def shape_config(text: str, steps: int) -> dict:
    """The model of a --shape B,S,D,FF,L option: batch, sequence, d_model, ff and layers, 4 heads."""
    batch, seq, d_model, ff, layers = (int(v) for v in text.split(","))
    return dict(layers=layers, steps=steps, d_model=d_model, heads=4, ff=ff, seq=seq, batch=batch)


def reference_input(d_model: int = 64, seq: int = 2, batch: int | None = None) -> np.ndarray:
    """(seq, d_model) filled with 0.3 as in the reference; with a batch, (batch, seq, d_model)
    drawn from a fixed normal distribution (equal tokens would make attention uniform)."""
    if batch is None:
        return np.full((seq, d_model), 0.3, np.float32)
    return np.random.default_rng(0).standard_normal((batch, seq, d_model)).astype(np.float32)


def trace_reference_step(layers: int = 6, steps: int = 500, d_model: int = 64, heads: int = 4,
                         ff: int = 128, seq: int = 2, lr: float = 0.01, batch: int | None = None,
                         losses: list[float] | None = None) -> nn.TransformerEncoder:
    """Trace the reference training program into the current program; returns the model."""
    model = nn.TransformerEncoder(num_layers=layers, d_model=d_model, num_heads=heads, ff_dim=ff)
    opt = nn.SGD(model.parameters(), lr=lr)
    data = reference_input(d_model, seq, batch)

    def step():
        x = ad.Feeder(lambda: data, data.shape, name="x")
        loss = model(x).sum() / 1000
        opt.zero_grad()
        loss.backward()
        opt.step()
        if losses is not None:
            ad.Receiver(lambda v: losses.append(float(v)), [loss], name="loss")

    ad.ir_for(steps, step)
    return model
