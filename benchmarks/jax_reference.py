"""The reference transformer in JAX, for the benchmarks: PyTorch's post-norm encoder layer
(ReLU feed-forward, no dropout) on a state dict with PyTorch's names, trained with SGD.

Two ways to run N steps, as issue 8 asks (`time_jax`, shared with bench_small.py): `jax.jit`
of one step called N times, and `jax.jit` of a `lax.fori_loop` over all N steps. Needs `pip install -e ".[bench]"`.
"""
from __future__ import annotations

import statistics
import time

import numpy as np


def _encoder(jnp, jax, params: dict, x, layers: int, heads: int):
    def linear(x, name):
        return x @ params[f"{name}.weight"].T + params[f"{name}.bias"]

    def norm(x, name):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / jnp.sqrt(var + 1e-5) * params[f"{name}.weight"] + params[f"{name}.bias"]

    for i in range(layers):
        p = f"layers.{i}"
        d = x.shape[-1]
        qkv = x @ params[f"{p}.self_attn.in_proj_weight"].T + params[f"{p}.self_attn.in_proj_bias"]
        q, k, v = (t.reshape(*x.shape[:-1], heads, d // heads).swapaxes(-2, -3) for t in jnp.split(qkv, 3, -1))
        weights = jax.nn.softmax(q @ k.swapaxes(-1, -2) / np.sqrt(d // heads), axis=-1)
        attended = (weights @ v).swapaxes(-2, -3).reshape(x.shape)
        x = norm(x + linear(attended, f"{p}.self_attn.out_proj"), f"{p}.norm1")
        x = norm(x + linear(jax.nn.relu(linear(x, f"{p}.linear1")), f"{p}.linear2"), f"{p}.norm2")
    return x


def run_jax(state: dict, data: np.ndarray, layers: int, heads: int, steps: int, lr: float,
            fori_loop: bool) -> dict:
    import jax
    import jax.numpy as jnp
    params = {k: jnp.asarray(v) for k, v in state.items()}
    x = jnp.asarray(data)

    def loss_fn(params):
        return _encoder(jnp, jax, params, x, layers, heads).sum() / 1000

    def step(params):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        return {k: params[k] - lr * grads[k] for k in params}, loss

    return time_jax(step, params, steps, fori_loop)


def time_jax(step, carry, steps: int, fori_loop: bool) -> dict:
    """`steps` training steps of `step(carry) -> (carry, loss)` (carry: any pytree of arrays)
    under `jax.jit`: one step compiled and called per step (ms_per_step: the median call), or
    a `lax.fori_loop` over all steps compiled as one program (ms_per_step: its run / steps).
    final_loss: the last step's loss."""
    import jax
    import jax.numpy as jnp
    if fori_loop:
        def run_all(carry):
            def body(_, state):
                carry, _ = state
                return step(carry)
            return jax.lax.fori_loop(0, steps, body, (carry, jnp.float32(0)))

        start = time.perf_counter()
        compiled = jax.jit(run_all).lower(carry).compile()
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        _, loss = jax.block_until_ready(compiled(carry))
        run_s = time.perf_counter() - start
        return dict(framework="JAX jit(fori_loop)", compile_s=compile_s, ms_per_step=1000 * run_s / steps,
                    final_loss=float(loss))
    start = time.perf_counter()
    compiled = jax.jit(step).lower(carry).compile()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        carry, loss = jax.block_until_ready(compiled(carry))
        times.append(time.perf_counter() - t)
    return dict(framework="JAX jit(step)", compile_s=compile_s, ms_per_step=1000 * statistics.median(times),
                final_loss=float(loss))
