"""Kernels that are a matrix product (plus an epilogue) use the tiled matmul generator.

A kernel matches when its value holds exactly one `sum[k](A[..] * B[..])` whose
operands are plain loads at affine offsets: A row-major (m, k) or transposed (k, m),
B row-major (k, n) or transposed (n, k), rows any distance apart (a lead), the batch
axes flattening into one stride (or 0 for a broadcast) or into two groups (batch and
head), the output packed (batch, m, n). Everything around the product (bias,
activation, `p - lr * grad`) becomes the epilogue: a small helper function called
with the accumulator, rendered by the same C renderer as every other kernel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..fusion.fuse import TILED_DOT_WORK as MIN_WORK   # smaller products gain nothing from tiling
from ..graph.ops import Op
from ..proc.index import Index, Var, flat_index
from ..proc.ir import (Alu, Buffer, Kernel, KernelCmd, Load, LoopCmd, ProcProgram, Reduce, map_expr, replace_expr,
                       substitute_vars, walk_expr)
from .matmul_source import DOT, Epilogue, MatmulShape, choose_tiling, render_matmul
from .renderer import ACCUMULATOR, CStyleLanguage, KernelRenderer, Param, RenderedKernel



@dataclass
class MatmulMatch:
    product: Reduce
    a: Load
    b: Load
    shape: MatmulShape
    a_offset: int
    b_offset: int
    folded_rows: int = 0     # when > 0, the batch was folded into m: the original m extent


def _linear(form: Index, allowed: tuple[Var, ...]) -> dict[Var, int] | None:
    """Coefficients of a purely linear form in `allowed` variables (None: not such a form)."""
    coefs: dict[Var, int] = {}
    for atom, coef in form.terms:
        if not isinstance(atom, Var) or atom not in allowed:
            return None
        coefs[atom] = coef
    return coefs


def _batch_stride(coefs: dict[Var, int], batch: tuple[Var, ...]) -> int | None:
    """One stride for the flattened batch index, or None when the batch axes do not flatten."""
    stride, expected = None, None
    for var in reversed(batch):
        c = coefs.get(var, 0)
        if stride is None:
            stride, expected = c, c * var.extent
            continue
        if c != expected:
            return None
        expected = c * var.extent
    return stride or 0


def match_matmul(kernel: Kernel, buffers: dict) -> MatmulMatch | None:
    product = _single_product(kernel)
    if product is None:
        return None
    (k,) = product.variables
    a, b = product.body.args
    *batch, m, n = kernel.variables
    batch = tuple(batch)
    if m.extent < 2 or n.extent < 2 or k.extent < 2 or m.extent * n.extent * k.extent < MIN_WORK:
        return None
    fa = flat_index(a.indices, buffers[a.buffer_id].shape)
    fb = flat_index(b.indices, buffers[b.buffer_id].shape)
    ca, cb = _linear(fa, batch + (m, k)), _linear(fb, batch + (k, n))
    if ca is None or cb is None:
        a, b, fa, fb = b, a, fb, fa       # the product may list its operands the other way round
        ca, cb = _linear(fa, batch + (m, k)), _linear(fb, batch + (k, n))
        if ca is None or cb is None:
            return None
    M, N, K = m.extent, n.extent, k.extent
    # each operand contiguous along one of its axes, its rows at least a row apart (a head's
    # block read out of wider rows is fine: the row distance becomes the kernel's lead)
    if ca.get(k) == 1 and ca.get(m, 0) >= K:
        a_t, a_ld = False, ca[m]
    elif ca.get(m) == 1 and ca.get(k, 0) >= M:
        a_t, a_ld = True, ca[k]
    else:
        return None
    if cb.get(n) == 1 and cb.get(k, 0) >= N:
        b_t, b_ld = False, cb[k]
    elif cb.get(k) == 1 and cb.get(n, 0) >= K:
        b_t, b_ld = True, cb[n]
    else:
        return None
    if fa.const < 0 or fb.const < 0:
        return None
    a_lead = None if a_ld == (M if a_t else K) else a_ld
    b_lead = None if b_ld == (K if b_t else N) else b_ld
    if (a_lead or b_lead) and choose_tiling(M, N, K, a_t, b_t).strategy == DOT:
        # measured: the dot-product tiling reading rows of a head out of wider rows took
        # 2.6-3.5x the time of the same kernel on packed operands, more than the copy
        return None
    count = int(np.prod([v.extent for v in batch], dtype=np.int64)) if batch else 1
    sa, sb = _batch_stride(ca, batch), _batch_stride(cb, batch)
    if sa is not None and sb is not None and min(sa, sb) >= 0:
        if count > 1 and sb == 0 and not a_t and sa == M * K and a_lead is None:
            # a batch of row blocks against one B (a Linear on (batch, seq, features)) is one
            # product with count * M rows: bigger tiles, fewer edges, one launch-wide grid
            shape = MatmulShape(M * count, N, K, 1, False, b_t, 0, 0, b_lead=b_lead)
            return MatmulMatch(product, a, b, shape, fa.const, fb.const, folded_rows=M)
        shape = MatmulShape(M, N, K, count, a_t, b_t, sa, sb, a_lead, b_lead)
        return MatmulMatch(product, a, b, shape, fa.const, fb.const)
    split = _batch_split(ca, cb, batch)
    if split is None:
        return None
    inner, sa, a_inner, sb, b_inner = split
    shape = MatmulShape(M, N, K, count, a_t, b_t, sa, sb, a_lead, b_lead, inner, a_inner, b_inner)
    return MatmulMatch(product, a, b, shape, fa.const, fb.const)


def _batch_split(ca: dict[Var, int], cb: dict[Var, int], batch: tuple[Var, ...]) -> tuple[int, ...] | None:
    """Batch axes that do not flatten into one stride, as two groups that each do (attention's
    (batch, head) over rows of heads): (inner count, A outer, A inner, B outer, B inner strides)."""
    for cut in range(1, len(batch)):
        outer, inner = batch[:cut], batch[cut:]
        strides = [_batch_stride(ca, outer), _batch_stride(ca, inner), _batch_stride(cb, outer),
                   _batch_stride(cb, inner)]
        if all(s is not None and s >= 0 for s in strides):
            count = int(np.prod([v.extent for v in inner], dtype=np.int64))
            return (count, strides[0], strides[1], strides[2], strides[3])
    return None


def render_matmul_kernel(kernel: Kernel, match: MatmulMatch, language: CStyleLanguage,
                         buffers: dict) -> RenderedKernel:
    """The tiled kernel with the rest of the kernel's value as its epilogue function."""
    accumulator = Load(ACCUMULATOR, (), "float32")
    epilogue_value = replace_expr(kernel.value, match.product, accumulator)
    *batch, m, n = kernel.variables
    renderer = KernelRenderer(kernel, language, buffers)
    body_lines, value = renderer.render_expression(epilogue_value, kernel.variables)
    params = [Param("buffer", kernel.out.id), Param("offset64", kernel.out.id),
              Param("buffer", match.a.buffer_id), Param("offset64", match.a.buffer_id, extra=match.a_offset),
              Param("buffer", match.b.buffer_id), Param("offset64", match.b.buffer_id, extra=match.b_offset)]
    helper_params, call_args = [], []
    for buffer_id, slot in renderer.slots.items():   # buffers the epilogue reads (the output too)
        ctype = renderer.ctype(buffers[buffer_id].dtype)
        helper_params += [language.buffer_param(ctype, f"b{slot}", False), f"const int o{slot}"]
        call_args += [f"b{slot}", f"o{slot}"]
        params += [Param("buffer", buffer_id), Param("offset", buffer_id)]
    for index, var in enumerate(renderer.outer_vars):
        helper_params.append(f"const int L{index}")
        call_args.append(f"L{index}")
        params.append(Param("var", var=var))
    for constant, name in renderer.constants.items():
        helper_params.append(f"const float {name}")
        call_args.append(name)
        params.append(Param("constant", value=constant))
    # batch variables from the flat batch index b
    index_lines, stride = [], 1
    for position in reversed(range(len(batch))):
        extent = batch[position].extent
        index_lines.append(f"const int i{position} = (b / {stride}) % {extent};")
        stride *= extent
    index_lines += [f"const int i{len(batch)} = m;", f"const int i{len(batch) + 1} = n;"]
    row, flat_batch = "m", "b"
    if match.folded_rows:   # the kernel's rows are (batch, m) flattened
        row, flat_batch = "row", "batch0"
        index_lines = [f"const int b = row / {match.folded_rows};",
                       f"const int m = row % {match.folded_rows};"] + index_lines
    helper = ["inline float {name}_epilogue(" + ", ".join(["const float acc", f"const int {row}", "const int n",
                                                            f"const int {flat_batch}"] + helper_params) + ") {"]
    helper += ["    " + line for line in index_lines + body_lines] + [f"    return {value};", "}"]
    epilogue = Epilogue(f"{{name}}_epilogue({', '.join(['acc', 'm', 'n', 'b'] + call_args)})",
                        tuple(helper_params))
    placeholder = "AUTODIFFMATMULKERNEL"
    tiled = render_matmul(match.shape, Epilogue(epilogue.expression.replace("{name}", placeholder),
                                                epilogue.parameters), name=placeholder)
    body = "\n".join(helper) + "\n" + tiled.source.replace(placeholder, "{name}")
    global_size = tuple(int(g) for g in tiled.global_size)
    local_size = tuple(int(s) for s in tiled.local_size)
    return RenderedKernel(kernel.name, body, params, global_size, local_size)


# --- operand packing ----------------------------------------------------------------------

def _single_product(kernel: Kernel) -> Reduce | None:
    """The kernel's one product sum_k a * b of two loads, if any. Equal copies of it are one
    product: fusion inlines a producer once per use (relu(x) = where(x > 0, x, 0) reads it
    twice), and the epilogue reads the accumulator for each copy."""
    products = list(dict.fromkeys(e for e in walk_expr(kernel.value) if isinstance(e, Reduce)))
    if len(products) != 1 or len(kernel.variables) < 2 or kernel.out.dtype != "float32":
        return None
    product = products[0]
    if (product.op is Op.SUM and len(product.variables) == 1 and isinstance(product.body, Alu)
            and product.body.op is Op.MUL and all(isinstance(x, Load) for x in product.body.args)):
        return product
    return None


def _packed_operand(load: Load, axes: tuple[Var, ...], buffer_id: int) -> tuple[Buffer, Kernel, Load]:
    """A temp buffer over `axes`, the copy kernel filling it from `load`, and the load of it."""
    buffer = Buffer(buffer_id, f"packed{buffer_id}", tuple(v.extent for v in axes), load.dtype, "temp")
    own = tuple(Var(f"{v.name}_p{buffer_id}", v.extent) for v in axes)
    mapping = {old: Index.of(new) for old, new in zip(axes, own)}
    value = substitute_vars(Load(load.buffer_id, load.indices, load.dtype, False), mapping)
    copy = Kernel(f"pack{buffer_id}", buffer, own, value, "copy", ops=["pack"])
    return buffer, copy, Load(buffer_id, tuple(Index.of(v) for v in axes), load.dtype, False)


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
            product = _single_product(kernel)
            if product is None or match_matmul(kernel, buffers) is not None:
                continue
            (k,) = product.variables
            *batch, m, n = kernel.variables
            if m.extent * n.extent * k.extent < MIN_WORK:
                continue
            operands, roles = [], set()
            for load in product.body.args:
                used = {v for index in load.indices for v in index.variables()}
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
                               map_expr(kernel.value, replace_load=lambda ld: replace.get(ld)), kernel.kind,
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
