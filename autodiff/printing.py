"""print_graph: a readable listing of any stage of the pipeline.

The graph is printed one node per line, `%id = op(inputs, args)  dtype[shape]`,
with loop bodies indented. Inputs are references (`%12`), so shared subtrees
are never printed twice.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import IO, Any

from .graph.ops import Op
from .graph.program import Block, Node, Program, current_program

STAGES = ("graph", "opt", "proc", "fused", "memory", "kernels")
_DTYPE_SHORT = {"float32": "f32", "int32": "i32"}


def describe_args(node: Node) -> list[str]:
    """The op's arguments as `key=value` strings (names instead of objects)."""
    if node.op is Op.READ or node.op is Op.ASSIGN:
        return [node.args.var.name]
    if node.op in (Op.FEEDER, Op.RECEIVER):
        parts = [repr(node.args.name)]
        if node.op is Op.RECEIVER and node.args.every != 1:
            parts.append(f"every={node.args.every}")
        return parts
    if not dataclasses.is_dataclass(node.args):
        return []
    out = []
    for f in dataclasses.fields(node.args):
        value = getattr(node.args, f.name)
        out.append(f"{f.name}={value}")
    return out


def type_string(node: Node) -> str:
    return f"{_DTYPE_SHORT.get(node.dtype, node.dtype)}[{','.join(map(str, node.shape))}]"


def format_node(node: Node, show_source: bool = True) -> str:
    operands = [f"%{i.id}" for i in node.inputs] + describe_args(node)
    text = f"%{node.id} = {node.op.value}({', '.join(operands)})"
    if node.op not in (Op.RECEIVER, Op.ASSIGN):
        text = f"{text.ljust(48)} {type_string(node)}"
    if show_source and node.where:
        path, _, line = node.where.rpartition(":")
        text = f"{text.ljust(72)} # {os.path.basename(path)}:{line}"
    return text


def format_block(block: Block, show_source: bool = True) -> list[str]:
    lines: list[str] = []
    stack: list[tuple[list[Node], int, int]] = [(block.nodes, 0, 0)]  # nodes, next index, depth
    while stack:
        nodes, at, depth = stack.pop()
        if at >= len(nodes):
            continue
        node = nodes[at]
        stack.append((nodes, at + 1, depth))
        pad = "    " * depth
        if node.op is Op.FOR:
            a = node.args
            index = f"%{a.index.id}" if a.index is not None else "_"
            lines.append(f"{pad}%{node.id} = for {index} in range({a.start}, "
                         f"{a.start + a.count * a.step}, {a.step}):   # {a.count} iterations")
            stack.append((a.body.nodes, 0, depth + 1))
        else:
            lines.append(pad + format_node(node, show_source))
    return lines


def format_graph(program: Program, show_source: bool = True) -> str:
    nodes = sum(1 for _ in program.root.walk())
    header = (f"graph: {nodes} nodes, {len(program.variables)} persistent tensors ("
              + ", ".join(f"{v.name}: {_DTYPE_SHORT.get(v.dtype, v.dtype)}[{','.join(map(str, v.shape))}]"
                          for v in program.variables[:8])
              + (", ..." if len(program.variables) > 8 else "") + ")")
    return "\n".join([header] + format_block(program.root, show_source))


def print_graph(stage: str = "graph", program: Program | None = None, file: IO[str] | None = None,
                show_source: bool = True, **options: Any) -> str:
    """Print one stage of the pipeline for the current program and return the text.

    Stages: "graph" (the traced graph), "opt" (after the graph passes), "proc" (the
    procedural IR as lowered, one kernel per compute node), "fused" (after fusion,
    each kernel with the graph nodes it computes), "memory" (the arena plan), "kernels"
    (the generated OpenCL source; `device=` picks another code-generating device).
    `disable=` switches stages off as in execute.
    """
    program = program or current_program()
    if stage not in STAGES:
        raise ValueError(f"unknown stage '{stage}'; choose one of {STAGES}")
    if stage == "kernels":
        from .runtime import compile_program
        compiled = compile_program(program, options.get("device", "opencl"), disable=set(options.get("disable", ())))
        text = "\n\n".join(f"// {name}\n{source}" for name, source in compiled.kernels.items())
    elif stage in ("proc", "fused", "memory"):
        text = format_procedural(program, stage, options)
    elif stage == "opt":
        from .opt import Graph, optimize
        graph, _ = optimize(Graph(program.root, program.variables), options.get("disable", ()))
        shown = Program()
        shown.root, shown.variables = graph.root, graph.variables
        text = format_graph(shown, show_source).replace("graph:", "optimized graph:", 1)
    else:
        text = format_graph(program, show_source)
    print(text, file=file or sys.stdout)
    return text


pg = print_graph


def format_procedural(program: Program, stage: str, options: dict[str, Any]) -> str:
    from .alloc.plan import format_plan
    from .proc.text import format_program
    from .runtime import compile_program
    disable = set(options.get("disable", ()))
    if stage == "proc":
        disable.add("fusion")
    compiled = compile_program(program, "numpy-proc", disable=disable)
    if stage == "memory":
        return format_plan(compiled.proc, compiled.plan)
    node_ops = {n.id: n.op.value for n in compiled.graph.walk()}
    return format_program(compiled.proc, node_ops, show_sources=(stage == "fused"))


def plot_memory(path: str, program: Program | None = None, **options: Any) -> str:
    """Draw the current program's memory plan (offset x time rectangles) to a PNG at `path`."""
    from .alloc.plan import plot_plan
    from .runtime import compile_program
    compiled = compile_program(program or current_program(), "numpy-proc", disable=set(options.get("disable", ())))
    plot_plan(compiled.proc, compiled.plan, path)
    return path
