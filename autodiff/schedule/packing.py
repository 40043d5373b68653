"""Operand packing: copy a large product's operand that the tiled kernel cannot read, or
reads slowly.

Where a large product reads an operand through an access the tiled kernel cannot
express (the heads of attention split out of a row, k = head * 32 + d; a row stride
other than the row length), a copy kernel first writes that operand packed. The copy is
O(m*k) against the product's O(m*n*k) in the naive per-output kernel it replaces.
Where a backend's tiled kernel is slow on a B stored transposed (n, k), as a Linear
layer's weight is, B is copied into (k, n) first (`pack_transposed_b`).
"""
from __future__ import annotations

from typing import Iterator

from ..proc.cost import TILED_DOT_WORK as MIN_WORK
from ..proc.index import Index, Var
from ..proc.ir import (Buffer, Command, Const, Expr, Guard, Kernel, KernelCmd, Load, LoopCmd, ProcProgram, Reduce,
                       map_expr, substitute_vars, walk_expr)
from .matmul import MatmulMatch, match_matmul, single_product


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


def _operand_axes(kernel: Kernel, product: Reduce) -> list[tuple[Expr, tuple[Var, ...], Var]] | None:
    """Each operand of the product with the axes a packed copy of it has (its batch axes,
    then (m, k) or (k, n)) and its role (m or n), or None where an operand is not such a
    matrix (it uses other variables, or both or neither of m and n)."""
    (k,) = product.variables
    *batch, m, n = kernel.variables
    operands, roles = [], set()
    for load in product.body.args:
        used = _variables(load)
        role = m if m in used else n
        if k not in used or used - set(batch) - {role, k}:
            return None
        roles.add(role)
        # an operand using some batch axes but not all (attention's input, shared by its
        # heads) is copied for every batch index: one batch stride must step through it
        own_batch = tuple(v for v in batch if v in used)
        axes = (own_batch if len(own_batch) in (0, len(batch)) else tuple(batch)) + \
            ((m, k) if role is m else (k, n))
        operands.append((load, axes, role))
    return operands if roles == {m, n} else None


def _with_packed(kernel: Kernel, packing: list[tuple[Expr, tuple[Var, ...], Var]], buffers: dict,
                 next_id: int) -> tuple[Kernel, list[tuple[Buffer, Kernel]], MatmulMatch | None]:
    """The kernel reading copies of the `packing` operands, the copies (buffer, kernel), and
    how the tiled kernel matches it (None: it does not)."""
    copies, replace = [], {}
    for load, axes, _ in packing:
        buffer, copy, packed = _packed_operand(load, axes, next_id + len(copies))
        copies.append((buffer, copy))
        replace[load] = packed
    trial = Kernel(kernel.name, kernel.out, kernel.variables, map_expr(kernel.value, replace=lambda e: replace.get(e)),
                   kernel.kind, kernel.sources, kernel.ops)
    return trial, copies, match_matmul(trial, {**buffers, **{b.id: b for b, _ in copies}})


def _work(kernel: Kernel, product: Reduce) -> int:
    """The product's multiply-adds per batch entry: m * n * k."""
    *_, m, n = kernel.variables
    return m.extent * n.extent * product.variables[0].extent


def _large_product_kernels(program: ProcProgram) -> Iterator[tuple[list[Command], int, Kernel, Reduce]]:
    """(its command list, its position there, the kernel, its product) of every kernel with
    one product of views of at least MIN_WORK multiply-adds; the caller may insert commands
    before the position (the walk goes on after the kernel's new position)."""
    stack = [program.commands]
    while stack:
        commands = stack.pop()
        stack.extend(c.body for c in commands if isinstance(c, LoopCmd))
        at = 0
        while at < len(commands):
            cmd = commands[at]
            if isinstance(cmd, KernelCmd):
                product = single_product(cmd.kernel, _is_view)   # None below two output axes
                if product is not None and _work(cmd.kernel, product) >= MIN_WORK:
                    yield commands, at, cmd.kernel, product
                    at = next(i for i, c in enumerate(commands) if c is cmd)
            at += 1


def _insert_copies(program: ProcProgram, buffers: dict, commands: list[Command], at: int,
                   copies: list[tuple[Buffer, Kernel]]) -> None:
    for buffer, copy in copies:
        program.buffers.append(buffer)
        buffers[buffer.id] = buffer
        commands.insert(at, KernelCmd(copy))
        at += 1


def pack_matmul_operands(program: ProcProgram) -> int:
    """Give the tiled kernel the operands it can read: where a large product reads an operand
    through an access the tiled kernel cannot express (the heads of attention split out of a
    row, k = head * 32 + d; a row stride other than the row length), a copy kernel first
    writes that operand packed. The copy is O(m*k) against the product's O(m*n*k) in the
    naive per-output kernel it replaces. Returns how many copies were added."""
    buffers = {b.id: b for b in program.buffers}
    added = 0
    for commands, at, kernel, product in _large_product_kernels(program):
        operands = _operand_axes(kernel, product)
        if operands is None or match_matmul(kernel, buffers) is not None:
            continue
        for packing in ([operands[0]], [operands[1]], operands):
            trial, copies, match = _with_packed(kernel, packing, buffers, max(buffers) + 1)
            if match is not None:
                _insert_copies(program, buffers, commands, at, copies)
                kernel.value = trial.value
                added += len(copies)
                break
    return added


PACK_B_MIN_ROWS = 32
"""Rows of A from which B is copied: the copy reads and writes B once, the product reads it
once per row, so with few rows the copy costs as much as it saves (examples/linear.py, 2
rows: a 255 x 255 weight copied in 97 us for a 20-75 us product; machine F)."""


def pack_transposed_b(program: ProcProgram) -> int:
    """Copy the B of a large product that reads it stored transposed, (n, k) as a Linear
    layer's weight is, into (k, n) first: on CPUs the tiled kernel is 1.15-2.6x faster on
    A @ B (vector outer products along B's rows) than on A @ B^T (dot products and horizontal
    sums; PoCL on machine F, a 512 x 384 x 128 product 644 -> 244 us), and the copy, a
    transposing copy in blocks (codegen/transpose.py), is O(k*n) against O(m*n*k) for m of
    at least PACK_B_MIN_ROWS. For the
    backends whose `Backend.untransposed_b` says so. Returns how many copies were added."""
    buffers = {b.id: b for b in program.buffers}
    added = 0
    for commands, at, kernel, product in _large_product_kernels(program):
        match = match_matmul(kernel, buffers)
        operands = _operand_axes(kernel, product)
        if match is None or not match.shape.b_transposed or operands is None or match.shape.m < PACK_B_MIN_ROWS:
            continue
        *_, n = kernel.variables
        trial, copies, packed = _with_packed(kernel, [o for o in operands if o[2] is n], buffers, max(buffers) + 1)
        if packed is not None and not packed.shape.b_transposed:
            _insert_copies(program, buffers, commands, at, copies)
            kernel.value = trial.value
            added += len(copies)
    return added
