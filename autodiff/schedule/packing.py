"""Operand packing: copy a large product's operand that the tiled kernel cannot read.

Where a large product reads an operand through an access the tiled kernel cannot
express (the heads of attention split out of a row, k = head * 32 + d; a row stride
other than the row length), a copy kernel first writes that operand packed. The copy is
O(m*k) against the product's O(m*n*k) in the naive per-output kernel it replaces.
"""
from __future__ import annotations

from ..proc.cost import TILED_DOT_WORK as MIN_WORK
from ..proc.index import Index, Var
from ..proc.ir import (Buffer, Const, Expr, Guard, Kernel, KernelCmd, Load, LoopCmd, ProcProgram, map_expr,
                       substitute_vars, walk_expr)
from .matmul import match_matmul, single_product


def _is_view(expr: Expr) -> bool:
    """Only loads, guards and constants: a (padded, concatenated) view of buffers, as a
    convolution's windows are, which a copy can write out plainly."""
    return all(isinstance(e, (Load, Guard, Const)) for e in walk_expr(expr))


def _variables(expr: Expr) -> set[Var]:
    """The iteration variables an operand's access expressions use."""
    out: set[Var] = set()
    for e in walk_expr(expr):
        if isinstance(e, Load):
            out.update(v for index in e.indices for v in index.variables())
        elif isinstance(e, Guard):
            out.update(v for form, _, _ in e.valid.ranges for v in form.variables())
    return out


def _packed_operand(operand: Expr, axes: tuple[Var, ...], buffer_id: int) -> tuple[Buffer, Kernel, Load]:
    """A temp buffer over `axes`, the copy kernel filling it from `operand`, and the load of it."""
    dtype = "float32"
    buffer = Buffer(buffer_id, f"packed{buffer_id}", tuple(v.extent for v in axes), dtype, "temp")
    own = tuple(Var(f"{v.name}_p{buffer_id}", v.extent) for v in axes)
    mapping = {old: Index.of(new) for old, new in zip(axes, own)}
    # read many times by the product: no load in the copy is one-to-one any more
    many = map_expr(operand, replace_load=lambda ld: Load(ld.buffer_id, ld.indices, ld.dtype, False))
    copy = Kernel(f"pack{buffer_id}", buffer, own, substitute_vars(many, mapping), "copy", ops=["pack"])
    return buffer, copy, Load(buffer_id, tuple(Index.of(v) for v in axes), dtype, False)


def pack_matmul_operands(program: ProcProgram) -> int:
    """Give the tiled kernel the operands it can read: where a large product reads an operand
    through an access the tiled kernel cannot express (the heads of attention split out of a
    row, k = head * 32 + d; a row stride other than the row length), a copy kernel first
    writes that operand packed. The copy is O(m*k) against the product's O(m*n*k) in the
    naive per-output kernel it replaces. Returns how many copies were added."""
    buffers = {b.id: b for b in program.buffers}
    next_id = max(buffers, default=0) + 1
    added = 0
    stack = [program.commands]
    while stack:
        commands = stack.pop()
        stack.extend(c.body for c in commands if isinstance(c, LoopCmd))
        at = 0
        while at < len(commands):
            cmd = commands[at]
            at += 1
            if not isinstance(cmd, KernelCmd):
                continue
            kernel = cmd.kernel
            product = single_product(kernel, _is_view)
            if product is None or match_matmul(kernel, buffers) is not None:
                continue
            (k,) = product.variables
            *batch, m, n = kernel.variables
            if m.extent * n.extent * k.extent < MIN_WORK:
                continue
            operands, roles = [], set()
            for load in product.body.args:
                used = _variables(load)
                role = m if m in used else n
                if k not in used or used - set(batch) - {role, k}:
                    break
                roles.add(role)
                # an operand using some batch axes but not all (attention's input, shared by its
                # heads) is copied for every batch index: one batch stride must step through it
                own_batch = tuple(v for v in batch if v in used)
                axes = (own_batch if len(own_batch) in (0, len(batch)) else tuple(batch)) + \
                    ((m, k) if role is m else (k, n))
                operands.append((load, axes))
            if len(operands) != 2 or roles != {m, n}:
                continue
            for packing in ([operands[0]], [operands[1]], operands):
                copies, replace = [], {}
                for load, axes in packing:
                    buffer, copy, packed = _packed_operand(load, axes, next_id + len(copies))
                    copies.append((buffer, copy))
                    replace[load] = packed
                trial = Kernel(kernel.name, kernel.out, kernel.variables,
                               map_expr(kernel.value, replace=lambda e: replace.get(e)), kernel.kind,
                               kernel.sources, kernel.ops)
                trial_buffers = {**buffers, **{b.id: b for b, _ in copies}}
                if match_matmul(trial, trial_buffers) is None:
                    continue
                for buffer, copy in copies:
                    program.buffers.append(buffer)
                    buffers[buffer.id] = buffer
                    commands.insert(at - 1, KernelCmd(copy))
                    at += 1
                    next_id += 1
                    added += 1
                kernel.value = trial.value
                break
    return added
