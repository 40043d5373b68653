"""Pictures of what the compiler did: graph stages as Graphviz DOT or networkx graphs, and
the memory plan as a matplotlib Figure.

The graph stages are `print_graph`'s: "graph" (as traced), "opt" (after the graph passes),
"proc" (lowered, one kernel per compute node) and "fused" (after fusion). One picture node
per graph node, edges from inputs to users, loop bodies (`ir_for`) as dashed clusters;
after lowering, each kernel is a box around the graph nodes it computes (`Kernel.sources`),
and a node no kernel computes (a view, read through an access expression) is dashed.
Fusion may recompute a cheap producer inside several consumers; a node is drawn once, in
the box of the kernel that writes it, else of the first kernel computing it, and
`to_networkx` lists every kernel that computes it.

Nothing here needs more than the standard library to write DOT: networkx, the graphviz
package (with Graphviz's `dot` program) and matplotlib are imported only where used,
with a message naming what to install when missing.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Iterable

from .frontend.program import Program, current_program
from .ir.graph import Block, Node, Variable
from .ir.ops import LEAF_OPS, Op
from .ir.text import describe_args, type_string
from .proc.ir import Kernel, KernelCmd, LoopCmd, ProcProgram

DRAWN_STAGES = ("graph", "opt", "proc", "fused")
RENDERED_FORMATS = ("svg", "png", "pdf")

# shape and fill of the nodes that touch the outside world; other nodes are plain boxes
NODE_STYLE: dict[Op, tuple[str, str]] = {
    Op.READ: ("cylinder", "#cfe2f3"),       # a persistent tensor's value
    Op.ASSIGN: ("cylinder", "#f4cccc"),     # a persistent tensor's update
    Op.FEEDER: ("invhouse", "#d9ead3"),     # data from the host
    Op.RECEIVER: ("house", "#fce5cd"),      # data to the host
    Op.FOR: ("plaintext", "white"),
    Op.CONST: ("plaintext", "white"),       # folded into its users' code: drawn light
}
KERNEL_STYLE = 'style="rounded,filled"; fillcolor="#fff2cc"; color="#bf9000"'
LOOP_STYLE = 'style=dashed; color="#3d85c6"'


@dataclass
class StageGraph:
    """One pipeline stage as a graph: the block tree and, once lowered, its kernels."""
    stage: str
    root: Block
    variables: list[Variable]
    kernels: list[Kernel] = field(default_factory=list)
    owner: dict[int, int] = field(default_factory=dict)                 # node id -> kernel drawn around it
    computed_by: dict[int, list[int]] = field(default_factory=dict)     # node id -> every kernel computing it

    def nodes(self) -> list[Node]:
        return list(self.root.walk())


def stage_graph(stage: str = "graph", program: Program | None = None, disable: Iterable[str] = ()) -> StageGraph:
    """The graph of one stage; the lowered stages compile for numpy-proc, as print_graph does."""
    if stage not in DRAWN_STAGES:
        raise ValueError(f"cannot draw stage '{stage}'; choose one of {DRAWN_STAGES} "
                         f"(print_graph shows the others as text)")
    program = program or current_program()
    if stage == "graph":
        return StageGraph(stage, program.root, list(program.variables))
    if stage == "opt":
        from .opt import Graph, optimize
        graph, _ = optimize(Graph(program.root, program.variables), disable)
        return StageGraph(stage, graph.root, list(graph.variables))
    from .compiler import compile_program
    switches = set(disable) | ({"fusion"} if stage == "proc" else set())
    compiled = compile_program(program, "numpy-proc", disable=switches)
    drawn = StageGraph(stage, compiled.graph, list(compiled.optimized.variables), compiled.proc.kernels())
    _assign_kernels(drawn)
    return drawn


def _assign_kernels(drawn: StageGraph) -> None:
    """Each kernel first owns the node it writes (its last source), then the nodes it
    computes that no kernel owns yet: every kernel box holds at least its output."""
    known = {n.id for n in drawn.root.walk() if n.op is not Op.FOR}   # a loop is drawn as its cluster
    for k, kernel in enumerate(drawn.kernels):
        for source in kernel.sources:
            if source in known:
                drawn.computed_by.setdefault(source, []).append(k)
    for k, kernel in enumerate(drawn.kernels):
        if kernel.sources and kernel.sources[-1] in known:
            drawn.owner.setdefault(kernel.sources[-1], k)
    for k, kernel in enumerate(drawn.kernels):
        for source in kernel.sources:
            if source in known:
                drawn.owner.setdefault(source, k)


# --- DOT ---------------------------------------------------------------------------------

def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _loop_title(node: Node) -> str:
    a = node.args
    index = f"%{a.index.id}" if a.index is not None else "_"
    return f"for {index} in range({a.start}, {a.start + a.count * a.step}, {a.step}): {a.count} iterations"


def _node_line(node: Node, viewed: bool = False) -> str:
    """One node's DOT line; `viewed`: after lowering, no kernel computes it (a view, read
    through its consumer's access expression), drawn dashed."""
    if node.op is Op.FOR:
        label = f"%{node.id} for ({node.args.count}x)"
    else:
        label = f"%{node.id} {node.op.value}"
        details = describe_args(node) if node.op in (Op.READ, Op.ASSIGN, Op.FEEDER, Op.RECEIVER) else []
        if details:
            label += " " + ", ".join(details)
        if node.op not in (Op.RECEIVER, Op.ASSIGN):
            label += "\n" + type_string(node)
    shape, fill = NODE_STYLE.get(node.op, ("box", "white"))
    attributes = [f"label={_quote(label)}", f"shape={shape}"]
    if fill != "white":
        attributes.append(f'style=filled, fillcolor="{fill}"')
    elif viewed:
        attributes.append('style=dashed, color="#999999"')
    if node.op is Op.CONST:
        attributes.append('fontcolor="#777777"')
    if node.where:
        attributes.append(f"tooltip={_quote(node.where)}")
    return f"n{node.id} [{', '.join(attributes)}];"


def _kernel_home(drawn: StageGraph, k: int, owned: list[Node], by_id: dict[int, Node]) -> Block:
    """The block a kernel's box sits in: that of the node it writes (its last source), else
    of one it owns, else of any it computes (an operand copy computes no node of its own)."""
    kernel = drawn.kernels[k]
    written = by_id.get(kernel.sources[-1]) if kernel.sources else None
    if written is not None and written.op is not Op.FOR:
        return written.block
    return owned[0].block if owned else drawn.root


def to_dot(stage: str = "graph", program: Program | None = None, disable: Iterable[str] = ()) -> str:
    """The stage as Graphviz DOT text (no dependency)."""
    return dot_text(stage_graph(stage, program, disable))


def dot_text(drawn: StageGraph) -> str:
    nodes = drawn.nodes()
    by_id = {node.id: node for node in nodes}
    owned: dict[int, list[Node]] = {}
    for node in nodes:
        if node.id in drawn.owner:
            owned.setdefault(drawn.owner[node.id], []).append(node)
    boxes_in: dict[int, list[int]] = {}      # id(block) -> kernels whose box sits in it
    for k in range(len(drawn.kernels)):
        boxes_in.setdefault(id(_kernel_home(drawn, k, owned.get(k, []), by_id)), []).append(k)

    title = f"{drawn.stage}: {len(nodes)} nodes" + (f", {len(drawn.kernels)} kernels" if drawn.stage in ("proc", "fused") else "")
    lines = ["digraph autodiff {", f"  label={_quote(title)}; labelloc=t; compound=true;",
             '  graph [fontname="Helvetica", fontsize=11]; node [shape=box, fontsize=10, fontname="Helvetica"];',
             '  edge [arrowsize=0.6];']
    # an explicit stack of lines still to write and blocks still to open (loop nesting)
    work: list[tuple[str, Any, int]] = [("block", drawn.root, 1)]
    while work:
        kind, item, depth = work.pop()
        pad = "  " * depth
        if kind == "line":
            lines.append(pad + item)
            continue
        block: Block = item
        todo: list[tuple[str, Any, int]] = []
        for node in block.nodes:
            if node.op is Op.FOR:
                todo.append(("line", f"subgraph cluster_loop{node.id} {{", depth))
                todo.append(("line", f"label={_quote(_loop_title(node))}; {LOOP_STYLE};", depth + 1))
                todo.append(("line", _node_line(node), depth + 1))
                todo.append(("block", node.args.body, depth + 1))
                todo.append(("line", "}", depth))
            elif node.id not in drawn.owner:
                viewed = bool(drawn.kernels) and node.op not in LEAF_OPS and node.op not in NODE_STYLE
                todo.append(("line", _node_line(node, viewed), depth))
        for k in boxes_in.get(id(block), []):
            kernel = drawn.kernels[k]
            todo.append(("line", f"subgraph cluster_kernel{k} {{", depth))
            todo.append(("line", f"label={_quote(f'{kernel.name} ({str(kernel.kind)})')}; {KERNEL_STYLE};", depth + 1))
            todo.extend(("line", _node_line(node), depth + 1) for node in owned.get(k, []))
            if not owned.get(k):   # a kernel of no graph node of its own (an operand copy)
                todo.append(("line", f"kernel{k} [label={_quote(kernel.name)}, shape=box3d];", depth + 1))
            todo.append(("line", "}", depth))
        work.extend(reversed(todo))
    for node in nodes:
        # one arrow per distinct input (mul(x, x) reads x twice), as in to_networkx
        lines.extend(f"  n{i} -> n{node.id};" for i in dict.fromkeys(i.id for i in node.inputs))
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw_graph(path: str, stage: str = "graph", program: Program | None = None, **options: Any) -> str:
    """Draw one stage of the current program to `path` and return the DOT text.

    A path ending in .dot (or .gv) gets the DOT text; .svg, .png or .pdf are rendered by
    Graphviz (the `graphviz` Python package and its `dot` program must be installed).
    Stages: "graph", "opt", "proc", "fused" (see print_graph); `disable=` as in execute.
    """
    fmt = os.path.splitext(path)[1].lower().lstrip(".")
    if fmt not in ("dot", "gv") + RENDERED_FORMATS:
        raise ValueError(f"draw_graph: cannot tell the format of '{path}'; end it in .dot, .gv, "
                         f"or one of {['.' + f for f in RENDERED_FORMATS]}")
    text = to_dot(stage, program, options.get("disable", ()))
    if fmt in RENDERED_FORMATS:
        data = render_dot(text, fmt, path)
        with open(path, "wb") as f:
            f.write(data)
    else:
        with open(path, "w") as f:
            f.write(text)
    return text


def render_dot(text: str, fmt: str, path: str = "") -> bytes:
    """DOT text rendered by Graphviz, or an error saying what to install."""
    what = (f"draw_graph: writing {path or fmt} needs the graphviz Python package and Graphviz's "
            f"`dot` program: pip install graphviz, and apt-get install graphviz (or brew install graphviz). "
            f"A path ending in .dot needs neither; render it later with `dot -T{fmt} graph.dot -o graph.{fmt}`.")
    try:
        import graphviz
    except ImportError:
        raise ImportError(what) from None
    if shutil.which("dot") is None:
        raise RuntimeError(what)
    return graphviz.Source(text).pipe(format=fmt)


# --- networkx ----------------------------------------------------------------------------

def to_networkx(stage: str = "graph", program: Program | None = None, **options: Any) -> Any:
    """The stage as a networkx DiGraph: one node per graph node (its id), edges from inputs
    to users, attributes op, shape, dtype, kernel (the kernel whose box holds it, or None),
    kernels (every kernel computing it), loop (the enclosing FOR node's id, or None) and
    where (the user's source line). `graph.graph` has the stage and the kernel names."""
    try:
        import networkx
    except ImportError:
        raise ImportError("to_networkx needs networkx, an optional dependency: pip install networkx") from None
    drawn = stage_graph(stage, program, options.get("disable", ()))
    graph = networkx.DiGraph(stage=stage, kernels=[k.name for k in drawn.kernels])
    names = [k.name for k in drawn.kernels]
    for node in drawn.nodes():
        owner = drawn.owner.get(node.id)
        graph.add_node(node.id, op=node.op.value, shape=tuple(node.shape), dtype=node.dtype,
                       kernel=None if owner is None else names[owner],
                       kernels=[names[k] for k in drawn.computed_by.get(node.id, [])],
                       loop=None if node.block.owner is None else node.block.owner.id, where=node.where)
    for node in drawn.nodes():
        for i in node.inputs:
            graph.add_edge(i.id, node.id)
    return graph


# --- the memory plan ---------------------------------------------------------------------

def buffer_labels(proc: ProcProgram, graph: Block) -> dict[int, tuple[str, str]]:
    """Buffer id -> (op, "%id op  file:line") of the graph node its writer computes."""
    nodes = {n.id: n for n in graph.walk()}
    labels: dict[int, tuple[str, str]] = {}
    for kernel in proc.kernels():
        node = nodes.get(kernel.sources[-1]) if kernel.sources else None
        if node is None:
            labels[kernel.out.id] = (str(kernel.kind), f"{kernel.out.name} {str(kernel.kind)}")
            continue
        label = f"%{node.id} {node.op.value}"
        if node.where:
            file, _, line = node.where.rpartition(":")
            label += f"  {os.path.basename(file)}:{line}"
        labels[kernel.out.id] = (node.op.value, label)
    return labels


def _kernel_positions(proc: ProcProgram) -> tuple[list[int], list[str]]:
    """For each step (a non-loop command in program order, as the plan counts them) the
    index of the last kernel at or before it; and the kernels' names in order."""
    at: list[int] = []
    names: list[str] = []
    for cmd in proc.walk():
        if isinstance(cmd, LoopCmd):
            continue
        if isinstance(cmd, KernelCmd):
            names.append(cmd.kernel.name)
        at.append(max(len(names) - 1, 0))
    return at, names


def live_bytes(plan: Any, steps: int) -> list[int]:
    """Bytes live at each step, in-place pairs counted once, each temporary aligned as the
    plan aligns it: its peak is the liveness lower bound."""
    from .alloc.plan import ALIGNMENT
    group = {i: i for i in plan.lifetimes}
    for a, b in plan.in_place:
        group[b] = group.get(a, a)
    spans: dict[int, list[int]] = {}
    for i, life in plan.lifetimes.items():
        size = max(ALIGNMENT, -(-life.buffer.nbytes // ALIGNMENT) * ALIGNMENT)
        g = group[i]
        while group[g] != g:
            g = group[g]
        start, end, height = spans.get(g, [life.start, life.end, 0])
        spans[g] = [min(start, life.start), max(end, life.end), max(height, size)]
    live = [0] * steps
    for start, end, height in spans.values():
        for t in range(start, min(end, steps - 1) + 1):
            live[t] += height
    return live


def memory_figure(proc: ProcProgram, plan: Any, graph: Block, time_axis: str = "step") -> Any:
    """The plan as a matplotlib Figure (no pyplot, the user's backend untouched): one
    rectangle (time x bytes) per temporary, coloured by the op of the graph node it holds,
    labelled with that node and its source line; the bytes live at each time and the
    liveness lower bound as lines. time_axis="kernel" spaces time by the kernels in order."""
    if time_axis not in ("step", "kernel"):
        raise ValueError(f"time_axis must be 'step' or 'kernel', not {time_axis!r}")
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    at, kernel_names = _kernel_positions(proc)
    x_of = (lambda step: at[step]) if time_axis == "kernel" else (lambda step: step)
    labels = buffer_labels(proc, graph)
    palette = colormaps["tab20"]
    colour_of: dict[str, Any] = {}
    figure = Figure(figsize=(14, 6.5), layout="constrained")
    axes = figure.add_subplot()
    height = max(plan.arena_bytes, 1)
    for life in plan.lifetimes.values():
        b = life.buffer
        op, label = labels.get(b.id, ("?", b.name))
        colour = colour_of.setdefault(op, palette(len(colour_of) % 20))
        x0, x1 = x_of(life.start), x_of(life.end) + 1
        axes.add_patch(Rectangle((x0, plan.offsets[b.id]), x1 - x0, b.nbytes, facecolor=colour,
                                 edgecolor="black", linewidth=0.4))
        if b.nbytes > height * 0.03:
            axes.text(x0 + 0.1, plan.offsets[b.id] + b.nbytes / 2, label, fontsize=6, va="center", clip_on=True)
    steps = len(at)
    peak_at: dict[int, int] = {}     # x -> most bytes live there (several steps share a kernel's x)
    for t, live in enumerate(live_bytes(plan, steps)):
        peak_at[x_of(t)] = max(peak_at.get(x_of(t), 0), live)
    xs = sorted(peak_at)
    if xs:
        axes.step(xs + [xs[-1] + 1], [peak_at[x] for x in xs] + [peak_at[xs[-1]]], where="post",
                  color="black", linewidth=0.8)
    axes.axhline(plan.lower_bound_bytes, color="red", linestyle="--", linewidth=0.8)
    width = (len(kernel_names) if time_axis == "kernel" else steps) or 1
    axes.set_xlim(0, width)
    axes.set_ylim(0, max(height, max(peak_at.values(), default=0)) * 1.02)
    if time_axis == "kernel":
        axes.set_xlabel("kernel, in program order (a loop body once)")
        if len(kernel_names) <= 60:
            axes.set_xticks([i + 0.5 for i in range(len(kernel_names))], kernel_names, rotation=90, fontsize=5)
    else:
        axes.set_xlabel("step (command in program order; a loop body once)")
    axes.set_ylabel("arena offset (bytes)")
    axes.set_title(f"memory plan: arena {plan.arena_bytes} B, liveness lower bound {plan.lower_bound_bytes} B, "
                   f"no reuse {plan.no_reuse_bytes} B ({plan.strategy})", fontsize=9)
    handles = [Line2D([], [], color="red", linestyle="--", label="liveness lower bound"),
               Line2D([], [], color="black", linewidth=0.8, label="bytes live")]
    handles += [Patch(facecolor=c, edgecolor="black", label=op) for op, c in colour_of.items()]
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7,
                title="held value's op", title_fontsize=7, ncols=1 if len(handles) <= 30 else 2)
    return figure
