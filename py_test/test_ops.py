"""Every op against PyTorch: forward values and gradients, driven by `op_cases.CASES`.

For each row: random inputs (seeded by the row's name), torch on the CPU in
float32 with requires_grad on float inputs, loss = sum(out * random weights),
backward; the same in autodiff with persistent tensors, a Receiver for the
outputs and every float input's `.grad`; compare. Besides the table: a
coverage test (every `Op` appears in some traced program), second-order
gradients against `torch.autograd.grad(create_graph=True)`, and the identity
<J t, c> = <t, J^T c> along random directions by finite differences.
"""
from __future__ import annotations

import os
import zlib
from typing import Any, Sequence

import numpy as np
import pytest
import torch

import autodiff as ad
import autodiff.nn.functional as F
from autodiff.ir.ops import Op
from conftest import devices_slow_on
from op_cases import CASE_IDS, CASES, OpCase, params

VALUE_TOL = dict(atol=1e-5, rtol=1e-4)
GRAD_TOL = dict(atol=1e-4, rtol=1e-3)


# --- the generic checker --------------------------------------------------------------

def _as_tuple(out: Any) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _make_inputs(case: OpCase) -> tuple[list[np.ndarray], np.random.Generator]:
    rng = np.random.default_rng(zlib.crc32(case.name.encode()))
    return [spec.make(rng) for spec in case.inputs], rng


def _is_float(array: np.ndarray) -> bool:
    return array.dtype.kind == "f"


def run_torch(case: OpCase, arrays: list[np.ndarray], weights: list[np.ndarray] | None,
              rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray | None], list[np.ndarray]]:
    """Outputs, gradients of each input (None for int inputs / no gradient) and the loss weights."""
    tensors = [torch.tensor(a, requires_grad=True) if _is_float(a) else torch.tensor(a.astype(np.int64))
               for a in arrays]
    outs = _as_tuple(case.torch_fn(*tensors))
    if weights is None:
        weights = [rng.standard_normal(o.shape).astype(np.float32) for o in outs]
    terms = [(o * torch.from_numpy(w)).sum() for o, w in zip(outs, weights) if o.is_floating_point()]
    loss = sum(terms) if terms else None
    if loss is not None and loss.requires_grad:
        loss.backward()
    grads = [t.grad.numpy() if t.grad is not None else None for t in tensors]
    return [o.detach().numpy() for o in outs], grads, weights


def trace_autodiff(case: OpCase, arrays: list[np.ndarray], weights: list[np.ndarray]
                   ) -> tuple[list[ad.Tensor], list[ad.Tensor], list[ad.Tensor | None]]:
    """Trace the row into the current program: (inputs, outputs, .grad of each input)."""
    inputs = [ad.Tensor(a, name=f"in{i}") for i, a in enumerate(arrays)]
    outs = _as_tuple(case.ad_fn(*inputs))
    terms = [(o * ad.Tensor(w, name=f"w{k}", requires_grad=False)).sum()
             for k, (o, w) in enumerate(zip(outs, weights)) if o.dtype == "float32"]
    if terms:
        loss = terms[0]
        for term in terms[1:]:
            loss = loss + term
        loss.backward()
    grads = [t.grad if t.dtype == "float32" else None for t in inputs]
    return inputs, list(outs), grads


def run_autodiff(case: OpCase, arrays: list[np.ndarray], weights: list[np.ndarray], device: str,
                 **options: Any) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    _, outs, grads = trace_autodiff(case, arrays, weights)
    present = [g for g in grads if g is not None]
    got: list[np.ndarray] = []
    ad.Receiver(lambda *values: got.extend(values), outs + present, name=case.name)
    ad.execute(device=device, **options)
    assert len(got) == len(outs) + len(present), "the Receiver did not deliver exactly once"
    values, grad_values = got[:len(outs)], iter(got[len(outs):])
    return values, [next(grad_values) if g is not None else None for g in grads]


def assert_close(name: str, got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, torch {want.shape}"
    if want.dtype.kind in "iub":
        assert got.dtype.kind in "iu", f"{name}: dtype {got.dtype}, torch {want.dtype}"
        np.testing.assert_array_equal(got, want, err_msg=name)
    else:
        assert got.dtype == np.float32, f"{name}: dtype {got.dtype}, torch {want.dtype}"
        np.testing.assert_allclose(got, want, atol=atol, rtol=rtol, err_msg=name)


# --- rows checked together: one program per chunk of rows on compiled devices ----------------
# A cold OpenCL build costs ~0.2 s per program on PoCL whatever its size, so the rows are traced
# in chunks into one program each (one build), and every test checks its own row's values from
# its chunk's run. A chunk that fails to trace or run gives nothing, and its rows run alone,
# each in its own program, so a failure still names its row. AUTODIFF_TEST_BATCH=0 runs every
# row alone (.ci/run does that too).
BATCHED_DEVICES = ("opencl",)
CHUNK_ROWS = 40
_chunk_results: dict[tuple, dict[str, tuple[list[np.ndarray], list[np.ndarray | None]]]] = {}


def _chunk_of(case: OpCase) -> list[OpCase]:
    rows = [c for c in CASES if not c.xfail]
    start = rows.index(case) // CHUNK_ROWS * CHUNK_ROWS
    return rows[start:start + CHUNK_ROWS]


def _run_chunk(rows: list[OpCase], device: str, options: dict) -> dict:
    """{row name: (outputs, input gradients)} of every row of `rows`, traced into one program."""
    got: dict[str, list[np.ndarray]] = {}
    layout: dict[str, tuple[int, list[bool]]] = {}
    try:
        with ad.Program():
            for case in rows:
                arrays, rng = _make_inputs(case)
                _, _, weights = run_torch(case, arrays, None, rng)
                _, outs, grads = trace_autodiff(case, arrays, weights)
                layout[case.name] = (len(outs), [g is not None for g in grads])
                ad.Receiver(lambda *values, name=case.name: got.setdefault(name, []).extend(values),
                            outs + [g for g in grads if g is not None], name=case.name)
            ad.execute(device=device, **options)
    except Exception:
        return {}
    results = {}
    for name, (n_outs, has_grad) in layout.items():
        values = got.get(name, [])
        if len(values) != n_outs + sum(has_grad):
            continue
        grad_values = iter(values[n_outs:])
        results[name] = (values[:n_outs], [next(grad_values) if g else None for g in has_grad])
    return results


def batched_autodiff(case: OpCase, device: str, options: dict
                     ) -> tuple[list[np.ndarray], list[np.ndarray | None]] | None:
    """The row's values from its chunk's program, or None (run it alone)."""
    if device not in BATCHED_DEVICES or case.xfail or os.environ.get("AUTODIFF_TEST_BATCH", "1") == "0":
        return None
    key = (device, repr(sorted(options.get("disable", ()))), _chunk_of(case)[0].name)
    if key not in _chunk_results:
        _chunk_results[key] = _run_chunk(_chunk_of(case), device, options)
    return _chunk_results[key].get(case.name)


def check_case(case: OpCase, device: str, **options: Any) -> None:
    arrays, rng = _make_inputs(case)
    want_outs, want_grads, weights = run_torch(case, arrays, None, rng)
    batched = batched_autodiff(case, device, options)
    got_outs, got_grads = batched or run_autodiff(case, arrays, weights, device, **options)
    assert len(got_outs) == len(want_outs)
    for k, (got, want) in enumerate(zip(got_outs, want_outs)):
        assert_close(f"{case.name}: output {k}", got, want, case.atol, case.rtol)
    for k, (array, got, want) in enumerate(zip(arrays, got_grads, want_grads)):
        if not _is_float(array):
            continue
        zeros = np.zeros_like(array)
        assert_close(f"{case.name}: gradient of input {k}", zeros if got is None else got,
                     zeros if want is None else want, case.grad_atol, case.grad_rtol)


@pytest.mark.parametrize("case", params())
def test_op_matches_torch(case: OpCase, device: str) -> None:
    check_case(case, device)


@pytest.mark.parametrize("device", devices_slow_on("opencl"))
@pytest.mark.parametrize("case", params())
def test_op_matches_torch_unoptimized(case: OpCase, device: str) -> None:
    """The same numbers with every graph pass switched off (on OpenCL in the slow set: its
    cold builds took ~57 s of the default run's test time)."""
    from autodiff.compiler import known_switches
    check_case(case, device, disable=set(known_switches()))


def test_rows_checked_together_each_give_their_values() -> None:
    """The chunked run delivers every row of a chunk (a chunk that fails falls back to one program
    per row: correct, but it would hide that programs of many rows fail)."""
    from conftest import available_devices
    if "opencl" not in available_devices():
        pytest.skip("no OpenCL device")
    rows = _chunk_of(CASES[0])
    results = _run_chunk(rows, "opencl", {})
    assert sorted(results) == sorted(c.name for c in rows)


def test_case_names_are_unique() -> None:
    assert len(set(CASE_IDS)) == len(CASE_IDS)


# --- coverage: every Op of the op table appears in a traced program -----------------------

def _ops_of(program: ad.Program) -> set[Op]:
    return {node.op for node in program.root.walk()}


def _trace_effects_program() -> None:
    """Feeder, Receiver, ir_for with the loop index, in-place updates and random numbers."""
    p = ad.Tensor(np.ones((2, 3), np.float32), name="p")
    x = ad.Feeder(lambda: np.full((2, 3), 2.0, np.float32), shape=(2, 3), name="x")

    def body(i: ad.Tensor) -> None:
        noise = ad.random_uniform((2, 3))
        loss = ad.distributed.all_reduce((p * x).sum()) + (noise * 0).sum() + i.float() * 0
        loss.backward()
        p.sub_(p.grad * 0.25)
        p.grad = None
        ad.Receiver(lambda v: None, [loss, noise], name="loss")

    ad.ir_for(3, body)
    p.assign(p * 2)


def test_every_op_has_a_row() -> None:
    covered: set[Op] = set()
    for case in CASES:
        if case.xfail:
            continue
        arrays, rng = _make_inputs(case)
        weights = [rng.standard_normal(o.shape).astype(np.float32) for o in
                   _as_tuple(case.torch_fn(*[torch.tensor(a if _is_float(a) else a.astype(np.int64))
                                             for a in arrays]))]
        with ad.Program() as program:
            _, outs, grads = trace_autodiff(case, arrays, weights)
            ad.Receiver(lambda *v: None, outs + [g for g in grads if g is not None])
        covered |= _ops_of(program)
    with ad.Program() as program:
        _trace_effects_program()
    covered |= _ops_of(program)
    missing = [op.name for op in Op if op not in covered]
    assert not missing, f"ops with no row in py_test/op_cases.py: {missing}"


def test_effects_program_runs(device: str) -> None:
    """The effects program of the coverage test also gives the right numbers."""
    got_loss: list[float] = []
    got_noise: list[np.ndarray] = []
    p = ad.Tensor(np.ones((2, 3), np.float32), name="p")
    x = ad.Feeder(lambda: np.full((2, 3), 2.0, np.float32), shape=(2, 3), name="x")

    def body(i: ad.Tensor) -> None:
        noise = ad.random_uniform((2, 3))
        loss = (p * x).sum() + i.float()
        loss.backward()
        p.sub_(p.grad * 0.25)   # d loss / dp = x = 2: p goes 1 -> 0.5 -> 0 -> -0.5
        p.grad = None
        ad.Receiver(lambda v, n: (got_loss.append(float(v)), got_noise.append(n)), [loss, noise])

    ad.ir_for(3, body)
    p.assign(p * 2)
    ad.execute(device=device)
    np.testing.assert_allclose(got_loss, [12.0, 7.0, 2.0])
    np.testing.assert_allclose(p.numpy(), np.full((2, 3), -1.0, np.float32))
    for noise in got_noise:
        assert noise.shape == (2, 3) and noise.dtype == np.float32
        assert np.all((noise >= 0) & (noise < 1))
    assert not np.array_equal(got_noise[0], got_noise[1]), "random_uniform repeated its numbers"


# --- second order against torch ----------------------------------------------------------

def _receive(tensors: Sequence[ad.Tensor], device: str) -> list[np.ndarray]:
    got: list[np.ndarray] = []
    ad.Receiver(lambda *v: got.extend(v), list(tensors))
    ad.execute(device=device)
    return got


def test_second_order_tanh(device: str) -> None:
    """d/dx sum(d/dx sum(tanh(x) * w)) = d/dx sum(w * (1 - tanh(x)^2))."""
    rng = np.random.default_rng(7)
    x0 = rng.uniform(-2, 2, (3, 4)).astype(np.float32)
    w0 = rng.standard_normal((3, 4)).astype(np.float32)

    xt, wt = torch.tensor(x0, requires_grad=True), torch.tensor(w0, requires_grad=True)
    (gt,) = torch.autograd.grad((xt.tanh() * wt).sum(), xt, create_graph=True)
    hx, hw = torch.autograd.grad(gt.sum(), [xt, wt])

    x, w = ad.Tensor(x0), ad.Tensor(w0)
    (g,) = ad.grad((x.tanh() * w).sum(), x)
    hx_ad, hw_ad = ad.grad(g.sum(), [x, w])
    got = _receive([g, hx_ad, hw_ad], device)
    np.testing.assert_allclose(got[0], gt.detach().numpy(), **GRAD_TOL)
    np.testing.assert_allclose(got[1], hx.numpy(), **GRAD_TOL)
    np.testing.assert_allclose(got[2], hw.numpy(), **GRAD_TOL)
    assert x.grad is None, "ad.grad must not touch .grad"


def test_hessian_vector_product_mlp(device: str) -> None:
    """H v of a small MLP's cross-entropy loss with respect to all its parameters."""
    rng = np.random.default_rng(8)
    shapes = [(3, 5), (5,), (5, 4), (4,)]
    params0 = [rng.standard_normal(s).astype(np.float32) * 0.7 for s in shapes]
    vecs0 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    x0 = rng.standard_normal((6, 3)).astype(np.float32)
    t0 = rng.integers(0, 4, 6).astype(np.int32)

    def forward(nn_f, x, t, w1, b1, w2, b2):
        h = (x @ w1 + b1).tanh()
        return nn_f.cross_entropy(h @ w2 + b2, t) + (h * h).mean()

    params_t = [torch.tensor(p, requires_grad=True) for p in params0]
    loss_t = forward(torch.nn.functional, torch.tensor(x0), torch.tensor(t0.astype(np.int64)), *params_t)
    grads_t = torch.autograd.grad(loss_t, params_t, create_graph=True)
    dot_t = sum((g * torch.tensor(v)).sum() for g, v in zip(grads_t, vecs0))
    hvp_t = torch.autograd.grad(dot_t, params_t)

    params = [ad.Tensor(p) for p in params0]
    loss = forward(F, ad.Tensor(x0), ad.Tensor(t0), *params)
    grads = ad.grad(loss, params)
    dot = (grads[0] * ad.Tensor(vecs0[0])).sum()
    for g, v in zip(grads[1:], vecs0[1:]):
        dot = dot + (g * ad.Tensor(v)).sum()
    hvp = ad.grad(dot, params)
    got = _receive([loss, *grads, *hvp], device)
    np.testing.assert_allclose(got[0], loss_t.detach().numpy(), **VALUE_TOL)
    for k in range(len(shapes)):
        np.testing.assert_allclose(got[1 + k], grads_t[k].detach().numpy(), err_msg=f"grad {k}", **GRAD_TOL)
        np.testing.assert_allclose(got[5 + k], hvp_t[k].numpy(), err_msg=f"hvp {k}", **GRAD_TOL)


def test_second_order_pow_div_max(device: str) -> None:
    """Second derivatives through POW (tensor exponent), DIV, MAX, EXPAND, DOT."""
    rng = np.random.default_rng(9)
    a0 = rng.uniform(0.5, 2.0, (3, 4)).astype(np.float32)
    b0 = rng.uniform(-1.0, 1.5, (3, 4)).astype(np.float32)
    c0 = rng.uniform(0.5, 2.0, (4,)).astype(np.float32)
    m0 = rng.standard_normal((4, 2)).astype(np.float32)

    def f(a, b, c, m, amax):
        return ((a ** b) / c + amax(a * b, 1, keepdim=True) * a).sin() @ m

    ts = [torch.tensor(v, requires_grad=True) for v in (a0, b0, c0, m0)]
    out_t = f(*ts, lambda t, d, keepdim: torch.amax(t, d, keepdim=keepdim))
    gt = torch.autograd.grad((out_t * out_t).sum(), ts, create_graph=True)
    hs_t = torch.autograd.grad(sum((g * g).sum() for g in gt), ts)

    xs = [ad.Tensor(v) for v in (a0, b0, c0, m0)]
    out = f(*xs, lambda t, d, keepdim: t.max(d, keepdim=keepdim))
    g = ad.grad((out * out).sum(), xs)
    total = (g[0] * g[0]).sum()
    for gi in g[1:]:
        total = total + (gi * gi).sum()
    hs = ad.grad(total, xs)
    got = _receive(hs, device)
    for k, h in enumerate(hs_t):
        np.testing.assert_allclose(got[k], h.numpy(), atol=1e-3, rtol=2e-3, err_msg=f"input {k}")


# --- <J t, c> = <t, J^T c> by finite differences ------------------------------------------------

FD_ROWS = ["tanh", "matmul_batch_broadcast", "layer_norm_affine", "attention_scores", "index_mixed",
           "pow_tensor_exponent"]


@pytest.mark.parametrize("name", FD_ROWS)
def test_vjp_matches_finite_differences(name: str, device: str) -> None:
    """Central differences of the autodiff forward along a random t against its own VJP."""
    case = next(c for c in CASES if c.name == name)
    arrays, rng = _make_inputs(case)
    floats = [k for k, a in enumerate(arrays) if _is_float(a)]
    directions = {k: rng.standard_normal(arrays[k].shape) for k in floats}
    h = 1e-2
    plus, minus = list(arrays), list(arrays)
    for k in floats:
        plus[k] = (arrays[k].astype(np.float64) + h * directions[k]).astype(np.float32)
        minus[k] = (arrays[k].astype(np.float64) - h * directions[k]).astype(np.float32)
    # the direction actually taken, after rounding the perturbed inputs to float32
    taken = {k: (plus[k].astype(np.float64) - minus[k].astype(np.float64)) / (2 * h) for k in floats}

    inputs = [ad.Tensor(a) for a in arrays]
    outs = _as_tuple(case.ad_fn(*inputs))
    cs = [rng.standard_normal(o.shape).astype(np.float32) for o in outs]
    loss = (outs[0] * ad.Tensor(cs[0], requires_grad=False)).sum()
    for o, c in zip(outs[1:], cs[1:]):
        loss = loss + (o * ad.Tensor(c, requires_grad=False)).sum()
    vjps = ad.grad(loss, [inputs[k] for k in floats])
    outs_plus = _as_tuple(case.ad_fn(*[ad.Tensor(a) for a in plus]))
    outs_minus = _as_tuple(case.ad_fn(*[ad.Tensor(a) for a in minus]))
    n = len(outs)
    got = _receive([*vjps, *outs_plus, *outs_minus], device)
    vjp_values, got_plus, got_minus = got[:len(floats)], got[len(floats):len(floats) + n], got[len(floats) + n:]

    jt_c = sum(float(np.sum((p.astype(np.float64) - m.astype(np.float64)) / (2 * h) * c))
               for p, m, c in zip(got_plus, got_minus, cs))
    t_jtc = sum(float(np.sum(taken[k] * v.astype(np.float64))) for k, v in zip(floats, vjp_values))
    scale = sum(float(np.sum(np.abs(taken[k] * v))) for k, v in zip(floats, vjp_values))
    assert abs(jt_c - t_jtc) <= 2e-3 * max(scale, 1.0), f"<Jt,c>={jt_c} <t,J^T c>={t_jtc}"


def test_grad_outputs_tensor(device: str) -> None:
    """ad.grad of a non-scalar output with explicit grad_outputs, like torch.autograd.grad."""
    rng = np.random.default_rng(10)
    x0 = rng.standard_normal((3, 4)).astype(np.float32)
    c0 = rng.standard_normal((4,)).astype(np.float32)
    xt = torch.tensor(x0, requires_grad=True)
    (want,) = torch.autograd.grad(xt.sin() @ xt.T, xt, torch.tensor(np.outer(c0[:3], c0[:3])))
    x = ad.Tensor(x0)
    (g,) = ad.grad(x.sin() @ x.T, x, ad.Tensor(np.outer(c0[:3], c0[:3]).astype(np.float32)))
    np.testing.assert_allclose(_receive([g], device)[0], want.numpy(), **GRAD_TOL)


# --- package bugs found by this file --------------------------------------------------------------

def test_ellipsis_before_an_index_bug() -> None:
    x = ad.Tensor(np.zeros((2, 3, 4), np.float32))
    assert x[..., 1].shape == (2, 3)


def test_grad_outputs_numpy_array_bug(device: str) -> None:
    x = ad.Tensor(np.ones((3, 4), np.float32))
    (g,) = ad.grad(x * 2, x, np.full((3, 4), 3.0, np.float32))
    np.testing.assert_allclose(_receive([g], device)[0], np.full((3, 4), 6.0))
