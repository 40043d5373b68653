"""Reductions with work-group parallelism: one work-group per output, for long axes.

A kernel computing few outputs, each a sum or maximum over many elements, gives a GPU
too little to do with one work-item per output. Here the work-items of a group of
GROUP_SIZE take every GROUP_SIZE-th element of the (flattened) reduction axes, each
keeps a partial result, the partials are combined as a tree in local memory, and the
first work-item applies the rest of the kernel's expression (the epilogue: a scale, an
add) and stores the output.

On PoCL this measured no gain: a work-group runs on one core, so one output takes one
core either way, and splitting an axis over groups with a second pass was no faster
(TODO.md). The OpenCL runtime uses it on GPU devices only; `group_reductions=True`
forces it (the tests do, on PoCL).
"""
from __future__ import annotations

from ..ir.ops import Op
from ..proc.index import Index, Var, unflatten
from ..proc.ir import Alu, Kernel, Load, Reduce, replace_expr, substitute_vars, walk_expr
from .renderer import (ACCUMULATOR, CStyleLanguage, KernelRenderer, RenderedKernel, _Scope, combine, compensates,
                       start_value)

GROUP_SIZE = 128            # work-items per output (a power of two: the tree halves it)
MIN_LENGTH = 1024           # elements per output from which a group per output pays
MAX_OUTPUTS = 4096          # more outputs than this keep a GPU busy with one work-item each


def group_reduction(kernel: Kernel) -> Reduce | None:
    """The kernel's reduction if it qualifies: exactly one float sum or maximum, reached from
    the kernel's value through elementwise ops only (not under a guard), long, few outputs."""
    reduces = [e for e in walk_expr(kernel.value) if isinstance(e, Reduce)]
    if len(reduces) != 1 or kernel.out.size > MAX_OUTPUTS:
        return None
    (reduce,) = reduces
    length = 1
    for v in reduce.variables:
        length *= v.extent
    if reduce.op not in (Op.SUM, Op.MAX) or reduce.dtype != "float32" or length < MIN_LENGTH:
        return None
    stack = [kernel.value]
    while stack:
        e = stack.pop()
        if e is reduce:
            return reduce
        if isinstance(e, Alu):
            stack.extend(e.args)
    return None


class GroupReduceRenderer(KernelRenderer):
    """Renders a kernel `group_reduction` accepted: output `gid` is work-group `gid`."""

    def render(self) -> RenderedKernel:
        kernel, lang = self.kernel, self.lang
        self.slot(kernel.out.id)
        outputs = max(kernel.out.size, 1)
        gid = Var("gid", outputs)
        self.var_names[gid] = "gid"
        digits = unflatten(Index.of(gid), kernel.out.shape)
        value = substitute_vars(kernel.value, dict(zip(kernel.variables, digits)))
        reduce = next(e for e in walk_expr(value) if isinstance(e, Reduce))
        extents = tuple(v.extent for v in reduce.variables)
        length = 1
        for n in extents:
            length *= n
        r = Var("r", length)
        self.var_names[r] = "r"
        body = substitute_vars(reduce.body, dict(zip(reduce.variables, unflatten(Index.of(r), extents))))

        root = _Scope(None, variables=(gid,))
        loop = _Scope(root, variables=(r,))
        part = self.value(body, loop)
        compensated = compensates(reduce.op, "float32", length // GROUP_SIZE)
        lines = root.lines + [f"float mine = {start_value(reduce.op, 'float32', lang)};"]
        lines += ["float comp = 0.0f;"] if compensated else []
        lines += [f"for (int r = lid; r < {length}; r += {GROUP_SIZE}) {{"]
        lines += ["    " + line for line in loop.lines]
        lines += ["    " + combine(reduce.op, "mine", part, compensation="comp" if compensated else None), "}"]
        lines += ["partial[lid] = mine;", lang.local_barrier,
                  f"for (int step = {GROUP_SIZE // 2}; step > 0; step >>= 1) {{",
                  "    if (lid < step) {",
                  "        " + combine(reduce.op, "partial[lid]", "partial[lid + step]"),
                  "    }",
                  "    " + lang.local_barrier,
                  "}"]
        # the epilogue reads the reduced value as `acc` (a Load of ACCUMULATOR), on work-item 0
        epilogue = replace_expr(value, reduce, Load(ACCUMULATOR, (), "float32"))
        first = _Scope(root, guard=True)
        result = self.value(epilogue, first)
        lines += ["if (lid == 0) {", "    float acc = partial[0];"] + ["    " + line for line in first.lines]
        lines += [f"    b0[o0 + gid] = {result};", "}"]

        header, params = self.signature()
        text = [header, f"    {lang.local_qualifier} float partial[{GROUP_SIZE}];",
                f"    const int gid = {lang.group_id};", f"    const int lid = {lang.local_id};"]
        text += ["    " + line for line in lines] + ["}"]
        return RenderedKernel(kernel.name, "\n".join(text), params, outputs * GROUP_SIZE, GROUP_SIZE)


def render_group_reduce(kernel: Kernel, language: CStyleLanguage, buffers: dict) -> RenderedKernel:
    return GroupReduceRenderer(kernel, language, buffers).render()
