"""Text of the procedural IR: one command per line, expressions written infix.

    fused_matmul_add_select_7  t7[i5, i6] = where((sum[k4](x[i5, k4] * w[k4, i6]) + b[i6]) > 0, ...)
"""
from __future__ import annotations

from ..ir.ops import Op
from .index import render_index
from .ir import (Alu, Buffer, CollectiveStartCmd, CollectiveWaitCmd, Command, Const, Expr, FeedCmd, Guard, IndexValue, KernelCmd, Load, LoopCmd,
                 ProcProgram, RandomBits, ReceiveCmd, Reduce)

_INFIX = {Op.ADD: "+", Op.SUB: "-", Op.MUL: "*", Op.DIV: "/", Op.LT: "<", Op.GT: ">", Op.EQ: "=="}


def format_expr(expr: Expr, names: dict[int, str]) -> str:
    """Infix text of an expression; iterative (post-order with a stack of results)."""
    done: dict[int, str] = {}
    stack: list[tuple[Expr, bool]] = [(expr, False)]

    def index(form) -> str:
        return render_index(form, lambda v: v.name, lambda e: done.get(id(e)) or format_expr(e, names))

    while stack:
        e, expanded = stack.pop()
        if id(e) in done:
            continue
        kids = _kids(e)
        if not expanded and kids:
            stack.append((e, True))
            stack.extend((k, False) for k in kids)
            continue
        if isinstance(e, Const):
            text = repr(e.value)
        elif isinstance(e, IndexValue):
            text = f"({index(e.index)})"
        elif isinstance(e, Load):
            text = f"{names.get(e.buffer_id, e.buffer_id)}[{', '.join(index(i) for i in e.indices)}]"
        elif isinstance(e, Guard):
            cond = " && ".join(f"{lo} <= {index(f)} < {hi}" for f, lo, hi in e.valid.ranges)
            text = f"({cond} ? {done[id(e.body)]} : {done[id(e.otherwise)]})"
        elif isinstance(e, Alu):
            args = [done[id(a)] for a in e.args]
            if e.op in _INFIX and len(args) == 2:
                text = f"({args[0]} {_INFIX[e.op]} {args[1]})"
            elif e.op is Op.NEG:
                text = f"-{args[0]}"
            elif e.op is Op.CAST:
                text = f"({e.dtype}){args[0]}"
            else:
                text = f"{e.op.value}({', '.join(args)})"
        elif isinstance(e, Reduce):
            over = ", ".join(f"{v.name}<{v.extent}" for v in e.variables)
            text = f"{e.op.value}[{over}]({done[id(e.body)]})"
        elif isinstance(e, RandomBits):
            text = f"random(seed={e.seed}, counter={index(e.counter)}, element={index(e.element)})"
        else:
            text = repr(e)
        done[id(e)] = text
    return done[id(expr)]


def _kids(e: Expr) -> list[Expr]:
    if isinstance(e, Alu):
        return list(e.args)
    if isinstance(e, Reduce):
        return [e.body]
    if isinstance(e, Guard):
        return [e.body, e.otherwise]
    return []


def format_program(program: ProcProgram, node_ops: dict[int, str] | None = None, show_sources: bool = False) -> str:
    """Every command, loops indented; with show_sources, the graph nodes each kernel computes."""
    names = {b.id: b.name for b in program.buffers}
    lines = [f"procedural program: {len(program.kernels())} kernels, {len(program.buffers)} buffers"]
    stack: list[tuple[list[Command], int, int]] = [(program.commands, 0, 0)]
    while stack:
        commands, at, depth = stack.pop()
        if at >= len(commands):
            continue
        stack.append((commands, at + 1, depth))
        cmd = commands[at]
        pad = "    " * depth
        if isinstance(cmd, LoopCmd):
            lines.append(f"{pad}loop {cmd.variable.name} in 0..{cmd.count - 1}:")
            stack.append((cmd.body, 0, depth + 1))
        elif isinstance(cmd, FeedCmd):
            lines.append(f"{pad}feed {cmd.buffer.name} <- Feeder '{cmd.name}' {_shape(cmd.buffer)}")
        elif isinstance(cmd, ReceiveCmd):
            every = f" every {cmd.every}" if cmd.every != 1 else ""
            lines.append(f"{pad}receive {', '.join(b.name for b in cmd.buffers)} -> '{cmd.name}'{every}")
        elif isinstance(cmd, CollectiveStartCmd):
            c = cmd.collective
            sources = ", ".join(b.name for b in c.sources)
            lines.append(f"{pad}start {c.name}({sources}, op={c.op}, root={c.root})")
        elif isinstance(cmd, CollectiveWaitCmd):
            c = cmd.collective
            lines.append(f"{pad}wait {c.name} -> {c.out.name}   {_shape(c.out)}")
        elif isinstance(cmd, KernelCmd):
            k = cmd.kernel
            out = f"{k.out.name}[{', '.join(v.name for v in k.variables)}]"
            lines.append(f"{pad}{k.name}  {out} = {format_expr(k.value, names)}   {_shape(k.out)}")
            if show_sources and len(k.sources) > 1:
                ops = node_ops or {}
                lines.append(f"{pad}    fuses " + ", ".join(f"%{s} {ops.get(s, '')}".rstrip() for s in k.sources))
    return "\n".join(lines)


def _shape(buffer: Buffer) -> str:
    dtype = {"float32": "f32", "int32": "i32"}.get(buffer.dtype, buffer.dtype)
    return f"{dtype}[{','.join(map(str, buffer.shape))}]"
