"""A kernel's structure up to the names of its buffers and variables.

The layers of a deep model lower to kernels that differ only in which buffers they read
and write and in the numbering of their variables; code generation renders such kernels
to the same text. `structure(kernel)` is a hashable key that is equal for exactly those
kernels, together with the kernel's buffers and variables in the order the key numbers
them, so that something computed for one kernel (its rendered text) can be carried over to
another with an equal key by mapping buffers and variables position by position.

The walk (`ir.post_order`) is iterative and visits each shared sub-expression once.
"""
from __future__ import annotations

from dataclasses import dataclass

from .index import DivAtom, DynAtom, Index, ModAtom, Var
from .ir import Alu, Buffer, Const, Guard, IndexValue, Kernel, Load, RandomBits, Reduce, post_order


@dataclass(frozen=True)
class Structure:
    key: tuple
    buffers: tuple[int, ...]       # buffer ids, in the order the key numbers them
    variables: tuple[Var, ...]     # every variable, in the order the key numbers them


def structure(kernel: Kernel, buffers: dict[int, Buffer]) -> Structure:
    """The key of `kernel`: its expression with buffers and variables numbered by first use,
    each buffer's shape, dtype and kind, and every constant's exact value."""
    buffer_number: dict[int, int] = {kernel.out.id: 0}
    var_number: dict[Var, int] = {}

    def var(v: Var) -> tuple:
        return ("v", var_number.setdefault(v, len(var_number)), v.extent)

    node_number: dict[int, int] = {}
    nodes: list[tuple] = []

    def form(index: Index) -> tuple:
        # DynAtom values are sub-expressions, numbered before the node that holds them
        stack = [index]
        parts: dict[int, tuple] = {}
        order: list[Index] = []
        while stack:                       # nested forms, outermost first; built innermost first
            item = stack.pop()
            order.append(item)
            stack.extend(atom.form for atom, _ in item.terms if isinstance(atom, (DivAtom, ModAtom)))
        for item in reversed(order):
            terms = []
            for atom, coef in item.terms:
                if isinstance(atom, Var):
                    terms.append((var(atom), coef))
                elif isinstance(atom, DivAtom):
                    terms.append((("/", parts[id(atom.form)], atom.divisor), coef))
                elif isinstance(atom, ModAtom):
                    terms.append((("%", parts[id(atom.form)], atom.divisor), coef))
                elif isinstance(atom, DynAtom):
                    terms.append((("d", node_number[id(atom.value)], atom.low, atom.high), coef))
                else:
                    raise TypeError(f"unknown index atom {atom!r}")
            parts[id(item)] = (item.const, tuple(terms))
        return parts[id(index)]

    for e in post_order(kernel.value):
        if isinstance(e, Load):
            number = buffer_number.setdefault(e.buffer_id, len(buffer_number))
            node = ("load", number, tuple(form(i) for i in e.indices), e.dtype, e.one_to_one)
        elif isinstance(e, Alu):
            node = ("alu", e.op, tuple(node_number[id(a)] for a in e.args), e.dtype)
        elif isinstance(e, Reduce):
            node = ("reduce", e.op, tuple(var(v) for v in e.variables), node_number[id(e.body)], e.dtype)
        elif isinstance(e, Guard):
            node = ("guard", tuple((form(f), lo, hi) for f, lo, hi in e.valid.ranges),
                    node_number[id(e.body)], node_number[id(e.otherwise)], e.dtype)
        elif isinstance(e, Const):
            node = ("const", type(e.value).__name__, repr(e.value), e.dtype)
        elif isinstance(e, IndexValue):
            node = ("index", form(e.index), e.dtype)
        elif isinstance(e, RandomBits):
            node = ("random", e.seed, form(e.counter), form(e.element), e.dtype)
        else:
            raise TypeError(f"unknown expression {type(e).__name__}")
        node_number[id(e)] = len(nodes)
        nodes.append(node)
    variables = tuple(var(v) for v in kernel.variables)
    described = tuple((buffers[b].shape, buffers[b].dtype, str(buffers[b].kind)) for b in buffer_number)
    key = (str(kernel.kind), variables, tuple(nodes), described)
    return Structure(key, tuple(buffer_number), tuple(var_number))
