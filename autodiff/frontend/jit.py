"""`ad.jit(fn)`: trace a step function once per input signature, compile it, run it per call.

Arrays (and Python numbers) passed to the function become Feeders bound at each call;
persistent tensors (parameters) are used as themselves, so an optimizer step inside the
function updates them on the device; other arguments, and those named by `static_argnums` /
`static_argnames`, are constants of the trace (a new value traces again). Outputs come back
as numpy arrays in the structure the function returned (a persistent tensor comes back as
itself). The trace goes into a block of its own in the current program, never into the
pending trace, so jit mixes with interactive reads (pending updates run first) and with
`ir_for` programs.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import TraceError
from ..ir import ops as O
from ..ir.dtypes import FLOAT, INT
from ..ir.graph import Block, Node
from ..ir.ops import Op, internal_callback
from . import entry, lazy
from .program import Program, current_program
from .tensor import Tensor
from .trace import make_leaf, make_node


@dataclass
class Lowered:
    """The traced program of one signature: `print(stage)` prints any stage of it
    ("graph", "opt", "proc", "fused", "memory", "kernels"); `program` is the Program."""
    program: Program
    signature: tuple
    outputs: Any                       # the function's output structure, Tensors at the leaves
    output_nodes: list[Node]
    feeds: list[np.ndarray | None] = field(default_factory=list)   # this call's inputs
    results: list[np.ndarray] = field(default_factory=list)
    compiled: Any = None               # compiler.CompiledProgram, once compiled

    def print(self, stage: str = "graph", **options: Any) -> str:
        return entry.printer()(stage, program=self.program, **options)


class Jitted:
    """A function compiled per input signature; call it like the function."""

    def __init__(self, fn: Callable[..., Any], static_argnums: Sequence[int] = (),
                 static_argnames: Sequence[str] = (), device: str | None = None) -> None:
        self.fn = fn
        self.static_argnums = tuple(static_argnums)
        self.static_argnames = tuple(static_argnames)
        self.device = device
        self.traces: dict[tuple, Lowered] = {}
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        program = current_program()
        if program.block is not program.root:
            raise TraceError(f"jit: {getattr(self.fn, '__name__', 'the function')} was called while an ir_for "
                             "body (or another jit function) is traced; call the plain function there")
        args, kwargs = _arrays(args, kwargs, self._static)
        lowered = self._lower(args, kwargs)
        compiled = self._compiled(lowered)
        if program.eager:
            lazy.flush_pending(program)   # updates traced before the call run before it
        lazy.wait(program)
        lowered.feeds[:] = [a for a in _flatten(args, kwargs, self._static) if isinstance(a, np.ndarray)]
        lowered.results[:] = []
        compiled.run()
        lazy.note_updates(program, [n.args.var.id for n in lowered.program.root.walk() if n.op is Op.ASSIGN])
        results = iter(r.reshape(n.shape) for r, n in zip(lowered.results, lowered.output_nodes))
        return _unflatten(lowered.outputs, results)

    def lower(self, *args: Any, **kwargs: Any) -> Lowered:
        """The traced program for these arguments (traced on first use of the signature)."""
        return self._lower(*_arrays(args, kwargs, self._static))

    def _lower(self, args: tuple, kwargs: dict) -> Lowered:
        device = self.device or entry.compiler().default_device()
        signature = (device, _signature(args, kwargs, self._static))
        if signature not in self.traces:
            self.traces[signature] = _trace(self.fn, args, kwargs, self._static, signature)
        return self.traces[signature]

    def compile(self, *args: Any, **kwargs: Any) -> Any:
        """The compiled program (compiler.CompiledProgram: `kernels`, `proc`, `plan`, `graph`)."""
        return self._compiled(self.lower(*args, **kwargs))

    def _compiled(self, lowered: Lowered) -> Any:
        if lowered.compiled is None:
            lowered.compiled = entry.compiler().compile_program(lowered.program, lowered.signature[0])
        return lowered.compiled

    def _static(self, position: int | str) -> bool:
        return position in self.static_argnums or position in self.static_argnames


def jit(fn: Callable[..., Any] | None = None, *, static_argnums: int | Sequence[int] = (),
        static_argnames: str | Sequence[str] = (), device: str | None = None) -> Any:
    """Compile `fn` once per input signature (shapes, dtypes, static arguments); as a
    decorator with or without arguments. See the module docstring."""
    nums = (static_argnums,) if isinstance(static_argnums, int) else tuple(static_argnums)
    names = (static_argnames,) if isinstance(static_argnames, str) else tuple(static_argnames)
    if fn is None:
        return lambda f: Jitted(f, nums, names, device)
    return Jitted(fn, nums, names, device)


# --- arguments -------------------------------------------------------------------------

def _arrays(args: tuple, kwargs: dict, static: Callable[[int | str], bool]) -> tuple[tuple, dict]:
    """Arguments with their array leaves as float32/int32 arrays (intermediates read)."""
    def convert(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value if value.is_persistent else value.numpy()
        if isinstance(value, (float, np.floating)):
            return np.asarray(value, np.float32)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return np.asarray(value, np.int32)
        if isinstance(value, np.ndarray):
            return np.ascontiguousarray(value, np.int32 if value.dtype.kind in "iub" else np.float32)
        if isinstance(value, (list, tuple)):
            return type(value)(convert(v) for v in value)
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value
    args = tuple(a if static(i) else convert(a) for i, a in enumerate(args))
    kwargs = {k: v if static(k) else convert(v) for k, v in sorted(kwargs.items())}
    return args, kwargs


def _flatten(args: tuple, kwargs: dict, static: Callable[[int | str], bool]) -> list[Any]:
    """The leaves of the non-static arguments, in order."""
    out: list[Any] = []

    def walk(value: Any) -> None:
        if isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            for k in sorted(value):
                walk(value[k])
        else:
            out.append(value)
    for i, a in enumerate(args):
        if not static(i):
            walk(a)
    for k in sorted(kwargs):
        if not static(k):
            walk(kwargs[k])
    return out


def _signature(args: tuple, kwargs: dict, static: Callable[[int | str], bool]) -> tuple:
    def leaf(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return ("array", value.shape, str(value.dtype))
        if isinstance(value, Tensor):
            return ("tensor", id(value._var))
        if isinstance(value, (list, tuple)):
            return (type(value).__name__, tuple(leaf(v) for v in value))
        if isinstance(value, dict):
            return ("dict", tuple((k, leaf(value[k])) for k in sorted(value)))
        return ("static", _hashable(value))
    parts = [("static", _hashable(a)) if static(i) else leaf(a) for i, a in enumerate(args)]
    parts += [(k, ("static", _hashable(v)) if static(k) else leaf(v)) for k, v in kwargs.items()]
    return tuple(parts)


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        raise TraceError(f"jit: a static argument must be hashable, got {type(value).__name__}") from None
    return (type(value).__name__, value)


# --- tracing -----------------------------------------------------------------------------

def _trace(fn: Callable[..., Any], args: tuple, kwargs: dict, static: Callable[[int | str], bool],
           signature: tuple) -> Lowered:
    program = current_program()
    block = Block()   # a root of its own: nothing pending can leak in, nothing of it leaks out
    shell = Program()
    shell.root, shell.internal = block, True
    lowered = Lowered(shell, signature, None, [])
    grads_before = {id(v): v.grad for v in program.variables}
    program.push_block(block)
    try:
        counter = iter(range(1 << 30))
        traced_args = tuple(a if static(i) else _inputs(a, lowered, counter) for i, a in enumerate(args))
        traced_kwargs = {k: v if static(k) else _inputs(v, lowered, counter) for k, v in kwargs.items()}
        out = fn(*traced_args, **traced_kwargs)
        lowered.outputs = out
        leaves = [t for t in _leaves(out) if isinstance(t, Tensor) and not t.is_persistent]
        lowered.output_nodes = [t.node for t in leaves]
        if leaves:
            make_node(Op.RECEIVER, lowered.output_nodes,
                      O.ReceiverArgs(internal_callback(lambda *a: lowered.results.extend(np.array(x) for x in a)),
                                     "outputs", 1),
                      "jit")
        _check_grads(program, block, grads_before)
    except BaseException:
        for var in program.variables:   # a failed trace leaves no .grad pointing into it
            if id(var) in grads_before:
                var.grad = grads_before[id(var)]
        raise
    finally:
        program.pop_block()
        program.forget_block_reads(block)
    shell.variables = list({id(n.args.var): n.args.var for n in block.walk()
                            if n.op in (Op.READ, Op.ASSIGN)}.values())
    return lowered


def _inputs(value: Any, lowered: Lowered, counter: Any) -> Any:
    """Feeders at the array leaves of an argument (bound to the call's arrays)."""
    if isinstance(value, np.ndarray):
        index = next(counter)
        dtype = INT if value.dtype.kind in "iu" else FLOAT
        node = make_leaf(Op.FEEDER, value.shape, dtype,
                         O.FeederArgs(internal_callback(lambda: lowered.feeds[index]), f"arg{index}"))
        return Tensor._wrap(node)
    if isinstance(value, (list, tuple)):
        return type(value)(_inputs(v, lowered, counter) for v in value)
    if isinstance(value, dict):
        return {k: _inputs(value[k], lowered, counter) for k in sorted(value)}
    return value


def _check_grads(program: Program, block: Block, before: dict[int, Any]) -> None:
    for var in program.variables:
        grad = var.grad
        if grad is not None and grad is not before.get(id(var)) and block.encloses(grad.node.block):
            var.grad = before.get(id(var))
            raise TraceError(f"jit: backward() inside the function left '{var.name}'.grad set to a value "
                             "of the function's trace, which has no value outside it; call "
                             "opt.zero_grad() (or set .grad = None) inside the function, or return the "
                             "gradients")


def _leaves(out: Any) -> list[Any]:
    if isinstance(out, (list, tuple)):
        return [x for v in out for x in _leaves(v)]
    if isinstance(out, dict):
        return [x for k in out for x in _leaves(out[k])]
    return [out]


def _unflatten(out: Any, results: Any) -> Any:
    """The function's output with intermediate tensors replaced by their arrays."""
    if isinstance(out, Tensor):
        return out if out.is_persistent else next(results)
    if isinstance(out, (list, tuple)):
        return type(out)(_unflatten(v, results) for v in out)
    if isinstance(out, dict):
        return {k: _unflatten(out[k], results) for k in out}
    return out
