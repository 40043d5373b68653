"""Function transforms the JAX way: value_and_grad, grad(fn), vjp, jvp, jacobian, hessian.

Each transform calls `fn` once on traced values and differentiates the graph it built with
`grad()` (reverse mode), so the results are graph nodes like any other: they compose
(grad of jvp, jvp of grad), fuse, and work inside `ir_for` bodies.

Forward mode (`jvp`) is the transpose of reverse mode: the VJP u -> J^T u is linear in the
cotangent u, so differentiating <J^T u, t> with respect to u gives J t. u is a dummy node
whose value never matters (the result does not depend on it), which needs no JVP rule per op.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from ..ir.dtypes import FLOAT
from .autodiff import grad as grad_tensors
from .functions import arange, stack
from .tensor import Tensor, TensorLike, as_tensor, constant
from .trace import trace_error


def _primal(value: TensorLike) -> Tensor:
    """A fresh traced node of `value`, so that gradients with respect to it exist and belong
    to this transform alone (the same tensor passed twice, or to nested transforms, stays apart).
    Arrays become (non-trainable) device inputs, scalars constants."""
    tensor = as_tensor(value)
    return tensor * 1 if tensor.dtype == FLOAT else tensor


def _argnums(argnums: int | Sequence[int], nargs: int, opname: str) -> tuple[int, ...]:
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    if not nums:
        raise trace_error(opname, "argnums must name at least one argument")
    for n in nums:
        if not isinstance(n, int) or not -nargs <= n < nargs:
            raise trace_error(opname, f"argnums {argnums!r} out of range for {nargs} positional arguments")
    return tuple(n % nargs for n in nums)


def _outputs(out: Any, opname: str) -> list[Tensor]:
    outs = [out] if isinstance(out, Tensor) else list(out) if isinstance(out, (tuple, list)) else None
    if outs is None or not all(isinstance(o, Tensor) for o in outs):
        raise trace_error(opname, f"the function must return a Tensor or a tuple of Tensors, "
                                  f"got {type(out).__name__}")
    return outs


def _restructure(values: Sequence[Tensor], like: Any) -> Any:
    """Values shaped like the function's output: one Tensor, or a tuple."""
    return values[0] if isinstance(like, Tensor) else tuple(values)


def _split_aux(out: Any, has_aux: bool, opname: str) -> tuple[Any, Any]:
    if not has_aux:
        return out, None
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise trace_error(opname, "with has_aux=True the function must return a pair (output, aux)")
    return out[0], out[1]


def _call(fn: Callable[..., Any], args: Sequence[Any], nums: Sequence[int]) -> tuple[list[Any], Any]:
    """Call fn with fresh primals at the differentiated positions; return (args, output)."""
    args = list(args)
    for n in nums:
        args[n] = _primal(args[n])
    return args, fn(*args)


def value_and_grad(fn: Callable[..., Any], argnums: int | Sequence[int] = 0,
                   has_aux: bool = False) -> Callable[..., Any]:
    """fn -> a function returning (fn(*args), d fn / d args[argnums]), JAX's value_and_grad.

    With has_aux, fn returns (output, aux) and the result is ((output, aux), grads). Grads are
    one Tensor for an int argnums and a tuple for a tuple argnums.
    """
    def value_and_grad_fn(*args: Any) -> Any:
        nums = _argnums(argnums, len(args), "value_and_grad")
        args, out = _call(fn, args, nums)
        value, aux = _split_aux(out, has_aux, "value_and_grad")
        if not isinstance(value, Tensor) or value.numel() != 1:
            shape = value.shape if isinstance(value, Tensor) else type(value).__name__
            raise trace_error("value_and_grad", "Gradient only defined for scalar-output functions. "
                                                f"Output had shape: {shape}.")
        grads = grad_tensors(value, [args[n] for n in nums])
        grads = grads[0] if isinstance(argnums, int) else tuple(grads)
        return ((value, aux) if has_aux else value), grads
    return value_and_grad_fn


def grad_of(fn: Callable[..., Any], argnums: int | Sequence[int] = 0,
            has_aux: bool = False) -> Callable[..., Any]:
    """fn -> its gradient function (JAX's grad); with has_aux it returns (grads, aux)."""
    value_and_grad_fn = value_and_grad(fn, argnums, has_aux)

    def grad_fn(*args: Any) -> Any:
        value, grads = value_and_grad_fn(*args)
        return (grads, value[1]) if has_aux else grads
    return grad_fn


def vjp(fn: Callable[..., Any], *primals: TensorLike,
        has_aux: bool = False) -> tuple[Any, Callable[[Any], tuple[Tensor, ...]]]:
    """(fn(*primals), vjp_fn) where vjp_fn(cotangents) is the tuple of the cotangents pulled back
    to every primal (JAX's vjp). Cotangents are shaped like the output: a Tensor or a tuple.
    With has_aux, fn returns (output, aux) and so does the result: (output, vjp_fn, aux)."""
    args, out = _call(fn, primals, range(len(primals)))
    out, aux = _split_aux(out, has_aux, "vjp")
    outs = _outputs(out, "vjp")

    def vjp_fn(cotangents: Any) -> tuple[Tensor, ...]:
        cts = [cotangents] if isinstance(out, Tensor) else list(cotangents)
        if len(cts) != len(outs):
            raise trace_error("vjp", f"the function has {len(outs)} outputs but got {len(cts)} cotangents")
        return tuple(grad_tensors(outs, args, cts))
    return (out, vjp_fn, aux) if has_aux else (out, vjp_fn)


def jvp(fn: Callable[..., Any], primals: Sequence[TensorLike],
        tangents: Sequence[TensorLike]) -> tuple[Any, Any]:
    """(fn(*primals), J tangents): forward mode (JAX's jvp) by transposing the VJP.

    u -> vjp(u) is linear, so d<vjp(u), tangents>/du = J tangents whatever u is: u is a dummy
    node of zeros (not a constant, see below) that the result does not depend on.
    """
    primals, tangents = tuple(primals), tuple(tangents)
    if len(primals) != len(tangents):
        raise trace_error("jvp", f"{len(primals)} primals but {len(tangents)} tangents")
    out, vjp_fn = vjp(fn, *primals)
    outs = _outputs(out, "jvp")
    # DETACH keeps the dummy a node of its own: ops on a CONST fold to new CONSTs at trace time
    # (a broadcast constant is just a bigger constant), which would cut the path back to u
    dummies = [constant(0.0, o.shape).detach() for o in outs]
    pulled = vjp_fn(dummies[0] if isinstance(out, Tensor) else tuple(dummies))
    dot = None
    for g, t in zip(pulled, tangents):
        t = as_tensor(t, g).float()
        if t.shape != g.shape:
            raise trace_error("jvp", f"tangent shape {t.shape} does not match primal shape {g.shape}")
        term = (g * t).sum()
        dot = term if dot is None else dot + term
    return out, _restructure(grad_tensors(dot, dummies), out)


def _one_hot(index: int, shape: tuple[int, ...]) -> Tensor:
    """e_index of a tensor of `shape` (flat index), as graph nodes."""
    count = 1
    for d in shape:
        count *= d
    return (arange(count) == index).float().reshape(shape)


def jacobian(fn: Callable[..., Any], argnums: int | Sequence[int] = 0) -> Callable[..., Any]:
    """fn -> its Jacobian function in reverse mode (JAX's jacrev, torch.func.jacrev): one VJP
    per output element, stacked to out.shape + arg.shape. A tuple argnums gives a tuple per
    output, a tuple output a tuple of those."""
    def jacobian_fn(*args: Any) -> Any:
        nums = _argnums(argnums, len(args), "jacobian")
        args, out = _call(fn, args, nums)
        outs = _outputs(out, "jacobian")
        wrt = [args[n] for n in nums]
        per_output = []
        for k, o in enumerate(outs):
            rows: list[list[Tensor]] = [[] for _ in wrt]
            for index in range(o.numel()):
                cts = [_one_hot(index, o.shape) if j == k else constant(0.0, p.shape)
                       for j, p in enumerate(outs)]
                for row, g in zip(rows, grad_tensors(outs, wrt, cts)):
                    row.append(g)
            jacs = [_stack_rows(row, o.shape, w.shape) for row, w in zip(rows, wrt)]
            per_output.append(jacs[0] if isinstance(argnums, int) else tuple(jacs))
        return _restructure(per_output, out)
    return jacobian_fn


def _stack_rows(rows: list[Tensor], out_shape: tuple[int, ...], in_shape: tuple[int, ...]) -> Tensor:
    if not rows:   # an output with no elements
        return constant(0.0, tuple(out_shape) + tuple(in_shape))
    return stack(rows).reshape(tuple(out_shape) + tuple(in_shape))


def hessian(fn: Callable[..., Any], argnums: int | Sequence[int] = 0) -> Callable[..., Any]:
    """fn -> its Hessian function: the Jacobian of its Jacobian (torch.func.hessian), shaped
    out.shape + arg.shape + arg.shape."""
    return jacobian(jacobian(fn, argnums), argnums)
