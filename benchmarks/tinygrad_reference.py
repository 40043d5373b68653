"""The reference transformer in tinygrad, for the benchmarks: PyTorch's post-norm encoder
layer (ReLU feed-forward, no dropout) on a state dict with PyTorch's names, SGD, one
`TinyJit` step called N times. Needs `pip install -e ".[bench]"` and a tinygrad device:
DEV=CPU needs clang (apt-get install clang); DEV=CL an OpenCL loader tinygrad can open.
"""
from __future__ import annotations

import statistics
import time

import numpy as np


def _encoder(params: dict, x, layers: int, heads: int):
    def linear(x, name):
        return x @ params[f"{name}.weight"].T + params[f"{name}.bias"]

    def norm(x, name):
        return x.layernorm(axis=-1, eps=1e-5) * params[f"{name}.weight"] + params[f"{name}.bias"]

    for i in range(layers):
        p = f"layers.{i}"
        d = x.shape[-1]
        qkv = x @ params[f"{p}.self_attn.in_proj_weight"].T + params[f"{p}.self_attn.in_proj_bias"]
        q, k, v = (qkv[..., j * d:(j + 1) * d].reshape(*x.shape[:-1], heads, d // heads).transpose(-2, -3)
                   for j in range(3))
        weights = (q @ k.transpose(-1, -2) / float(np.sqrt(d // heads))).softmax(-1)
        attended = (weights @ v).transpose(-2, -3).reshape(x.shape)
        x = norm(x + linear(attended, f"{p}.self_attn.out_proj"), f"{p}.norm1")
        x = norm(x + linear(linear(x, f"{p}.linear1").relu(), f"{p}.linear2"), f"{p}.norm2")
    return x


def run_tinygrad(state: dict, data: np.ndarray, layers: int, heads: int, steps: int, lr: float) -> dict:
    from tinygrad import Device, Tensor, TinyJit
    from tinygrad.helpers import Context
    from tinygrad.nn.optim import SGD
    params = {k: Tensor(np.ascontiguousarray(v)) for k, v in state.items()}
    x = Tensor(data).is_param_(False)       # tinygrad 0.14: every tensor is a parameter unless told
    opt = SGD(list(params.values()), lr=lr)

    @TinyJit
    def step():
        with Context(TRAINING=1):
            opt.zero_grad()
            loss = _encoder(params, x, layers, heads).sum() / 1000
            loss.backward()
            return loss.realize(*opt.schedule_step())

    start = time.perf_counter()
    for _ in range(2):              # TinyJit runs the first call, captures the second
        loss = step().numpy()
    first = time.perf_counter() - start
    times = []
    for _ in range(steps - 2):
        t = time.perf_counter()
        loss = step().numpy()
        times.append(time.perf_counter() - t)
    return dict(framework=f"tinygrad {Device.DEFAULT}", compile_s=first, ms_per_step=1000 * statistics.median(times),
                final_loss=float(loss))
