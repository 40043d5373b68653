"""Reverse-mode AD over the traced graph: `backward()` and `grad()`.

Nodes are numbered in creation order, which is a topological order, so the
reverse sweep visits the relevant nodes by decreasing id: no recursion, and
the result is deterministic. Gradient nodes are appended to the current block.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from ..ir.ops import Op
from ..ir.graph import Node
from ..errors import TraceError
from ..ir.dtypes import FLOAT
from .program import current_program, user_source_line
from .tensor import Tensor, TensorLike, as_tensor, constant
from .trace import trace_error
from .vjp import VJP_RULES


def _ancestors(outputs: Sequence[Node]) -> list[Node]:
    """Every node the outputs depend on, by increasing id."""
    seen: dict[int, Node] = {}
    stack = list(outputs)
    while stack:
        node = stack.pop()
        if node.id in seen:
            continue
        seen[node.id] = node
        stack.extend(node.inputs)
    return [seen[i] for i in sorted(seen)]


def _gradients(outputs: Sequence[Node], seeds: Sequence[Tensor], wrt: Sequence[Node],
               opname: str, visited: list[Node] | None = None) -> dict[int, Tensor]:
    """Gradients of sum(<output, seed>) with respect to every node in `wrt`, by node id.

    Raises when it would differentiate through a node that an earlier backward() freed;
    appends every node it differentiates through to `visited`.
    """
    freed = current_program().freed_by_backward
    nodes = _ancestors(outputs)
    wrt_ids = {n.id for n in wrt}
    # forward: which nodes depend on something we differentiate with respect to
    depends: dict[int, bool] = {}
    for node in nodes:
        depends[node.id] = node.id in wrt_ids or (
            node.dtype == FLOAT and any(depends.get(i.id, False) for i in node.inputs))
    grads: dict[int, Tensor] = {}
    for out, seed in zip(outputs, seeds):
        if depends[out.id]:
            grads[out.id] = seed if out.id not in grads else grads[out.id] + seed
    for node in reversed(nodes):
        g = grads.get(node.id)
        if g is None or not node.inputs:
            continue
        needs = [depends[i.id] for i in node.inputs]
        if not any(needs):
            continue
        if node in freed:
            raise trace_error(opname, (
                f"Trying to backward through the graph a second time: node %{node.id} "
                f"({node.op.value} {list(node.shape)}, made at {node.where}) was already "
                f"differentiated by the backward() at {freed[node]}; specify retain_graph=True "
                "in that first backward() to backward through the graph a second time"))
        if visited is not None:
            visited.append(node)
        xs = [Tensor._wrap(i) for i in node.inputs]
        input_grads = VJP_RULES[node.op](node, xs, Tensor._wrap(node), g, needs)
        for inp, gi, need in zip(node.inputs, input_grads, needs):
            if gi is None or not need:
                continue
            if gi.shape != inp.shape:
                raise AssertionError(f"VJP of {node.op.value} gave {gi.shape} for input {inp.shape}")
            grads[inp.id] = gi if inp.id not in grads else grads[inp.id] + gi
    return {i: grads[i] for i in wrt_ids if i in grads}


def _seed(output: Tensor, grad: TensorLike | None, opname: str) -> Tensor:
    if output.dtype != FLOAT:
        raise trace_error(opname, f"cannot differentiate an {output.dtype} tensor")
    if grad is None:
        if output.numel() != 1:   # torch's rule: no implicit sum over the elements
            raise trace_error(opname, f"grad can be implicitly created only for scalar outputs, got "
                              f"shape {output.shape}; pass the gradient of the output (e.g. "
                              "ad.ones_like(out)) or reduce it first (out.sum())")
        return constant(1.0, output.shape)
    seed = as_tensor(grad, output).float()
    if seed.shape != output.shape:
        raise trace_error(opname, f"gradient shape {seed.shape} does not match output shape {output.shape}")
    return seed


# called with the variables whose .grad a backward() just updated (nn.parallel's gradient
# all-reduce); each entry is a callable returning the hook, or None once its owner is gone
AFTER_BACKWARD: list[Callable[[], Callable[[list], None] | None]] = []


def backward(output: Tensor, grad: TensorLike | None = None, retain_graph: bool = False) -> None:
    """Accumulate d(output)/d(p) into `p.grad` of every persistent tensor p that needs it.

    Like torch, the nodes it differentiates through are then freed for backward(): a second
    backward() through any of them raises unless this one passed `retain_graph=True`.
    Leaves (persistent tensors, Feeders, constants) are never freed, so separate losses of
    the same parameters may each call backward() and their gradients add up.
    """
    program = current_program()
    block, mark = program.block, len(program.block.nodes)
    seed = _seed(output, grad, "backward")
    reads = [n for n in _ancestors([output.node])
             if n.op is Op.READ and n.args.var.requires_grad]
    visited: list[Node] = []
    try:
        grads = _gradients([output.node], [seed], reads, "backward", visited)
    except TraceError:
        # drop the gradient nodes made before the error (and any cached READ among them)
        removed = block.nodes[mark:]
        del block.nodes[mark:]
        program.forget_reads([n.args.var.id for n in removed if n.op is Op.READ])
        raise
    if not retain_graph:
        where = user_source_line()
        for node in visited:
            program.freed_by_backward.setdefault(node, where)
    per_variable: dict[int, Tensor] = {}
    variables = {}
    for read in reads:  # a tensor read several times (before/after updates, in loops) sums up
        g = grads.get(read.id)
        if g is None:
            continue
        var = read.args.var
        variables[var.id] = var
        per_variable[var.id] = g if var.id not in per_variable else per_variable[var.id] + g
    for var_id, g in per_variable.items():
        var = variables[var_id]
        var.grad = g if var.grad is None else var.grad + g
    for ref in list(AFTER_BACKWARD):
        hook = ref()
        if hook is None:
            AFTER_BACKWARD.remove(ref)
        else:
            hook(list(variables.values()))


def grad(outputs: Tensor | Sequence[Tensor] | Callable[..., Any],
         inputs: Tensor | Sequence[Tensor] | int | Sequence[int] | None = None,
         grad_outputs: TensorLike | Sequence[TensorLike] | None = None, *,
         argnums: int | Sequence[int] = 0, has_aux: bool = False) -> Any:
    """Gradients of `outputs` with respect to `inputs` as graph nodes (like torch.autograd.grad).

    `grad(fn, argnums=0, has_aux=False)` with a function instead is JAX's grad: it returns
    the gradient function (see transforms.py).

    `.grad` is left alone. An input the outputs do not depend on gets zeros.
    Differentiating a returned gradient gives second and higher derivatives, so the graph
    is always kept (torch's create_graph=True); without `grad_outputs` every output must
    have one element, as in torch.
    """
    if callable(outputs) and not isinstance(outputs, Tensor):
        from .transforms import grad_of   # transforms builds on this module
        return grad_of(outputs, argnums if inputs is None else inputs, has_aux)
    if inputs is None:
        raise TraceError("grad: pass the inputs to differentiate with respect to")
    outs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    ins = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    if grad_outputs is None:
        grad_outputs = [None] * len(outs)
    elif not isinstance(grad_outputs, (list, tuple)):
        grad_outputs = [grad_outputs]   # one Tensor or array for one output
    if len(grad_outputs) != len(outs):
        raise TraceError(f"grad: {len(outs)} outputs but {len(grad_outputs)} grad_outputs")
    seeds = [_seed(o, g, "grad") for o, g in zip(outs, grad_outputs)]
    in_nodes = [t.node for t in ins]
    grads = _gradients([o.node for o in outs], seeds, in_nodes, "grad")
    return [grads.get(n.id, constant(0.0, n.shape)) for n in in_nodes]
