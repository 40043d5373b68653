"""Where autodiff follows torch's semantics rather than Python's or numpy's, against torch.

Elementwise == and !=, bool() of a traced tensor, backward() twice and on non-scalars,
relu(nan), int32 type promotion, tracing in several threads, forms torch accepts
(0-d transpose/argmax, dropout p=1, conv2d padding="same", unbatched conv input, squeeze
of several dims, narrow with a tensor start, list and tensor indices, softmax over an
empty axis) and the warning for a Receiver whose `every` exceeds its loop.
"""
from __future__ import annotations

import threading
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import pytest
import torch

import autodiff as ad
import autodiff.nn.functional as F
from autodiff import nn

NAN, INF = float("nan"), float("inf")


# --- helpers ---------------------------------------------------------------------------------

def _receive(tensors: Sequence[ad.Tensor], device: str) -> list[np.ndarray]:
    """The values of `tensors` after one execution of the current program on `device`."""
    got: list[np.ndarray] = []
    ad.Receiver(lambda *values: got.extend(np.array(v) for v in values), list(tensors), name="values")
    ad.execute(device=device)
    assert len(got) == len(tensors)
    return got


def _torch_input(array: np.ndarray) -> torch.Tensor:
    if array.dtype.kind == "f":
        return torch.tensor(array, requires_grad=True)
    return torch.tensor(array)   # int32 stays int32: promotion is part of what is compared


def _expected_dtype(want: torch.Tensor) -> str | None:
    """Our dtype for torch's: integer types are int32, floats float32; a bool (a comparison)
    is 0/1 in the operands' promoted dtype, so only its values are compared."""
    if want.dtype == torch.bool:
        return None
    return "float32" if want.is_floating_point() else "int32"


def compare_with_torch(device: str, arrays: Sequence[np.ndarray], ad_fn: Callable[..., Any],
                       torch_fn: Callable[..., Any] | None = None, atol: float = 1e-5,
                       rtol: float = 1e-5) -> None:
    """Outputs (values and dtypes), and the gradients of sum(out * weights) with respect to
    every float input, of `ad_fn` on `device` against `torch_fn` (default: `ad_fn`)."""
    torch_fn = torch_fn or ad_fn
    rng = np.random.default_rng(7)
    t_inputs = [_torch_input(a) for a in arrays]
    t_outs = torch_fn(*t_inputs)
    t_outs = list(t_outs) if isinstance(t_outs, (tuple, list)) else [t_outs]
    weights = [rng.standard_normal(tuple(o.shape)).astype(np.float32) for o in t_outs]
    t_terms = [(o * torch.from_numpy(w)).sum() for o, w in zip(t_outs, weights)
               if o.is_floating_point() and o.requires_grad]
    if t_terms:
        sum(t_terms).backward()

    inputs = [ad.Tensor(a, name=f"in{k}") for k, a in enumerate(arrays)]
    outs = ad_fn(*inputs)
    outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
    assert len(outs) == len(t_outs)
    terms = [(o * ad.Tensor(w, requires_grad=False)).sum() for o, w, t in zip(outs, weights, t_outs)
             if o.dtype == "float32" and t.requires_grad]
    if terms:
        loss = terms[0]
        for term in terms[1:]:
            loss = loss + term
        loss.backward()
    float_inputs = [k for k, a in enumerate(arrays) if a.dtype.kind == "f"]
    grads = [inputs[k].grad if inputs[k].grad is not None else ad.zeros_like(inputs[k])
             for k in float_inputs]
    got = _receive(outs + grads, device)

    for k, (value, out, want) in enumerate(zip(got, outs, t_outs)):
        want_dtype = _expected_dtype(want)
        if want_dtype is not None:
            assert out.dtype == want_dtype, f"output {k}: {out.dtype}, torch {want.dtype}"
        assert value.shape == tuple(want.shape), f"output {k}: shape {value.shape}, torch {tuple(want.shape)}"
        np.testing.assert_allclose(value.astype(np.float64), want.detach().double().numpy(),
                                   atol=atol, rtol=rtol, err_msg=f"output {k}")
    for k, value in zip(float_inputs, got[len(outs):]):
        t_grad = t_inputs[k].grad
        want = t_grad.numpy() if t_grad is not None else np.zeros_like(arrays[k])
        np.testing.assert_allclose(value, want, atol=atol, rtol=rtol, err_msg=f"gradient of input {k}")


def _floats(*values: float) -> np.ndarray:
    return np.array(values, np.float32)


SPECIALS = _floats(NAN, INF, -INF, 0.0, -0.0, 2.5, -3.0, 1e-30)


# --- 1. == and != are elementwise; bool() of a traced tensor is an error ------------------------

def test_eq_and_ne_are_elementwise(device: str) -> None:
    a = _floats(1.0, 2.0, NAN, 3.0)
    b = _floats(1.0, 0.0, NAN, 3.0)
    compare_with_torch(device, [a, b], lambda x, y: [x == y, x != y, x == 2.0, 2.0 != x, y == x])


def test_eq_on_int_tensors_and_arrays(device: str) -> None:
    i = np.array([[1, 2], [3, 4]], np.int32)
    compare_with_torch(device, [i], lambda t: [t == 2, t != np.array([1, 0], np.int32), t == 2.5],
                       lambda t: [t == 2, t != torch.tensor([1, 0], dtype=torch.int32), t == 2.5])


def test_hash_stays_identity() -> None:
    x = ad.Tensor(_floats(1.0, 2.0))
    y = ad.Tensor(_floats(1.0, 2.0))
    assert {x: "x", y: "y"}[x] == "x"          # dict keys and sets by identity
    assert x in {x} and y not in {x}
    assert x in [x]                             # list search finds the same object first
    assert (x == None) is False and (x != "x") is True   # noqa: E711 - not tensor-like: identity
    with pytest.raises(ad.TraceError, match="`is`"):
        x in [y]   # noqa: B015 - compares elementwise, then needs a bool


def test_bool_of_a_traced_tensor_is_a_trace_error() -> None:
    x = ad.Tensor(_floats(1.0, -1.0))
    with pytest.raises(ad.TraceError, match=r"ad\.where.*test_torch_semantics\.py"):
        if x > 0:
            pass
    with pytest.raises(ad.TraceError, match="bool"):
        bool(x.sum() == 0)


def test_where_needs_a_tensor_condition(device: str) -> None:
    x = ad.Tensor(_floats(1.0, -1.0))
    for condition in (True, 1, 0.5):
        with pytest.raises(ad.TraceError, match="where: the condition is a Python"):
            ad.where(condition, x, 0.0)
    # a scalar branch takes the other branch's dtype, not the condition's
    c = ad.Tensor(_floats(1.0, 0.0))
    out = ad.where(c, ad.Tensor(np.array([3, 4], np.int32)), 0)
    assert out.dtype == "int32"
    (value,) = _receive([out], device)
    np.testing.assert_array_equal(value, [3, 0])


# --- 2. backward(): twice through one graph, and on non-scalars ---------------------------------

def test_backward_twice_through_one_graph_is_an_error() -> None:
    w = ad.Tensor(_floats(1.0, 2.0), name="w")
    loss = (w * w).sum()
    loss.backward()
    nodes = len(ad.current_program().root.nodes)
    with pytest.raises(ad.TraceError, match="second time.*retain_graph=True"):
        loss.backward()
    assert len(ad.current_program().root.nodes) == nodes, "the failed backward left nodes behind"
    trunk = w * 3
    head = trunk.exp().sum()
    head.backward()
    with pytest.raises(ad.TraceError, match="second time"):
        (trunk * 2).sum().backward()    # shares the freed trunk, as torch's second backward would


def test_backward_twice_with_retain_graph_matches_torch(device: str) -> None:
    def run(w, retain):
        trunk = w * w
        first = (trunk * 3).sum()
        second = trunk.sin().sum()
        first.backward(retain_graph=retain)
        second.backward()

    w0 = _floats(0.5, -1.5, 2.0)
    tw = torch.tensor(w0, requires_grad=True)
    run(tw, True)
    w = ad.Tensor(w0, name="w")
    run(w, True)
    (got,) = _receive([w.grad], device)
    np.testing.assert_allclose(got, tw.grad.numpy(), rtol=1e-5)


def test_separate_losses_of_the_same_parameters_accumulate(device: str) -> None:
    """Two graphs that share only leaves are not "the same graph": both backward() calls work."""
    w0 = _floats(0.5, -1.5)
    tw = torch.tensor(w0, requires_grad=True)
    (tw * 3).sum().backward()
    (tw * tw).sum().backward()
    w = ad.Tensor(w0, name="w")
    (w * 3).sum().backward()
    (w * w).sum().backward()
    (got,) = _receive([w.grad], device)
    np.testing.assert_allclose(got, tw.grad.numpy())


def test_backward_of_a_non_scalar_needs_a_gradient(device: str) -> None:
    w = ad.Tensor(_floats(1.0, 2.0), name="w")
    with pytest.raises(ad.TraceError, match=r"grad can be implicitly created only for scalar outputs.*\(2,\)"):
        (w * 2).backward()
    with pytest.raises(ad.TraceError, match="only for scalar outputs"):
        ad.grad(w * 2, w)
    with pytest.raises(RuntimeError, match="only for scalar outputs"):
        (torch.ones(2, requires_grad=True) * 2).backward()
    (w * 2)[:1].backward()                     # one element: allowed, as in torch
    (w * w).backward(ad.Tensor(_floats(1.0, 10.0), requires_grad=False))
    (got,) = _receive([w.grad], device)
    np.testing.assert_allclose(got, [2.0 + 2.0, 40.0])


# --- 3. relu(nan) is nan -------------------------------------------------------------------------

def test_relu_of_special_values_matches_torch(device: str) -> None:
    compare_with_torch(device, [SPECIALS], lambda x: [F.relu(x), ad.relu(x), nn.ReLU()(x)],
                       lambda x: [torch.relu(x), torch.relu(x), torch.nn.ReLU()(x)])


def test_ordered_comparisons_with_nan_match_torch(device: str) -> None:
    compare_with_torch(device, [SPECIALS], lambda x: [x <= 0, x >= 0, x < 0, x > 0, x.le(2.5), x.ge(-3.0)])


def test_relu_nan_in_the_generated_opencl() -> None:
    """relu fused behind a matmul epilogue keeps nan in the OpenCL kernels too."""
    from autodiff.backends.opencl import opencl_available
    if not opencl_available():
        pytest.skip("no OpenCL device")
    x = np.ones((4, 3), np.float32)
    x[0, 0] = NAN
    w = np.ones((3, 2), np.float32)
    (got,) = _receive([(ad.Tensor(x) @ ad.Tensor(w)).relu()], "opencl")
    assert np.isnan(got[0]).all() and (got[1:] == 3.0).all()


# --- 4. type promotion of int32 tensors ------------------------------------------------------------

INTS = np.array([[-3, -1, 0], [1, 2, 5]], np.int32)


def test_int_promotion_matches_torch(device: str) -> None:
    """int32 stays int32 where torch gives an integer type (its int64 sums included);
    float32 where torch gives a float; comparisons are 0/1 (torch: bool)."""
    compare_with_torch(device, [INTS, INTS[::-1].copy()], lambda i, j: [
        i + j, i - 2, 3 * i, i * 2.5, i + 0.5, i / 2, i / j.maximum(1), -i, i.abs(), i.relu(),
        i ** 2, i.pow(3), i ** 0, i ** 2.0, i.float() ** 2,
        i.sum(), i.sum(1), i.max(), i.min(0), i.argmax(), i.maximum(j), i.minimum(1.5),
        i < j, i == 2, i > 0.5, i.exp(), i.sqrt(), i.sigmoid(), i.square(), i.int(),
    ], lambda i, j: [
        i + j, i - 2, 3 * i, i * 2.5, i + 0.5, i / 2, i / j.clamp(min=1), -i, i.abs(), torch.relu(i),
        i ** 2, i.pow(3), i ** 0, i ** 2.0, i.float() ** 2,
        i.sum(), i.sum(1), i.max(), i.amin(0), i.argmax(), torch.maximum(i, j),
        torch.minimum(i, torch.tensor(1.5)),
        i < j, i == 2, i > 0.5, i.exp(), i.sqrt(), i.sigmoid(), i.square(), i.int(),
    ], atol=1e-5, rtol=1e-5)


def test_int_power_and_in_place_errors() -> None:
    i = ad.Tensor(INTS, name="i")
    with pytest.raises(ad.TraceError, match="pow: Integers to negative integer powers"):
        i ** -1
    with pytest.raises(ad.TraceError, match=r"pow: int32 \(2, 3\) \*\* an int32 tensor"):
        i ** i
    with pytest.raises(ad.TraceError, match="pow: 2 \\*\\* an int32 tensor"):
        2 ** i
    with pytest.raises(ad.TraceError, match="add_: the result is float32"):
        i.add_(0.5)       # torch: result type Float can't be cast to the desired output type Int
    with pytest.raises(ad.TraceError, match=r"\+=: the result is float32"):
        i += 0.5
    i += 1                # int stays int
    i.assign(i * 0.5)     # assign (torch's copy_) converts, truncating


def test_mean_and_sum_over_an_empty_axis(device: str) -> None:
    empty = np.zeros((3, 0), np.float32)
    compare_with_torch(device, [empty], lambda x: [x.sum(-1), x.mean(-1), x @ np.ones((0, 2), np.float32)],
                       lambda x: [x.sum(-1), x.mean(-1), x @ torch.ones(0, 2)])
    with pytest.raises(ad.TraceError, match="max: cannot reduce over an empty dim"):
        ad.Tensor(empty).max(-1)


# --- 5. tracing in several threads at once --------------------------------------------------------

def test_threads_trace_and_execute_their_own_programs() -> None:
    threads_count = 4
    barrier = threading.Barrier(threads_count, timeout=60)
    results: dict[int, tuple] = {}
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            losses: list[float] = []
            with ad.Program() as program:
                barrier.wait()    # every thread is inside its `with` before any traces
                w = ad.Tensor(np.full(3, float(k), np.float32), name="w")

                def body() -> None:
                    loss = (w * w).sum()
                    loss.backward()
                    w.assign(w - 0.25 * w.grad)
                    w.grad = None
                    ad.Receiver(lambda v: losses.append(float(v)), [loss])

                ad.ir_for(3, body)
                barrier.wait()    # every program is traced before any executes
                program.execute(device="numpy")
            # outside the `with`: this thread's own default program
            doubled: list[np.ndarray] = []
            ad.Receiver(lambda v: doubled.append(v), [ad.Tensor(np.array([k], np.float32)) * 2])
            ad.execute(device="numpy")
            results[k] = (losses, w.numpy(), doubled, len(ad.current_program().variables))
        except BaseException as err:   # reported by the main thread
            errors.append(err)

    main_default = ad.current_program()
    threads = [threading.Thread(target=work, args=(k,)) for k in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for k in range(threads_count):
        losses, w, doubled, variables = results[k]
        np.testing.assert_allclose(losses, [3 * k * k, 3 * k * k / 4, 3 * k * k / 16])
        np.testing.assert_allclose(w, np.full(3, k / 8))
        np.testing.assert_allclose(doubled, [[2.0 * k]])
        assert variables == 1          # the thread's default program holds only its own tensor
    assert ad.current_program() is main_default and not main_default.variables


# --- 6. forms torch accepts -------------------------------------------------------------------------

def test_zero_dim_transpose_and_argmax(device: str) -> None:
    scalar = np.array(3.5, np.float32)
    compare_with_torch(device, [scalar], lambda s: [s.transpose(0, 0), s.transpose(-1, 0) * 2,
                                                    s.argmax(dim=-1), s.argmax(0, keepdim=True)])


def test_dropout_with_p_one_gives_zeros(device: str) -> None:
    x = _floats(1.0, -2.0, NAN, INF, 0.0)
    compare_with_torch(device, [x], lambda t: [F.dropout(t, p=1.0), nn.Dropout(1.0)(t)],
                       lambda t: [torch.nn.functional.dropout(t, p=1.0), torch.nn.Dropout(1.0)(t)])
    with pytest.raises(ad.TraceError, match="dropout probability has to be between 0 and 1"):
        F.dropout(ad.Tensor(x), p=1.5)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_conv2d_string_padding(device: str, padding: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 2, 3)).astype(np.float32)   # an even kernel height: uneven "same" pads
    b = rng.standard_normal(4).astype(np.float32)
    compare_with_torch(device, [x, w, b], lambda x, w, b: F.conv2d(x, w, b, padding=padding, dilation=(2, 1)),
                       lambda x, w, b: torch.nn.functional.conv2d(x, w, b, padding=padding, dilation=(2, 1)),
                       atol=1e-4, rtol=1e-4)


def test_conv2d_module_same_padding_and_strided_same_is_an_error() -> None:
    conv = nn.Conv2d(3, 4, 3, padding="same")
    assert conv(ad.Tensor(np.zeros((1, 3, 5, 5), np.float32))).shape == (1, 4, 5, 5)
    with pytest.raises(ad.TraceError, match="padding='same' is not supported for strided"):
        F.conv2d(ad.Tensor(np.zeros((1, 3, 5, 5), np.float32)), conv.weight, padding="same", stride=2)


def test_unbatched_conv_and_pooling(device: str) -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    compare_with_torch(device, [x, w], lambda x, w: [F.conv2d(x, w, padding=1), F.max_pool2d(x, 2),
                                                     F.avg_pool2d(x, 3, stride=2, padding=1)],
                       lambda x, w: [torch.nn.functional.conv2d(x, w, padding=1),
                                     torch.nn.functional.max_pool2d(x, 2),
                                     torch.nn.functional.avg_pool2d(x, 3, stride=2, padding=1)],
                       atol=1e-4, rtol=1e-4)
    with pytest.raises(ad.TraceError, match=r"conv2d: expects \(N, C, H, W\) or unbatched"):
        F.conv2d(ad.Tensor(np.zeros((6, 6), np.float32)), ad.Tensor(w))


def test_squeeze_with_a_tuple_of_dims(device: str) -> None:
    x = np.arange(6, dtype=np.float32).reshape(1, 3, 1, 2)
    compare_with_torch(device, [x], lambda t: [t.squeeze((0, 2)), t.squeeze((0, 1)), t.squeeze((-1, -2)),
                                               t.squeeze(0), t.squeeze()])


def test_narrow_with_a_tensor_start(device: str) -> None:
    x = np.arange(20, dtype=np.float32).reshape(4, 5)
    compare_with_torch(device, [x], lambda t: [t.narrow(1, ad.Tensor(np.array(1, np.int32)), 3),
                                               t.narrow(0, ad.Tensor(np.array(-2, np.int32)), 2),
                                               t.narrow(0, 1, 2), t.narrow(-1, -3, 3)],
                       lambda t: [t.narrow(1, torch.tensor(1), 3), t.narrow(0, torch.tensor(-2), 2),
                                  t.narrow(0, 1, 2), t.narrow(-1, -3, 3)])


def test_narrow_start_is_read_when_the_program_runs(device: str) -> None:
    """A persistent start changed on the device moves the window (it is not a trace-time int)."""
    x = ad.Tensor(np.arange(6, dtype=np.float32))
    start = ad.Tensor(np.array(0, np.int32), name="start")
    seen: list[np.ndarray] = []

    def body() -> None:
        ad.Receiver(lambda v: seen.append(v.copy()), [x.narrow(0, start, 2)])
        start.add_(2)

    ad.ir_for(3, body)
    ad.execute(device=device)
    np.testing.assert_array_equal(seen, [[0, 1], [2, 3], [4, 5]])
    with pytest.raises(ad.TraceError, match="narrow: start 5 with length 2 is out of range"):
        x.narrow(0, 5, 2)


def test_list_and_tensor_indices_match_torch(device: str) -> None:
    x = np.arange(24, dtype=np.float32).reshape(4, 6) * 0.5
    idx = np.array([[0, 3], [-1, 1]], np.int32)

    def index(t, tensor_index):
        return [t[[0, 2]], t[[-1, 0, 0]], t[tensor_index], t[:, [1, -2]], t[1, [0, 5]],
                t[1:, np.array([2, 2])], t[..., [0]], t[tensor_index[0]][:, 1:4]]

    compare_with_torch(device, [x, idx], index, lambda t, i: index(t, i.long()))


def test_tensor_index_of_a_one_dim_and_a_three_dim_tensor(device: str) -> None:
    v = np.linspace(-1, 1, 5).astype(np.float32)
    cube = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    idx = np.array([4, 0, 4], np.int32)
    rows = np.array([[1], [0]], np.int32)
    compare_with_torch(device, [v, cube, idx, rows], lambda v, c, i, r: [v[i], c[:, i[1:] - 2], c[r]],
                       lambda v, c, i, r: [v[i.long()], c[:, i[1:].long() - 2], c[r.long()]])


def test_unsupported_indices_are_clear_errors() -> None:
    x = ad.Tensor(np.zeros((3, 4), np.float32))
    with pytest.raises(ad.TraceError, match="only one list or tensor index"):
        x[[0, 1], [0, 1]]
    with pytest.raises(ad.TraceError, match="boolean mask"):
        x[[True, False, True]]
    with pytest.raises(ad.TraceError, match="tensor indices must be int32.*boolean mask"):
        x[x > 0]
    with pytest.raises(ad.TraceError, match=r"index \[0, 3\] is out of range for axis 0 of size 3"):
        x[[0, 3]]


def test_softmax_over_an_empty_axis(device: str) -> None:
    x = np.zeros((3, 0), np.float32)
    compare_with_torch(device, [x], lambda t: [F.softmax(t, -1), F.log_softmax(t, dim=1), F.softmax(t, 0)],
                       lambda t: [torch.softmax(t, -1), torch.log_softmax(t, 1), torch.softmax(t, 0)])


# --- 7. a Receiver whose every exceeds its loop -------------------------------------------------------

def test_receiver_every_past_the_loop_count_warns() -> None:
    x = ad.Tensor(_floats(1.0))
    with pytest.warns(UserWarning, match=r"Receiver 'rare' \(at .*test_torch_semantics\.py:\d+\) has "
                                         r"every=50 but its loop runs 10 iterations"):
        ad.ir_for(10, lambda: ad.Receiver(lambda v: None, [x * 1], name="rare", every=50))
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # every == count is called once: no warning
        ad.ir_for(10, lambda: ad.Receiver(lambda v: None, [x * 1], name="last", every=10))
