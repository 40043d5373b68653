"""Function transforms (value_and_grad, grad(fn), vjp, jvp, jacobian, hessian) against torch.func,
on every device: several ops in one traced program, a small MLP with its parameters as
argnums, compositions (grad of jvp, jvp of grad), and a use inside an ir_for body."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pytest
import torch
import torch.func as tf

import autodiff as ad
from conftest import devices_slow_on

TOL = dict(atol=1e-4, rtol=1e-3)

# (name, function of (module, *args) so one body serves torch and autodiff, argument shapes)
UNARY: list[tuple[str, Callable[..., Any], tuple[int, ...]]] = [
    ("exp", lambda m, x: m.exp(x), (2, 3)),
    ("tanh", lambda m, x: m.tanh(x), (5,)),
    ("sin", lambda m, x: m.sin(x), (1, 4)),
    ("softmax", lambda m, x: m.softmax(x, dim=-1), (3, 4)),
    ("sum", lambda m, x: (x * x).sum(dim=0), (3, 2)),
]
BINARY: list[tuple[str, Callable[..., Any], tuple[int, ...], tuple[int, ...]]] = [
    ("mul", lambda m, x, y: x * y, (2, 3), (2, 3)),
    ("div", lambda m, x, y: x / y, (4,), (4,)),
    ("matmul", lambda m, x, y: x @ y, (2, 3), (3, 1)),
]


def _receive(tensors: Sequence[ad.Tensor], device: str) -> list[np.ndarray]:
    got: list[np.ndarray] = []
    ad.Receiver(lambda *v: got.extend(v), list(tensors))
    ad.execute(device=device)
    return got


def _arrays(rng: np.random.Generator, *shapes: tuple[int, ...], low: float = -1.5) -> list[np.ndarray]:
    return [rng.uniform(low, 1.5, s).astype(np.float32) for s in shapes]


def _t(*arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.tensor(a) for a in arrays]


def _check(got: Sequence[np.ndarray], want: Sequence[torch.Tensor], names: Sequence[str]) -> None:
    assert len(got) == len(want) == len(names)
    for g, w, name in zip(got, want, names):
        np.testing.assert_allclose(g, w.detach().numpy(), err_msg=name, **TOL)


def test_transforms_of_ops(device: str) -> None:
    """vjp, jvp, jacobian and value_and_grad of every case, all in one program."""
    rng = np.random.default_rng(3)
    ours: list[ad.Tensor] = []
    theirs: list[torch.Tensor] = []
    names: list[str] = []

    def add(name: str, mine: Sequence[ad.Tensor], torch_values: Sequence[torch.Tensor]) -> None:
        ours.extend(mine)
        theirs.extend(torch_values)
        names.extend(f"{name} {k}" for k in range(len(mine)))

    cases = [(n, f, (s,)) for n, f, s in UNARY] + [(n, f, (s1, s2)) for n, f, s1, s2 in BINARY]
    for name, body, shapes in cases:
        primals = _arrays(rng, *shapes, low=0.5 if name == "div" else -1.5)
        tangents = _arrays(rng, *shapes)
        f_ad = lambda *a, body=body: body(ad, *a)
        f_t = lambda *a, body=body: body(torch, *a)
        out_t, vjp_t = tf.vjp(f_t, *_t(*primals))
        cot = rng.standard_normal(tuple(out_t.shape)).astype(np.float32)
        out, vjp_fn = ad.vjp(f_ad, *primals)
        add(f"{name} vjp", [out, *vjp_fn(ad.Tensor(cot))], [out_t, *vjp_t(torch.tensor(cot))])
        add(f"{name} jvp", list(ad.jvp(f_ad, primals, tangents)),
            list(tf.jvp(f_t, tuple(_t(*primals)), tuple(_t(*tangents)))))
        argnums = tuple(range(len(primals)))
        add(f"{name} jacobian", list(ad.jacobian(f_ad, argnums)(*primals)),
            list(tf.jacrev(f_t, argnums)(*_t(*primals))))
        weight = rng.standard_normal(tuple(out_t.shape)).astype(np.float32)
        (value, grads) = ad.value_and_grad(lambda *a: (f_ad(*a) * ad.Tensor(weight)).sum(), argnums)(*primals)
        grads_t, value_t = tf.grad_and_value(lambda *a: (f_t(*a) * torch.tensor(weight)).sum(), argnums)(
            *_t(*primals))
        add(f"{name} value_and_grad", [value, *grads], [value_t, *grads_t])
    x0, w0 = _arrays(rng, (3,), (3,))
    hess = ad.hessian(lambda x: (ad.tanh(x) * ad.Tensor(w0)).sum() * x.sum())(x0)
    add("hessian", [hess], [tf.hessian(lambda x: (torch.tanh(x) * torch.tensor(w0)).sum() * x.sum())(
        torch.tensor(x0))])
    _check(_receive(ours, device), theirs, names)


def _mlp(m: Any, x: Any, w1: Any, b1: Any, w2: Any, b2: Any) -> Any:
    return (m.tanh(x @ w1 + b1) @ w2 + b2).pow(2).mean()


def test_mlp_parameters_as_argnums(device: str) -> None:
    """value_and_grad (with aux), grad(fn) and the hessian of a small MLP's loss w.r.t. its parameters."""
    rng = np.random.default_rng(4)
    x0, w1, b1, w2, b2 = _arrays(rng, (5, 3), (3, 4), (4,), (4, 2), (2,))
    params = (w1, b1, w2, b2)

    def loss_aux(x: Any, *p: Any) -> Any:
        loss = _mlp(ad, x, *p)
        return loss, loss * 2

    (loss, aux), grads = ad.value_and_grad(loss_aux, argnums=(1, 2, 3, 4), has_aux=True)(x0, *params)
    grads_fn, aux2 = ad.grad(loss_aux, argnums=(1, 3), has_aux=True)(ad.Tensor(x0), *params)
    g_b2 = ad.grad(lambda x, *p: _mlp(ad, x, *p), 4)(x0, *params)
    hess_b1 = ad.hessian(lambda b: _mlp(ad, x0, w1, b, w2, b2))(b1)
    got = _receive([loss, aux, *grads, *grads_fn, aux2, g_b2, hess_b1], device)

    def f_t(x: torch.Tensor, *p: torch.Tensor) -> torch.Tensor:
        return _mlp(torch, x, *p)
    grads_t, loss_t = tf.grad_and_value(f_t, argnums=(1, 2, 3, 4))(*_t(x0, *params))
    hess_t = tf.hessian(lambda b: f_t(*_t(x0, w1), b, *_t(w2, b2)))(torch.tensor(b1))
    want = [loss_t, loss_t * 2, *grads_t, grads_t[0], grads_t[2], loss_t * 2, grads_t[3], hess_t]
    _check(got, want, [str(k) for k in range(len(want))])


def test_compositions(device: str) -> None:
    """grad of jvp and jvp of grad, jacobian of vjp, against torch.func's."""
    rng = np.random.default_rng(5)
    x0, v0, w0 = _arrays(rng, (4,), (4,), (4,))

    def f_ad(x: ad.Tensor) -> ad.Tensor:
        return (ad.sin(x) * x * ad.Tensor(w0)).sum()

    def f_t(x: torch.Tensor) -> torch.Tensor:
        return (torch.sin(x) * x * torch.tensor(w0)).sum()

    grad_of_jvp = ad.grad(lambda x: ad.jvp(f_ad, (x,), (v0,))[1])(x0)
    jvp_of_grad = ad.jvp(ad.grad(f_ad), (x0,), (v0,))
    jac_of_vjp = ad.jacobian(lambda x: ad.vjp(lambda y: ad.tanh(y) * y, x)[1](ad.Tensor(v0))[0])(x0)
    got = _receive([grad_of_jvp, *jvp_of_grad, jac_of_vjp], device)

    x, v = _t(x0, v0)
    want_gj = tf.grad(lambda x: tf.jvp(f_t, (x,), (v,))[1])(x)
    want_jg = tf.jvp(tf.grad(f_t), (x,), (v,))
    want_jv = tf.jacrev(lambda x: tf.vjp(lambda y: torch.tanh(y) * y, x)[1](v)[0])(x)
    _check(got, [want_gj, *want_jg, want_jv], ["grad of jvp", "jvp of grad value", "jvp of grad", "jac of vjp"])


def test_grad_in_ir_for(device: str) -> None:
    """Gradient descent with value_and_grad and a jvp inside an ir_for body."""
    rng = np.random.default_rng(6)
    target0, x0, v0 = _arrays(rng, (3,), (3,), (3,))
    x = ad.Tensor(x0)
    losses: list[np.ndarray] = []
    directional: list[np.ndarray] = []

    def loss_fn(p: ad.Tensor) -> ad.Tensor:
        return ((ad.tanh(p) - ad.Tensor(target0)) ** 2).sum()

    def step() -> None:
        loss, g = ad.value_and_grad(loss_fn)(x)
        _, dot = ad.jvp(loss_fn, (x,), (v0,))
        ad.Receiver(lambda a, b: (losses.append(a), directional.append(b)), [loss, dot])
        x.assign(x - 0.3 * g)

    ad.ir_for(4, step)
    ad.execute(device=device)

    xt = torch.tensor(x0)
    for k in range(4):
        def loss_t(p: torch.Tensor) -> torch.Tensor:
            return ((torch.tanh(p) - torch.tensor(target0)) ** 2).sum()
        g, loss = tf.grad_and_value(loss_t)(xt)
        _, dot = tf.jvp(loss_t, (xt,), (torch.tensor(v0),))
        np.testing.assert_allclose(losses[k], loss.numpy(), err_msg=f"loss {k}", **TOL)
        np.testing.assert_allclose(directional[k], dot.numpy(), err_msg=f"jvp {k}", **TOL)
        xt = xt - 0.3 * g
    np.testing.assert_allclose(x.numpy(), xt.numpy(), **TOL)


def test_errors_and_old_form() -> None:
    """A non-scalar function has no gradient (JAX's message); ad.grad(outputs, inputs) still works."""
    with pytest.raises(ad.TraceError, match=r"Gradient only defined for scalar-output functions. "
                                             r"Output had shape: \(3,\)"):
        ad.grad(lambda x: x * 2)(np.ones(3, np.float32))
    with pytest.raises(ad.TraceError, match="argnums"):
        ad.value_and_grad(lambda x: x.sum(), argnums=2)(np.ones(3, np.float32))
    x = ad.Tensor(np.ones(3, np.float32))
    (g,) = ad.grad((x * x).sum(), x)
    (g2,) = ad.grad((x * x).sum(), [x], grad_outputs=ad.ones_like((x * x).sum()))
    got = _receive([g, g2], "numpy")
    np.testing.assert_allclose(got[0], 2 * np.ones(3))
    np.testing.assert_allclose(got[1], 2 * np.ones(3))


def test_tuples_scalars_and_empty(device: str) -> None:
    """hessian with a tuple argnums (nested tuples, as torch.func), jacobian of a tuple output,
    vjp with has_aux, Python scalar primals, and tensors with no elements."""
    x0 = np.array([0.3, -0.7], np.float32)
    y0 = np.array([1.2, 0.4, 0.5], np.float32)

    def f(m: Any) -> Callable[..., Any]:
        return lambda x, y: (m.sin(x).sum() * m.tanh(y)).sum() + (x * x).sum() * y.sum()

    hess = ad.hessian(f(ad), (0, 1))(x0, y0)
    hess_t = tf.hessian(f(torch), (0, 1))(*_t(x0, y0))
    jac = ad.jacobian(lambda x: (ad.exp(x) * 2, x.sum()))(x0)
    jac_t = tf.jacrev(lambda x: (torch.exp(x) * 2, x.sum()))(torch.tensor(x0))
    grad_scalar = ad.grad(lambda a, b: a * a * b)(2.0, 3.0)
    out, vjp_fn, aux = ad.vjp(lambda x: (ad.exp(x), x.sum()), x0, has_aux=True)
    (pulled,) = vjp_fn(ad.Tensor(y0[:2]))
    empty = np.zeros((0, 3), np.float32)
    _, tangent_empty = ad.jvp(ad.exp, (empty,), (empty,))
    jac_empty = ad.jacobian(ad.exp)(empty)
    got = _receive([*hess[0], *hess[1], *jac, grad_scalar, out, aux, pulled, tangent_empty, jac_empty], device)
    x = torch.tensor(x0)
    want = [*hess_t[0], *hess_t[1], *jac_t, torch.tensor(12.0), x.exp(), x.sum(),
            x.exp() * torch.tensor(y0[:2])]
    _check(got[:len(want)], want, [str(k) for k in range(len(want))])
    assert got[-2].shape == (0, 3) and got[-1].shape == (0, 3, 0, 3)


def _table_rows() -> list[tuple[Any, list[np.ndarray], list[np.ndarray], list[np.ndarray]]]:
    """Rows of op_cases.py with float inputs and float outputs that torch differentiates:
    (case, primals, tangents, cotangents), deterministic per row."""
    import zlib
    from op_cases import CASES
    rows = []
    for case in CASES:
        if case.xfail or any(spec.dtype != "float32" for spec in case.inputs):
            continue
        rng = np.random.default_rng(zlib.crc32(case.name.encode()))
        primals = [spec.make(rng) for spec in case.inputs]
        outs = case.torch_fn(*_t(*primals))
        outs = tuple(outs) if isinstance(outs, (tuple, list)) else (outs,)
        if not all(isinstance(o, torch.Tensor) and o.is_floating_point() for o in outs):
            continue
        tangents = [rng.standard_normal(p.shape).astype(np.float32) for p in primals]
        cotangents = [rng.standard_normal(tuple(o.shape)).astype(np.float32) for o in outs]
        rows.append((case, primals, tangents, cotangents))
    return rows


@pytest.mark.parametrize("device", devices_slow_on("opencl"))
def test_vjp_jvp_on_the_op_table(device: str) -> None:
    """vjp and jvp of every float row of the op table (one program), against torch's vjp and
    its jvp by double backward (torch's reverse-mode conventions at ties and kinks, as ours)."""
    ours: list[ad.Tensor] = []
    theirs: list[torch.Tensor] = []
    names: list[str] = []
    tols: list[dict[str, float]] = []
    for case, primals, tangents, cotangents in _table_rows():
        wrap = lambda out: out if isinstance(out, ad.Tensor) else tuple(out)
        out, vjp_fn = ad.vjp(lambda *a, case=case: wrap(case.ad_fn(*a)), *primals)
        cts = [ad.Tensor(c, requires_grad=False) for c in cotangents]
        pulled = vjp_fn(cts[0] if isinstance(out, ad.Tensor) else tuple(cts))
        _, tangent_out = ad.jvp(lambda *a, case=case: wrap(case.ad_fn(*a)), primals, tangents)
        tangent_out = [tangent_out] if isinstance(tangent_out, ad.Tensor) else list(tangent_out)

        def f_t(*a: torch.Tensor, case: Any = case) -> Any:
            result = case.torch_fn(*a)
            return tuple(result) if isinstance(result, (tuple, list)) else result
        cts_t = _t(*cotangents)
        _, vjp_t = tf.vjp(f_t, *_t(*primals))
        pulled_t = vjp_t(cts_t[0] if len(cts_t) == 1 else tuple(cts_t))
        _, tangent_t = torch.autograd.functional.jvp(f_t, tuple(_t(*primals)), tuple(_t(*tangents)))
        tangent_t = [tangent_t] if isinstance(tangent_t, torch.Tensor) else list(tangent_t)
        for kind, mine, want in (("vjp", pulled, pulled_t), ("jvp", tangent_out, tangent_t)):
            ours.extend(mine)
            theirs.extend(want)
            names.extend(f"{case.name} {kind} {k}" for k in range(len(mine)))
            tols.extend([dict(atol=case.grad_atol, rtol=case.grad_rtol)] * len(mine))
    assert len(names) > 100, "the op table lost its float rows"
    got = _receive(ours, device)
    for g, w, name, tol in zip(got, theirs, names, tols):
        np.testing.assert_allclose(g, w.detach().numpy(), err_msg=name, **tol)
