"""print_graph: a readable listing of any stage of the pipeline.

The graph stages print through `ir/text.py`; the procedural stages compile for the
numpy-proc backend and print its IR and memory plan; "kernels" prints generated source.
"""
from __future__ import annotations

import sys
from typing import IO, Any

from .ir.dtypes import dtype_record
from .ir.text import format_block
from .frontend.program import Program, current_program

STAGES = ("graph", "opt", "proc", "fused", "memory", "kernels")


def format_graph(program: Program, show_source: bool = True) -> str:
    nodes = sum(1 for _ in program.root.walk())
    header = (f"graph: {nodes} nodes, {len(program.variables)} persistent tensors ("
              + ", ".join(f"{v.name}: {dtype_record(v.dtype).short}[{','.join(map(str, v.shape))}]"
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
        from .compiler import compile_program
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
    from .compiler import compile_program
    disable = set(options.get("disable", ()))
    if stage == "proc":
        disable.add("fusion")
    compiled = compile_program(program, "numpy-proc", disable=disable)
    if stage == "memory":
        return format_plan(compiled.proc, compiled.plan)
    node_ops = {n.id: n.op.value for n in compiled.graph.walk()}
    return format_program(compiled.proc, node_ops, show_sources=(stage == "fused"))


def plot_memory(path: str, program: Program | None = None, time_axis: str = "step", **options: Any) -> str:
    """Draw the current program's memory plan to an image at `path` (PNG, SVG, PDF, ...).

    One rectangle (time x arena offset) per temporary, labelled with the graph node it
    holds (op and source line) and coloured by its op; the bytes live at each time and the
    liveness lower bound as lines. time_axis="kernel" draws the plan over the program's
    kernels in order. Builds its own matplotlib Figure: the user's backend is left alone.
    """
    from .compiler import compile_program
    from .visualize import memory_figure
    compiled = compile_program(program or current_program(), "numpy-proc", disable=set(options.get("disable", ())))
    figure = memory_figure(compiled.proc, compiled.plan, compiled.graph, time_axis)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path
