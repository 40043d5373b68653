"""Property: random programs give the same numbers with every graph pass on, and each off.

A program is drawn as a list of (op, operand, operand) picks interpreted over a pool of
tensors: elementwise ops with broadcasting, views, reductions, matmuls, repeated
subexpressions (CSE bait) and identities (simplify bait), a backward pass and an SGD
update, all inside an ir_for so the update carries between iterations.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import autodiff as ad
from autodiff.opt import PASS_NAMES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _unary(t: ad.Tensor, k: int) -> ad.Tensor:
    options = [lambda x: x.tanh(), lambda x: x.sin(), lambda x: (x.abs() + 1).sqrt(),
               lambda x: x.tanh().exp(), lambda x: x * 1 + 0, lambda x: -(-x), lambda x: x ** 2 * 0.5,
               lambda x: x.relu(), lambda x: (x.abs() + 1).log(), lambda x: x / 4]
    return options[k % len(options)](t)


def _apply(op: int, a: ad.Tensor, b: ad.Tensor, k: int) -> ad.Tensor:
    """One drawn op; falls back to a unary op where shapes do not fit."""
    kind = op % 10
    if kind == 0:
        return _unary(a, k)
    if kind == 1 and _broadcastable(a.shape, b.shape):
        return [a + b, a * b, a - b, a.maximum(b), ad.where(a.gt(b), a, b)][k % 5]
    if kind == 2 and a.ndim >= 1:
        dim = k % a.ndim
        if a.shape[dim] == 0:                           # the maximum of nothing is an error
            return [a.sum(dim), a.mean(dim, keepdim=True), a.sum()][k % 3]
        return [a.sum(dim), a.mean(dim, keepdim=True), a.max(dim), a.sum()][k % 4]
    if kind == 3 and a.ndim == 2:
        return [a.T, a.reshape(-1), a.unsqueeze(0).expand(2, *a.shape), a[::2, 1:]][k % 4]
    if kind == 4 and a.ndim == 2 and b.ndim == 2 and a.shape[1] == b.shape[0]:
        return a @ b
    if kind == 4 and a.ndim == 2 and b.ndim == 2 and a.shape[1] == b.shape[1]:
        return a @ b.T
    if kind == 5:
        return a.tanh() * a.tanh() + a.tanh()          # repeated subexpressions
    if kind == 6 and a.ndim >= 1 and a.shape[0] > 1:
        return ad.concat([a, a[:1] * 2], 0)
    if kind == 7 and a.ndim == 3:
        return a.permute(2, 0, 1).permute(1, 2, 0)   # a permute of a permute
    return _unary(a, k)


def _broadcastable(x: tuple, y: tuple) -> bool:
    return all(p == q or p == 1 or q == 1 for p, q in zip(reversed(x), reversed(y)))


def _run(picks: list[tuple[int, int, int]], disable: set[str], device: str = "numpy",
         rows: int = 3) -> list[np.ndarray]:
    """The program of `picks` run on `device`; `rows` sizes one parameter (0 and 1 included)."""
    got: list[np.ndarray] = []
    with ad.Program() as program:
        rng = np.random.default_rng(0)
        params = [ad.Tensor(rng.standard_normal(s).astype(np.float32) * 0.5, name=f"p{i}")
                  for i, s in enumerate([(3, 4), (4,), (4, 3), (2, 3, 4), (rows, 4)])]

        def body():
            x = ad.Feeder(lambda: np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), (3, 4), name="x")
            pool = [x] + params
            for op, i, j in picks:
                pool.append(_apply(op, pool[i % len(pool)], pool[j % len(pool)], i + j))
            outputs = pool[-3:]
            loss = sum(o.float().tanh().sum() for o in outputs)
            for p in params:
                p.grad = None
            loss.backward()
            for p in params:
                if p.grad is not None:
                    p.sub_(p.grad * 0.05)
            after_update = [p * 2 for p in params]   # reads after the updates: a new version
            ad.Receiver(lambda *a: got.extend(a), [loss] + outputs + after_update, name="values")

        ad.ir_for(2, body)
        program.execute(device=device, disable=disable)
        got.extend(p.numpy() for p in params)
    return got


pick = st.tuples(st.integers(0, 9), st.integers(0, 1000), st.integers(0, 1000))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(pick, min_size=5, max_size=40))
def test_random_programs_agree_with_each_pass_off(picks):
    reference = _run(picks, set(PASS_NAMES))          # nothing optimized
    for disabled in [set()] + [{name} for name in PASS_NAMES]:
        got = _run(picks, disabled)
        assert len(got) == len(reference)
        for a, b in zip(got, reference):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6, err_msg=f"disable={disabled}")


def test_reference_transformer_step_passes_each_remove_something():
    from reference_model import trace_reference_step
    trace_reference_step(layers=6, steps=2)
    compiled = ad.compile(device="numpy")
    counts = {r.name: (r.nodes_before, r.nodes_after) for r in compiled.pass_records}
    for name in ("simplify", "cse"):
        before, after = counts[name]
        assert after < before, f"{name} removed nothing: {before} -> {after}"
    first, last = compiled.pass_records[0], compiled.pass_records[-1]
    assert last.nodes_after < first.nodes_before
