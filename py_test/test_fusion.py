"""Kernel fusion: canonical patterns fuse into the expected kernels, and numbers never change.

Counts are `len(compiled.proc.kernels())` after fusion on the numpy-proc device; every
pattern is also run with fusion off, with each fusion kind off, and on the numpy
device (the executable specification), and all of them must agree.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

import autodiff as ad
import autodiff.nn.functional as F
from autodiff import nn
from autodiff.fusion import FUSION_KINDS
from autodiff.ir.ops import Op
from autodiff.proc.index import Index
from autodiff.proc.ir import Alu, Guard, Load, Reduce, children, loads_of, walk_expr

DISABLES = [frozenset(), frozenset({"fusion"})] + [frozenset({kind}) for kind in FUSION_KINDS]


# --- programs ----------------------------------------------------------------------------
# Each builder traces into the current program and returns a list that its Receivers
# fill, plus the persistent tensors whose values the run changes.

def _data(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _linear_relu():
    x, w, b = ad.Tensor(_data((4, 8), 1)), ad.Tensor(_data((8, 5), 2)), ad.Tensor(_data((5,), 3))
    out: list = []
    ad.Receiver(lambda v: out.append(v), [(x @ w + b).relu()], name="y")
    return out, []


def _linear_tanh():
    x, w, b = ad.Tensor(_data((4, 8), 1)), ad.Tensor(_data((8, 5), 2)), ad.Tensor(_data((5,), 3))
    out: list = []
    ad.Receiver(lambda v: out.append(v), [(x @ w + b).tanh()], name="y")
    return out, []


def _sgd_linear():
    ad.manual_seed(0)
    layer = nn.Linear(8, 5)
    opt = nn.SGD(layer.parameters(), lr=0.1)
    x = ad.Feeder(lambda: _data((4, 8), 4), (4, 8), name="x")
    loss = ((layer(x) - 1) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    out: list = []
    ad.Receiver(lambda v: out.append(v), [loss], name="loss")
    return out, [layer.weight, layer.bias]


def _softmax_rows():
    x = ad.Tensor(_data((6, 10), 5))
    out: list = []
    ad.Receiver(lambda v: out.append(v), [F.softmax(x, -1)], name="p")
    return out, []


def _elementwise_chain():
    x = ad.Tensor(_data((4, 8), 6))
    y = x
    steps = [lambda t: t * 0.5, lambda t: t + 1, lambda t: t.tanh(), lambda t: t.sin(), lambda t: t.exp(),
             lambda t: t - 0.25, lambda t: t.abs(), lambda t: (t + 1).sqrt(), lambda t: t * t, lambda t: t.cos()]
    for step in steps:
        y = step(y)
    out: list = []
    ad.Receiver(lambda v: out.append(v), [y], name="y")
    return out, []


def _broadcast_chain():
    x, row = ad.Tensor(_data((4, 8), 7)), ad.Tensor(_data((8,), 8))
    col = ad.Tensor(_data((4, 1), 9))
    y = ((x.exp() + (row * 2).tanh()) * col.sin()).sin()
    out: list = []
    ad.Receiver(lambda v: out.append(v), [y], name="y")
    return out, []


def _reduction_two_consumers():
    x = ad.Tensor(_data((4, 8), 10))
    s = x.exp().sum(-1, keepdim=True)
    out: list = []
    ad.Receiver(lambda a, b: out.extend([a, b]), [x / s, (s.sin() * x).tanh()], name="two")
    return out, []


def _reduction_read_twice():
    x = ad.Tensor(_data((4, 8), 11))
    s = x.exp().sum(-1, keepdim=True)
    out: list = []
    ad.Receiver(lambda v: out.append(v), [x / s + s.sin()], name="y")
    return out, []


def _exp_into_dot():
    x, w = ad.Tensor(_data((4, 8), 12)), ad.Tensor(_data((8, 5), 13))
    out: list = []
    ad.Receiver(lambda v: out.append(v), [x.exp() @ w], name="y")
    return out, []


def _mean_epilogue():
    x = ad.Tensor(_data((5, 6), 14))
    out: list = []
    ad.Receiver(lambda v: out.append(v), [(x.mean(-1) * 3).exp()], name="y")
    return out, []


PATTERNS: dict[str, Callable] = {
    "linear_relu": _linear_relu, "linear_tanh": _linear_tanh, "sgd_linear": _sgd_linear,
    "softmax_rows": _softmax_rows, "elementwise_chain": _elementwise_chain,
    "broadcast_chain": _broadcast_chain, "reduction_two_consumers": _reduction_two_consumers,
    "reduction_read_twice": _reduction_read_twice, "exp_into_dot": _exp_into_dot,
    "mean_epilogue": _mean_epilogue,
}


def _compile(build: Callable, device: str = "numpy-proc", disable=frozenset()):
    ad.reset()
    out, params = build()
    return ad.compile(device=device, disable=set(disable)), out, params


def _run(build: Callable, device: str, disable=frozenset()) -> list[np.ndarray]:
    compiled, out, params = _compile(build, device, disable)
    compiled.run()
    return [np.asarray(v) for v in out] + [p.numpy() for p in params]


def _reduces(kernel) -> list[Reduce]:
    return [e for e in walk_expr(kernel.value) if isinstance(e, Reduce)]


def _ops(expr) -> list[Op]:
    return [e.op for e in walk_expr(expr) if isinstance(e, Alu)]


# --- canonical patterns --------------------------------------------------------------------

def test_linear_epilogue_is_one_kernel():
    """x @ w + b, then a one-load activation (tanh): the whole layer is one matmul kernel."""
    compiled, _, _ = _compile(_linear_tanh)
    (kernel,) = compiled.proc.kernels()
    assert kernel.kind == "matmul" and kernel.out.kind == "temp"
    assert [r.op for r in _reduces(kernel)] == [Op.SUM]
    assert {Op.ADD, Op.TANH} <= set(_ops(kernel.value))
    assert compiled.kernels_before_fusion == 3


def _large_linear(activation: Callable) -> Callable:
    """activation(x @ w + b) with 64 x 64 x 64 multiply-adds: a tiled product."""
    def build():
        x, w, b = ad.Tensor(_data((64, 64), 1)), ad.Tensor(_data((64, 64), 2)), ad.Tensor(_data((64,), 3))
        out: list = []
        ad.Receiver(lambda v: out.append(v), [activation(x @ w + b)], name="y")
        return out, []
    return build


@pytest.mark.parametrize("name", ["tanh", "erf", "gelu"])
def test_a_large_product_leaves_erf_and_tanh_to_a_kernel_of_their_own(name):
    """HEAVY_EPILOGUE_OPS (proc/cost.py): in a tiled product's epilogue they ran lane by lane
    beside the register block, 5x slower than the product; the bias add stays its epilogue."""
    activation = {"tanh": lambda t: t.tanh(), "erf": lambda t: t.erf(), "gelu": F.gelu}[name]
    compiled, out, _ = _compile(_large_linear(activation))
    product, = [k for k in compiled.proc.kernels() if k.kind == "matmul"]
    assert Op.ADD in _ops(product.value)
    assert not {Op.TANH, Op.ERF} & set(_ops(product.value))
    assert len(compiled.proc.kernels()) == 2
    compiled.run()
    x, w, b = _data((64, 64), 1), _data((64, 64), 2), _data((64,), 3)
    torch = pytest.importorskip("torch")
    want = {"tanh": torch.tanh, "erf": torch.erf, "gelu": torch.nn.functional.gelu}[name](
        torch.from_numpy(x @ w + b)).numpy()
    np.testing.assert_allclose(out[0], want, rtol=1e-5, atol=1e-5)


def test_a_large_product_keeps_sigmoid_in_its_epilogue():
    """exp is plain arithmetic on OpenCL (ad_exp): sigmoid measured the same fused or apart."""
    compiled, _, _ = _compile(_large_linear(lambda t: t.sigmoid()))
    (kernel,) = compiled.proc.kernels()
    assert kernel.kind == "matmul" and Op.EXP in set(_ops(kernel.value))


def test_linear_relu_bias_is_in_the_matmul_kernel():
    """relu(x @ w + b): the bias add is the matmul's epilogue, and the received value is a
    compute node, not a view, so no copy kernel (relu itself: see below)."""
    compiled, _, _ = _compile(_linear_relu)
    kernels = compiled.proc.kernels()
    assert compiled.kernels_before_fusion == 6          # dot, add, lt, eq, add (x <= 0), where
    assert len(kernels) <= 2 and kernels[0].kind == "matmul"
    assert {"dot", "add"} <= set(kernels[0].ops)
    assert not any(k.kind == "copy" for k in kernels)


def test_linear_relu_is_one_kernel():
    compiled, _, _ = _compile(_linear_relu)
    assert len(compiled.proc.kernels()) == 1


def test_sgd_update_fuses_the_weight_gradient_matmul():
    compiled, _, params = _compile(_sgd_linear)
    weight, bias = params
    updates = {k.out.var.name: k for k in compiled.proc.kernels() if k.out.kind == "persistent"}
    assert set(updates) == {weight._var.name, bias._var.name}
    w_update = updates[weight._var.name]
    assert w_update.kind == "assign"
    (reduce,) = _reduces(w_update)       # the weight gradient x.T @ dy, computed inside the update
    assert reduce.op is Op.SUM and "dot" in w_update.ops
    assert Op.SUB in _ops(w_update.value)
    # the update writes p from p at its own index, and the gradient reads no parameter
    own = tuple(Index.of(v) for v in w_update.variables)
    self_loads = [l for l in loads_of(w_update.value) if l.buffer_id == w_update.out.id]
    assert self_loads and all(l.indices == own for l in self_loads)
    # the bias gradient (a sum over the batch) is inside the bias update too
    assert [r.op for r in _reduces(updates[bias._var.name])] == [Op.SUM]
    # forward y - 1 (matmul epilogue), the received loss, dy (read inside two reductions:
    # a dot operand stays a load), the two updates
    assert [k.kind for k in compiled.proc.kernels()] == ["matmul", "reduce", "elementwise", "assign", "assign"]


def test_softmax_rows_prologue_is_inside_the_sum():
    compiled, _, _ = _compile(_softmax_rows)
    kernels = compiled.proc.kernels()
    assert len(kernels) == 3                           # max, sum(exp(x - m)), exp(x - m) / s
    assert compiled.kernels_before_fusion == 5
    sums = [k for k in kernels if any(r.op is Op.SUM for r in _reduces(k))]
    (total,) = sums
    (reduce,) = _reduces(total)
    body_ops = _ops(reduce.body)
    assert Op.EXP in body_ops and Op.SUB in body_ops    # the prologue runs inside the reduction
    maxes = [k for k in kernels if any(r.op is Op.MAX for r in _reduces(k))]
    assert len(maxes) == 1
    last = kernels[-1]
    assert not _reduces(last) and Op.DIV in _ops(last.value)


def test_elementwise_chain_of_ten_ops_is_one_kernel():
    compiled, _, _ = _compile(_elementwise_chain)
    (kernel,) = compiled.proc.kernels()
    assert kernel.kind == "elementwise"
    assert compiled.kernels_before_fusion >= 10
    assert len({load.buffer_id for load in loads_of(kernel.value)}) == 1   # only x is read


def test_chain_with_a_broadcast_of_a_cheap_value_is_one_kernel():
    compiled, _, _ = _compile(_broadcast_chain)
    (kernel,) = compiled.proc.kernels()
    assert kernel.kind == "elementwise"
    # the broadcast row and column are recomputed per element, read through broadcast loads
    assert sum(1 for l in loads_of(kernel.value) if not l.one_to_one) == 2


def test_reduction_with_two_consumers_stays_its_own_kernel():
    compiled, _, _ = _compile(_reduction_two_consumers)
    kernels = compiled.proc.kernels()
    with_reduce = [k for k in kernels if _reduces(k)]
    assert len(with_reduce) == 1                       # computed once, not inlined into each consumer
    assert sum(len(_reduces(k)) for k in kernels) == 1
    (producer,) = with_reduce
    readers = [k for k in kernels if any(l.buffer_id == producer.out.id for l in loads_of(k.value))]
    assert len(readers) == 2
    assert len(kernels) == 3


def test_reduction_read_twice_by_one_consumer_stays_its_own_kernel():
    compiled, _, _ = _compile(_reduction_read_twice)
    kernels = compiled.proc.kernels()
    assert len(kernels) == 2
    assert sum(len(_reduces(k)) for k in kernels) == 1
    producer, consumer = kernels
    assert _reduces(producer) and not _reduces(consumer)
    assert sum(1 for l in loads_of(consumer.value) if l.buffer_id == producer.out.id) == 2


def test_reduction_epilogue_fuses_into_its_one_consumer():
    compiled, _, _ = _compile(_mean_epilogue)
    (kernel,) = compiled.proc.kernels()
    assert kernel.kind == "reduce"
    assert Op.EXP in _ops(kernel.value)


def test_nothing_but_loads_in_dot_operands():
    compiled, _, _ = _compile(_exp_into_dot)
    kernels = compiled.proc.kernels()
    assert [k.kind for k in kernels] == ["elementwise", "matmul"]
    exp_kernel, dot = kernels
    assert _ops(exp_kernel.value) == [Op.EXP]
    (reduce,) = _reduces(dot)
    assert isinstance(reduce.body, Alu) and reduce.body.op is Op.MUL
    assert all(isinstance(a, Load) for a in reduce.body.args)
    assert reduce.body.args[0].buffer_id == exp_kernel.out.id


def test_dot_operands_of_every_program_are_loads():
    """In every pattern (and every switch), a matmul's reduction body multiplies plain loads."""
    for name, build in PATTERNS.items():
        for disable in DISABLES:
            compiled, _, _ = _compile(build, disable=disable)
            for kernel in compiled.proc.kernels():
                if "dot" not in kernel.ops:
                    continue
                for reduce in _reduces(kernel):
                    if isinstance(reduce.body, Alu) and reduce.body.op is Op.MUL:
                        for operand in reduce.body.args:
                            assert isinstance(operand, (Load, Guard)), (name, disable, kernel.name)


# --- switches ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(PATTERNS))
def test_fusion_off_keeps_every_kernel(name):
    compiled, _, _ = _compile(PATTERNS[name], disable={"fusion"})
    assert len(compiled.proc.kernels()) == compiled.kernels_before_fusion == compiled.kernels_after_fusion


@pytest.mark.parametrize("name", list(PATTERNS))
def test_each_kind_off_agrees_with_the_numpy_device(name):
    build = PATTERNS[name]
    expected = _run(build, "numpy")
    counts = {}
    for disable in DISABLES:
        got = _run(build, "numpy-proc", disable)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=2e-5, atol=1e-6, err_msg=f"{name} disable={set(disable)}")
        compiled, _, _ = _compile(build, disable=disable)
        counts[disable] = len(compiled.proc.kernels())
    # switching a kind off never gives fewer kernels than all of fusion on
    everything = counts[frozenset()]
    assert all(everything <= n <= counts[frozenset({"fusion"})] for n in counts.values()), counts


@pytest.mark.parametrize("name", ["linear_tanh", "softmax_rows", "sgd_linear", "elementwise_chain"])
def test_patterns_on_every_device(device, name):
    """The same numbers on each device the suite runs (fusion on)."""
    got = _run(PATTERNS[name], device)
    expected = _run(PATTERNS[name], "numpy", {"fusion"})
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=1e-6)


def test_kind_switches_block_their_own_fusions():
    """dot_fusion off: the matmul stays alone; reduce_fusion off: the softmax sum reads a buffer."""
    compiled, _, _ = _compile(_linear_tanh, disable={"dot_fusion"})
    kinds = [k.kind for k in compiled.proc.kernels()]
    assert kinds[0] == "matmul" and len(kinds) == 2
    assert set(compiled.proc.kernels()[0].ops) == {"dot"}
    compiled, _, _ = _compile(_softmax_rows, disable={"reduce_fusion"})
    for kernel in compiled.proc.kernels():
        for reduce in _reduces(kernel):
            assert isinstance(reduce.body, Load), kernel.name
    compiled, _, _ = _compile(_elementwise_chain, disable={"elementwise_fusion"})
    assert len(compiled.proc.kernels()) == compiled.kernels_before_fusion


# --- a kernel that writes a buffer must read it only where it writes ---------------------------

def _self_reads_are_own_element(compiled) -> list[str]:
    """Kernels that read their own output buffer anywhere but at the element they write
    (a read-write race for a parallel device: other work-items overwrite what they read)."""
    bad = []
    for kernel in compiled.proc.kernels():
        own = tuple(Index.of(v) for v in kernel.variables)
        stack = [(kernel.value, False)]
        while stack:
            expr, inside = stack.pop()
            if isinstance(expr, Load) and expr.buffer_id == kernel.out.id and (inside or expr.indices != own):
                bad.append(f"{kernel.name} reads {kernel.out.name}{list(expr.indices)}")
            stack.extend((c, inside or isinstance(expr, Reduce)) for c in children(expr))
    return bad


def test_sgd_updates_read_their_parameter_only_where_they_write():
    compiled, _, _ = _compile(_sgd_linear)
    assert _self_reads_are_own_element(compiled) == []


def test_transformer_updates_read_their_parameters_only_where_they_write():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from reference_model import trace_reference_step
    model = trace_reference_step(layers=1, steps=2)
    compiled = ad.compile(device="numpy-proc")
    updates = sum(1 for k in compiled.proc.kernels() if k.out.kind == "persistent")
    assert updates == len(list(model.parameters()))
    assert _self_reads_are_own_element(compiled) == []


def test_fusion_does_not_inline_reads_of_the_updated_tensor_into_its_update():
    ad.reset()
    p = ad.Tensor(np.arange(4, dtype=np.float32).reshape(2, 2), name="p", requires_grad=False)
    p.sub_((p @ p) * 0.1)
    compiled = ad.compile(device="numpy-proc")
    assert _self_reads_are_own_element(compiled) == []


def test_update_from_a_matmul_of_the_tensor_itself(device, request):
    """p -= 0.1 * (p @ p): the update reads p elsewhere, so it writes a temporary first."""
    values = np.arange(64, dtype=np.float32).reshape(8, 8) / 10
    p = ad.Tensor(values, name="p", requires_grad=False)
    p.sub_((p @ p) * 0.1)
    ad.execute(device=device)
    np.testing.assert_allclose(p.numpy(), values - (values @ values) * 0.1, rtol=1e-5, atol=1e-4)
