"""Random small programs for the property tests, and one interpreter that builds each of
them twice: traced with autodiff, and in torch eager mode (the independent reference).

A program is drawn as a list of (op, operand, operand) picks interpreted over a pool of
tensors: elementwise ops with broadcasting, views, reductions over drawn axes, matmuls,
repeated subexpressions (CSE bait) and identities (simplify bait). Its loss (the last three
values of the pool) is differentiated and the parameters take an SGD step, inside loops of
drawn counts so that the updates carry between iterations: one loop, or a loop in a loop
whose outer body also computes the pool before the inner loop runs and receives those
values, and the parameters, after it. One parameter has a drawn number of rows (0, 1, 5).

The interpreter (`build`) sees only an engine: `AutodiffEngine` traces into the current
program (run it with `run_autodiff`), `TorchEngine` computes at once (`run_torch`); both
collect the received values in program order, then the final parameters.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from hypothesis import strategies as st

import autodiff as ad

pick = st.tuples(st.integers(0, 9), st.integers(0, 1000), st.integers(0, 1000))
# the count of each loop, outermost first: one loop, or a loop in a loop
loop_counts = st.lists(st.integers(1, 3), min_size=1, max_size=2).map(tuple)

LEARNING_RATE = 0.05


# --- the engines -------------------------------------------------------------------------

class AutodiffEngine:
    """Builds the program by tracing into the current autodiff program."""
    where = staticmethod(ad.where)
    concat = staticmethod(ad.concat)

    def __init__(self) -> None:
        self.got: list[np.ndarray] = []

    @staticmethod
    def amax(a: ad.Tensor, dim: int) -> ad.Tensor:
        return a.max(dim)

    @staticmethod
    def float(a: ad.Tensor) -> ad.Tensor:
        return a.float()

    def parameter(self, array: np.ndarray, name: str) -> ad.Tensor:
        return ad.Tensor(array, name=name)

    def feed(self, fn: Callable[[], np.ndarray], shape: tuple[int, ...]) -> ad.Tensor:
        return ad.Feeder(fn, shape, name="x")

    def loop(self, count: int, body: Callable[[], None]) -> None:
        ad.ir_for(count, body)

    def now(self, tensors: Sequence[ad.Tensor]) -> list[ad.Tensor]:
        """The values of `tensors` as they are now, to be received later: autodiff's tensors
        are values (a view taken before an in-place update keeps the old values)."""
        return list(tensors)

    def sgd_step(self, loss: ad.Tensor, params: Sequence[ad.Tensor]) -> None:
        for p in params:
            p.grad = None
        loss.backward()
        for p in params:
            if p.grad is not None:
                p.sub_(p.grad * LEARNING_RATE)

    def receive(self, tensors: Sequence[ad.Tensor], name: str) -> None:
        ad.Receiver(lambda *values: self.got.extend(values), list(tensors), name=name)


class TorchEngine:
    """Builds the program in torch eager mode: loops are Python loops, the backward pass is
    torch's autograd and the update a manual SGD step. In float32, or, to measure the
    rounding error of float32 in a program, in float64 from the same float32 inputs."""

    def __init__(self, dtype: str = "float32") -> None:
        import torch   # only the tests against torch need it
        self.torch = torch
        self.dtype = getattr(torch, dtype)
        self.where, self.concat, self.amax = torch.where, torch.cat, torch.amax
        self.got: list[np.ndarray] = []

    def float(self, a: Any) -> Any:
        return a.to(self.dtype)

    def parameter(self, array: np.ndarray, name: str) -> Any:
        return self.torch.tensor(array, dtype=self.dtype, requires_grad=True)

    def feed(self, fn: Callable[[], np.ndarray], shape: tuple[int, ...]) -> Any:
        array = fn()
        assert array.shape == shape and array.dtype == np.float32
        return self.torch.from_numpy(array).to(self.dtype)

    def loop(self, count: int, body: Callable[[], None]) -> None:
        for _ in range(count):
            body()

    def now(self, tensors: Sequence[Any]) -> list[Any]:
        """Copies: a torch view aliases its base, so an in-place update of a parameter would
        show through a view taken before it (autodiff's values do not change)."""
        return [t.detach().clone() for t in tensors]

    def sgd_step(self, loss: Any, params: Sequence[Any]) -> None:
        for p in params:
            p.grad = None
        if loss.requires_grad:   # a loss that reaches no parameter has nothing to differentiate
            loss.backward()
        with self.torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.sub_(p.grad * LEARNING_RATE)

    def receive(self, tensors: Sequence[Any], name: str) -> None:
        self.got.extend(t.detach().numpy().copy() for t in tensors)


# --- the interpreter ---------------------------------------------------------------------

def _unary(t: Any, k: int) -> Any:
    options = [lambda x: x.tanh(), lambda x: x.sin(), lambda x: (x.abs() + 1).sqrt(),
               lambda x: x.tanh().exp(), lambda x: x * 1 + 0, lambda x: -(-x), lambda x: x ** 2 * 0.5,
               lambda x: x.relu(), lambda x: (x.abs() + 1).log(), lambda x: x / 4]
    return options[k % len(options)](t)


def _apply(e: AutodiffEngine | TorchEngine, op: int, a: Any, b: Any, k: int) -> Any:
    """One drawn op; falls back to a unary op where shapes do not fit."""
    kind = op % 10
    if kind == 0:
        return _unary(a, k)
    if kind == 1 and _broadcastable(a.shape, b.shape):
        return [a + b, a * b, a - b, a.maximum(b), e.where(a.gt(b), a, b)][k % 5]
    if kind == 2 and a.ndim >= 1:
        dim = k % a.ndim
        if a.shape[dim] == 0:                           # the maximum of nothing is an error
            return [a.sum(dim), a.mean(dim, keepdim=True), a.sum()][k % 3]
        return [a.sum(dim), a.mean(dim, keepdim=True), e.amax(a, dim), a.sum()][k % 4]
    if kind == 3 and a.ndim == 2:
        return [a.T, a.reshape(-1), a.unsqueeze(0).expand(2, *a.shape), a[::2, 1:]][k % 4]
    if kind == 4 and a.ndim == 2 and b.ndim == 2 and a.shape[1] == b.shape[0]:
        return a @ b
    if kind == 4 and a.ndim == 2 and b.ndim == 2 and a.shape[1] == b.shape[1]:
        return a @ b.T
    if kind == 5:
        return a.tanh() * a.tanh() + a.tanh()          # repeated subexpressions
    if kind == 6 and a.ndim >= 1 and a.shape[0] > 1:
        return e.concat([a, a[:1] * 2], 0)
    if kind == 7 and a.ndim == 3:
        return a.permute(2, 0, 1).permute(1, 2, 0)   # a permute of a permute
    return _unary(a, k)


def _broadcastable(x: Sequence[int], y: Sequence[int]) -> bool:
    return all(p == q or p == 1 or q == 1 for p, q in zip(reversed(x), reversed(y)))


def build(e: AutodiffEngine | TorchEngine, picks: Sequence[tuple[int, int, int]], rows: int,
          loops: Sequence[int]) -> list[Any]:
    """The program of `picks` built by `e`, in loops of `loops` iterations (outermost
    first); returns the parameters."""
    rng = np.random.default_rng(0)
    params = [e.parameter(rng.standard_normal(s).astype(np.float32) * 0.5, f"p{i}")
              for i, s in enumerate([(3, 4), (4,), (4, 3), (2, 3, 4), (rows, 4)])]

    def forward() -> tuple[Any, list[Any]]:
        x = e.feed(lambda: np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), (3, 4))
        pool = [x] + params
        for op, i, j in picks:
            pool.append(_apply(e, op, pool[i % len(pool)], pool[j % len(pool)], i + j))
        outputs = pool[-3:]
        return sum(e.float(o).tanh().sum() for o in outputs), outputs

    def step() -> None:
        loss, outputs = forward()
        before = e.now([loss] + outputs)
        e.sgd_step(loss, params)
        after_update = [p * 2 for p in params]   # reads after the updates: a new version
        e.receive(before + after_update, "values")

    def nest(counts: Sequence[int]) -> None:
        if len(counts) == 1:
            e.loop(counts[0], step)
            return

        def outer() -> None:
            loss, outputs = forward()
            before = e.now([loss] + outputs)   # computed before the inner loop updates
            nest(counts[1:])
            after_loop = [p * 2 for p in params]   # reads after an inner loop that updates
            e.receive(before + after_loop, f"outer{len(counts)}")
        e.loop(counts[0], outer)

    nest(loops)
    return params


def run_autodiff(picks: Sequence[tuple[int, int, int]], disable: set[str], device: str = "numpy",
                 rows: int = 3, loops: Sequence[int] = (2,)) -> list[np.ndarray]:
    """The received values, then the final parameters, of the program of `picks` run on
    `device` with the passes or switches in `disable` off."""
    engine = AutodiffEngine()
    with ad.Program() as program:
        params = build(engine, picks, rows, loops)
        program.execute(device=device, disable=disable)
        return engine.got + [p.numpy() for p in params]


def run_torch(picks: Sequence[tuple[int, int, int]], rows: int = 3, loops: Sequence[int] = (2,),
              dtype: str = "float32") -> list[np.ndarray]:
    """The same values as `run_autodiff`, computed by torch (in `dtype`)."""
    engine = TorchEngine(dtype)
    params = build(engine, picks, rows, loops)
    return engine.got + [p.detach().numpy().copy() for p in params]


def rounding_slack(float32: Sequence[np.ndarray], float64: Sequence[np.ndarray]) -> list[float]:
    """For each value, how far two float32 computations of it may differ: 4 times the largest
    difference between its float32 and float64 computations (torch's), where both are finite.

    A drawn program can be ill-conditioned (a long chain of squares, a loss whose gradient
    cancels) so that float32 alone moves its values by 1e-3 or more; two correct float32
    computations that round differently (another summation order, a fused kernel) differ
    by about as much, in either direction. The fixed tolerances hold for the rest.
    """
    slack = []
    for a, b in zip(float32, float64):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        finite = np.isfinite(a) & np.isfinite(b)
        slack.append(4 * float(np.max(np.abs(a - b)[finite], initial=0.0)))
    return slack


def assert_agree(got: Sequence[np.ndarray], want: Sequence[np.ndarray], what: str,
                 slack: Sequence[float] | None = None, rtol: float = 2e-4, atol: float = 2e-5) -> None:
    """Every value the same shape and close: within rtol and atol, widened by the value's
    `slack` (`rounding_slack`); nan where the other has nan."""
    assert len(got) == len(want), f"{what}: {len(got)} values, want {len(want)}"
    for n, (a, b) in enumerate(zip(got, want)):
        assert np.shape(a) == np.shape(b), f"value {n}, {what}: shape {np.shape(a)}, want {np.shape(b)}"
        widened = atol + (slack[n] if slack is not None else 0.0)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=widened, err_msg=f"value {n}, {what}")
