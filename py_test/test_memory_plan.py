"""The memory plan of the procedural IR: loop-aware liveness, in-place pairs, arena placement.

Every plan is checked twice: by the package's `validate_plan`, and by an independent
re-derivation here (program steps, each temporary's lifetime, no two live buffers
sharing a byte except an in-place pair, the in-place rule itself, the lower bound).
Random programs also run on numpy-proc and must give the numpy device's numbers,
so a plan that is valid on paper but wrong in effect is caught too.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import autodiff as ad
import autodiff.nn.functional as F
from autodiff import nn
from autodiff.alloc.plan import ALIGNMENT, MemoryPlan, validate_plan
from autodiff.proc.index import Index
from autodiff.proc.ir import KernelCmd, LoopCmd, ProcProgram, ReceiveCmd, Reduce, loads_of, walk_expr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


# --- an independent check of a plan -------------------------------------------------------

def _aligned(n: int) -> int:
    return max(ALIGNMENT, -(-n // ALIGNMENT) * ALIGNMENT)


def _program_steps(program: ProcProgram):
    """Step of each non-loop command (program order), and each loop's [first, last] step,
    plus the loops enclosing each command (outermost first)."""
    step_of, span, loops_of = {}, {}, {}
    counter = [0]

    def visit(commands, enclosing):
        for cmd in commands:
            if isinstance(cmd, LoopCmd):
                first = counter[0]
                visit(cmd.body, enclosing + [cmd])
                span[id(cmd)] = (first, counter[0] - 1)
            else:
                step_of[id(cmd)] = counter[0]
                loops_of[id(cmd)] = enclosing
                counter[0] += 1
    visit(program.commands, [])
    return step_of, span, loops_of


def expected_lifetimes(program: ProcProgram) -> dict[int, tuple[int, int]]:
    step_of, span, loops_of = _program_steps(program)
    temps = {b.id for b in program.buffers if b.kind == "temp"}
    writer: dict[int, tuple[int, list]] = {}
    lives: dict[int, list[int]] = {}
    for cmd in program.walk():
        if isinstance(cmd, LoopCmd):
            continue
        at, loops = step_of[id(cmd)], loops_of[id(cmd)]
        if isinstance(cmd, KernelCmd):
            reads = [load.buffer_id for load in loads_of(cmd.kernel.value)]
        elif isinstance(cmd, ReceiveCmd):
            reads = [b.id for b in cmd.buffers]
        else:
            reads = []
        for b in reads:
            if b not in temps:
                continue
            _, writer_loops = writer[b]
            outside = [loop for loop in loops if all(loop is not w for w in writer_loops)]
            end = span[id(outside[0])][1] if outside else at   # read each iteration: the whole loop
            lives[b][1] = max(lives[b][1], end)
        if isinstance(cmd, KernelCmd) and cmd.kernel.out.id in temps:
            writer[cmd.kernel.out.id] = (at, loops)
            lives[cmd.kernel.out.id] = [at, at]
    return {b: (s, e) for b, (s, e) in lives.items()}


def check_plan(program: ProcProgram, plan: MemoryPlan) -> None:
    validate_plan(program, plan)
    buffers = {b.id: b for b in program.buffers}
    expected = expected_lifetimes(program)
    assert {b: (l.start, l.end) for b, l in plan.lifetimes.items()} == expected
    # offsets: aligned, inside the arena
    for b, offset in plan.offsets.items():
        assert offset % ALIGNMENT == 0 and offset + buffers[b].nbytes <= plan.arena_bytes
    # the in-place rule: an elementwise kernel (no reduction) whose input dies there and is
    # read only at the kernel's own indices; the two share their offset
    step_of, _, _ = _program_steps(program)
    pairs = {frozenset(p) for p in plan.in_place}
    writers = {c.kernel.out.id: c for c in program.walk() if isinstance(c, KernelCmd)}
    for source, out in plan.in_place:
        cmd = writers[out]
        kernel = cmd.kernel
        assert not any(isinstance(e, Reduce) for e in walk_expr(kernel.value)), kernel.name
        own = tuple(Index.of(v) for v in kernel.variables)
        reads = [l for l in loads_of(kernel.value) if l.buffer_id == source]
        assert reads and all(l.indices == own for l in reads), kernel.name
        assert expected[source][1] == step_of[id(cmd)], "the input must die in the kernel"
        assert buffers[source].nbytes == buffers[out].nbytes
        assert plan.offsets[source] == plan.offsets[out]
    # no two temporaries live at the same step share a byte (in-place pairs excepted)
    items = sorted(expected.items(), key=lambda kv: kv[1])
    for i, (a, (a_start, a_end)) in enumerate(items):
        for b, (b_start, b_end) in items[i + 1:]:
            if b_start > a_end:
                break
            a_lo, b_lo = plan.offsets[a], plan.offsets[b]
            if a_lo < b_lo + buffers[b].nbytes and b_lo < a_lo + buffers[a].nbytes:
                assert frozenset((a, b)) in pairs, f"{buffers[a].name} and {buffers[b].name} share bytes"
    # sizes: lower bound <= arena <= no reuse; the lower bound is the liveness peak
    assert plan.lower_bound_bytes <= plan.arena_bytes <= plan.no_reuse_bytes
    assert plan.no_reuse_bytes == sum(_aligned(buffers[b].nbytes) for b in expected)
    if not plan.in_place and expected:
        last = max(e for _, e in expected.values())
        peak = max(sum(_aligned(buffers[b].nbytes) for b, (s, e) in expected.items() if s <= t <= e)
                   for t in range(last + 1))
        assert plan.lower_bound_bytes == peak


# --- random programs -------------------------------------------------------------------------

def _pick(op: int, a: ad.Tensor, b: ad.Tensor, k: int) -> ad.Tensor:
    kind = op % 9
    if kind == 1 and all(p == q or p == 1 or q == 1 for p, q in zip(reversed(a.shape), reversed(b.shape))):
        return [a + b, a * b, a - b, a.maximum(b)][k % 4]
    if kind == 2 and a.ndim >= 1:
        dim = k % a.ndim
        return [a.sum(dim, keepdim=True), a.mean(dim), a.max(dim, keepdim=True), a.sum()][k % 4]
    if kind == 3 and a.ndim == 2:
        return [a.T, a.reshape(-1), a[::2], a.unsqueeze(0).expand(2, *a.shape)][k % 4]
    if kind == 4 and a.ndim == 2 and b.ndim == 2 and a.shape[1] == b.shape[0]:
        return a @ b
    if kind == 4 and a.ndim == 2 and b.ndim == 2 and a.shape[1] == b.shape[1]:
        return a @ b.T
    if kind == 5 and a.ndim == 2:
        return F.softmax(a, -1)
    if kind == 6 and a.ndim >= 1 and a.shape[0] > 1:
        return ad.concat([a, a[:1] * 2], 0)
    if kind == 7:
        return (a.exp() + 1).T * 0.5 if a.ndim == 2 else (a.exp() + 1) * 0.5
    return [lambda t: t.tanh(), lambda t: t.sin() * 2, lambda t: t.relu() + 0.1,
            lambda t: (t.abs() + 1).log(), lambda t: t * t][k % 5](a)


def _random_program(picks, loop: int, backward: bool, received: list) -> list[ad.Tensor]:
    rng = np.random.default_rng(0)
    params = [ad.Tensor(rng.standard_normal(s).astype(np.float32) * 0.5, name=f"p{i}")
              for i, s in enumerate([(3, 4), (4,), (4, 3)])]
    before_loop = (params[0].tanh() * 2).sum(0)          # computed once, read in every iteration

    def body():
        x = ad.Feeder(lambda: np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), (3, 4), name="x")
        pool = [x, before_loop] + params
        for op, i, j in picks:
            pool.append(_pick(op, pool[i % len(pool)], pool[j % len(pool)], i + j))
        loss = sum(o.tanh().sum() for o in pool[-2:])
        if backward:
            for p in params:
                p.grad = None
            loss.backward()
            for p in params:
                if p.grad is not None:
                    p.sub_(p.grad * 0.05)
        ad.Receiver(lambda v: received.append(np.asarray(v).copy()), [loss], name="loss")

    if loop == "nested":          # an outer loop whose body computes a value its inner loop reads
        def outer():
            nonlocal before_loop
            before_loop = (params[1] * 3).sin() + before_loop
            ad.ir_for(2, body)
            ad.Receiver(lambda v: received.append(np.asarray(v).copy()), [params[2].sum()], name="after")
        ad.ir_for(2, outer)
    elif loop:
        ad.ir_for(loop, body)
    else:
        body()
    return params


_picks = st.lists(st.tuples(st.integers(0, 8), st.integers(0, 30), st.integers(0, 30)), min_size=1, max_size=7)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_picks, st.sampled_from([0, 2, "nested"]), st.booleans(), st.sampled_from(["", "fusion", "elementwise_fusion"]))
def test_random_programs_give_valid_plans_and_the_same_numbers(picks, loop, backward, off):
    disable = {off} if off else set()
    results = {}
    for device in ("numpy", "numpy-proc"):
        received: list = []
        with ad.Program():
            params = _random_program(picks, loop, backward, received)
            compiled = ad.compile(device=device, disable=disable)
            if device == "numpy-proc":
                check_plan(compiled.proc, compiled.plan)
            compiled.run()
        results[device] = received + [p.numpy() for p in params]
    for got, want in zip(results["numpy-proc"], results["numpy"]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_picks, st.sampled_from([0, 3]))
def test_without_reuse_every_temporary_has_its_own_bytes(picks, loop):
    with ad.Program():
        _random_program(picks, loop, True, [])
        compiled = ad.compile(device="numpy-proc", disable={"memory_reuse", "fusion"})
    plan = compiled.plan
    validate_plan(compiled.proc, plan)
    assert plan.arena_bytes == plan.no_reuse_bytes and not plan.in_place
    spans = sorted((plan.offsets[b.id], plan.offsets[b.id] + b.nbytes) for b in compiled.proc.buffers
                   if b.kind == "temp" and b.id in plan.offsets)
    assert all(hi <= lo for (_, hi), (lo, _) in zip(spans, spans[1:]))


# --- directed cases ------------------------------------------------------------------------------

def _compile(disable=("fusion",)):
    return ad.compile(device="numpy-proc", disable=set(disable))


def test_long_elementwise_chain_reuses_memory():
    x = ad.Tensor(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32))
    y = x
    for i in range(30):
        y = [lambda t: t * 0.9, lambda t: t.sin(), lambda t: t + 0.1][i % 3](y)
    got: list = []
    ad.Receiver(lambda v: got.append(v), [y], name="y")
    compiled = _compile()
    plan = compiled.plan
    check_plan(compiled.proc, plan)
    one = 64 * 64 * 4
    assert len(compiled.proc.kernels()) == 30
    assert plan.no_reuse_bytes == 30 * one
    assert plan.arena_bytes <= 2 * one          # at most two buffers live at once
    assert plan.in_place                        # a chain writes over its dying inputs
    compiled.run()
    expected = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    for i in range(30):
        expected = [lambda t: t * np.float32(0.9), np.sin, lambda t: t + np.float32(0.1)][i % 3](expected)
    np.testing.assert_allclose(got[0], expected, rtol=1e-5, atol=1e-6)


def test_in_place_when_the_dying_input_is_read_at_its_own_index():
    x = ad.Tensor(np.arange(36, dtype=np.float32).reshape(6, 6) / 36)
    ad.Receiver(lambda v: None, [x.exp() + 1], name="y")
    compiled = _compile()
    check_plan(compiled.proc, compiled.plan)
    exp_kernel, add_kernel = compiled.proc.kernels()
    assert compiled.plan.in_place == [(exp_kernel.out.id, add_kernel.out.id)]
    assert compiled.plan.offsets[exp_kernel.out.id] == compiled.plan.offsets[add_kernel.out.id]


def test_no_in_place_when_the_input_is_read_transposed():
    x = ad.Tensor(np.arange(36, dtype=np.float32).reshape(6, 6) / 36)
    got: list = []
    ad.Receiver(lambda v: got.append(v), [x.exp().T + 1], name="y")
    compiled = _compile()
    check_plan(compiled.proc, compiled.plan)
    exp_kernel, add_kernel = compiled.proc.kernels()
    assert compiled.plan.in_place == []
    # both live at the add kernel's step: disjoint bytes
    a, b = compiled.plan.offsets[exp_kernel.out.id], compiled.plan.offsets[add_kernel.out.id]
    assert a + exp_kernel.out.nbytes <= b or b + add_kernel.out.nbytes <= a
    compiled.run()
    np.testing.assert_allclose(got[0], np.exp(np.arange(36, dtype=np.float32).reshape(6, 6) / 36).T + 1,
                               rtol=1e-6)


def test_no_in_place_when_the_input_lives_on_or_is_broadcast():
    x = ad.Tensor(np.arange(36, dtype=np.float32).reshape(6, 6) / 36)
    e = x.exp()
    ad.Receiver(lambda a, b: None, [e + 1, e * 2], name="two")     # e is read by two kernels
    compiled = _compile()
    check_plan(compiled.proc, compiled.plan)
    exp_kernel, add_kernel, mul_kernel = compiled.proc.kernels()
    # not over e where e is still needed; over e where it dies (the second reader)
    assert compiled.plan.in_place == [(exp_kernel.out.id, mul_kernel.out.id)]
    ad.reset()
    x = ad.Tensor(np.arange(36, dtype=np.float32).reshape(6, 6) / 36)
    e = x.exp()
    ad.Receiver(lambda v: None, [e + e[:1]], name="row")            # row 0 read by every row
    compiled = _compile()
    check_plan(compiled.proc, compiled.plan)
    assert compiled.plan.in_place == []


def test_a_value_computed_before_a_loop_lives_through_the_loop():
    w = ad.Tensor(np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4), requires_grad=False)
    before = w.exp()
    got: list = []

    def body():
        x = ad.Feeder(lambda: np.ones((3, 4), np.float32), (3, 4), name="x")
        y = (x * before).sin()
        ad.Receiver(lambda v: got.append(v), [y + 1], name="y")

    ad.ir_for(4, body)
    for disable in (("fusion",), ()):
        compiled = _compile(disable)
        check_plan(compiled.proc, compiled.plan)
        commands = compiled.proc.commands
        (loop,) = [c for c in commands if isinstance(c, LoopCmd)]
        step_of, span, _ = _program_steps(compiled.proc)
        first, last = span[id(loop)]
        producers = [c.kernel for c in commands if isinstance(c, KernelCmd)]
        (pre,) = [k for k in producers if "exp" in k.ops]
        life = compiled.plan.lifetimes[pre.out.id]
        assert life.start < first and life.end == last, (disable, life, (first, last))
        # and nothing written inside the loop shares its bytes
        for cmd in compiled.proc.walk():
            if isinstance(cmd, KernelCmd) and cmd.kernel.out.id in compiled.plan.offsets and cmd in loop.body:
                a, b = compiled.plan.offsets[pre.out.id], compiled.plan.offsets[cmd.kernel.out.id]
                assert a + pre.out.nbytes <= b or b + cmd.kernel.out.nbytes <= a
        got.clear()
        compiled.run()
        assert len(got) == 4
        expected = np.sin(np.exp(np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4))) + 1
        for v in got:
            np.testing.assert_allclose(v, expected, rtol=1e-6)


# --- the examples' training programs ----------------------------------------------------------------

def _mnist_mlp(features: int = 64, batch: int = 512, steps: int = 3) -> None:
    """The training program of examples/mnist.py (digits-sized input), synthetic data."""
    model = nn.Sequential(nn.Linear(features, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    opt = nn.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    current: dict = {}

    def next_images() -> np.ndarray:
        current["labels"] = rng.integers(0, 10, batch).astype(np.int32)
        return rng.random((batch, features), dtype=np.float32)

    def train_step(step: ad.Tensor) -> None:
        images = ad.Feeder(next_images, (batch, features), name="images")
        labels = ad.Feeder(lambda: current["labels"], (batch,), np.int32, name="labels")
        loss = F.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ad.Receiver(lambda i, v: None, [step, loss], name="loss", every=min(20, steps))

    ad.ir_for(steps, train_step)
    test_x = ad.Tensor(np.zeros((360, features), np.float32), name="test_images", requires_grad=False)
    ad.Receiver(lambda p: None, [model(test_x).argmax(-1)], name="accuracy")


def _transformer() -> None:
    from reference_model import trace_reference_step
    trace_reference_step(layers=2, steps=3)


@pytest.mark.parametrize("name", ["mlp", "transformer"])
def test_training_programs_give_valid_plans(name):
    build = {"mlp": _mnist_mlp, "transformer": _transformer}[name]
    for disable in ((), ("fusion",)):
        ad.reset()
        ad.manual_seed(0)
        build()
        compiled = _compile(disable)
        plan = compiled.plan
        check_plan(compiled.proc, plan)
        print(f"\n{name} fusion={'off' if disable else 'on'}: kernels {compiled.kernels_before_fusion} -> "
              f"{compiled.kernels_after_fusion}, arena {plan.arena_bytes} B, lower bound "
              f"{plan.lower_bound_bytes} B, no reuse {plan.no_reuse_bytes} B, in-place pairs "
              f"{len(plan.in_place)}, persistent {plan.persistent_bytes} B ({plan.strategy})")
        assert plan.lower_bound_bytes <= plan.arena_bytes <= plan.no_reuse_bytes
