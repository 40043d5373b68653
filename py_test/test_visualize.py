"""Seeing what the compiler did: DOT pictures, networkx graphs, logging, the memory plot.

The pictures are of the compile (numpy-proc, as print_graph's), not of a device's run, so
these tests compile without the `device` fixture. The DOT is checked by a small parser of
our own (networkx reads DOT only through pydot or pygraphviz, neither a dependency).
"""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import autodiff as ad
from autodiff.ir.ops import Op
from autodiff.proc.ir import LoopCmd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from reference_model import trace_reference_step  # noqa: E402

networkx = pytest.importorskip("networkx")

NODE = re.compile(r"^\s*n(\d+) \[(.*)\];$")
EDGE = re.compile(r"^\s*n(\d+) -> n(\d+);$")


def trace_small_transformer() -> None:
    """The reference workload, one layer, two steps, small sizes: the same structure
    (attention, feed-forward, norms, SGD inside an ir_for, a Feeder and a Receiver)."""
    trace_reference_step(layers=1, steps=2, d_model=16, heads=2, ff=32, seq=3, losses=[])


def parse_dot(text: str) -> dict:
    """Nodes (id -> attribute text), edges and cluster names; fails on unbalanced braces
    or a node declared twice."""
    depth, nodes, edges, clusters = 0, {}, [], []
    for line in text.splitlines():
        depth += line.count("{") - line.count("}") if '"' not in line else 0
        assert depth >= 0, line
        if m := NODE.match(line):
            assert int(m[1]) not in nodes, f"node {m[1]} declared twice"
            nodes[int(m[1])] = m[2]
        elif m := EDGE.match(line):
            edges.append((int(m[1]), int(m[2])))
        elif line.strip().startswith("subgraph "):
            clusters.append(line.split()[1])
    assert depth == 0 and text.rstrip().endswith("}")
    return {"nodes": nodes, "edges": edges, "clusters": clusters}


def print_graph_nodes(stage: str) -> dict[int, str]:
    """Node id -> op as print_graph lists them (FOR lines included)."""
    text = ad.print_graph(stage, file=io.StringIO(), show_source=False)
    found = {}
    for line in text.splitlines()[1:]:
        m = re.match(r"\s*%(\d+) = (\w+)", line)
        assert m, line
        found[int(m[1])] = m[2]
    return found


def test_dot_of_the_reference_transformer_has_one_box_per_kernel(tmp_path):
    trace_small_transformer()
    path = tmp_path / "fused.dot"
    text = ad.draw_graph(str(path), stage="fused")
    assert path.read_text() == text
    dot = parse_dot(text)
    compiled = ad.compile(device="numpy-proc")
    kernels = [c for c in dot["clusters"] if c.startswith("cluster_kernel")]
    assert len(kernels) == compiled.kernels_after_fusion > 0
    loops = [c for c in dot["clusters"] if c.startswith("cluster_loop")]
    graph = ad.to_networkx("fused")
    assert len(loops) == sum(1 for _, op in graph.nodes(data="op") if op == "for") == 1
    # the same nodes and edges as the networkx graph, every edge between declared nodes
    assert set(dot["nodes"]) == set(graph.nodes)
    assert sorted(dot["edges"]) == sorted(graph.edges)
    parsed = networkx.DiGraph(dot["edges"])
    assert networkx.is_directed_acyclic_graph(parsed)
    # persistent tensors, Feeders and Receivers are marked
    shapes = {graph.nodes[i]["op"]: re.search(r"shape=(\w+)", attrs)[1] for i, attrs in dot["nodes"].items()}
    assert shapes["read"] == shapes["assign"] == "cylinder"
    assert shapes["feeder"] == "invhouse" and shapes["receiver"] == "house"
    # every kernel's box holds the node it writes
    assert {k for _, k in graph.nodes(data="kernel") if k} <= set(graph.graph["kernels"])
    assert len(graph.graph["kernels"]) == compiled.kernels_after_fusion


def test_to_networkx_matches_print_graph():
    trace_small_transformer()
    for stage in ("graph", "opt"):
        listed = print_graph_nodes(stage)
        graph = ad.to_networkx(stage)
        assert dict(graph.nodes(data="op")) == listed, stage
        assert graph.graph["kernels"] == []
    traced = ad.to_networkx("graph")
    dots = [i for i, op in traced.nodes(data="op") if op == Op.DOT.value]
    assert dots and all(len(traced.nodes[i]["shape"]) >= 2 for i in dots)
    assert all(traced.nodes[i]["loop"] is not None for i in dots)   # traced inside the ir_for
    assert any(re.search(r"\.py:\d+$", where) for _, where in traced.nodes(data="where"))
    # before fusion, one kernel per compute node: more kernels, each around fewer nodes
    proc, fused = ad.to_networkx("proc"), ad.to_networkx("fused")
    assert len(proc.graph["kernels"]) > len(fused.graph["kernels"])


def test_draw_graph_formats(tmp_path):
    x = ad.Tensor(np.ones((2, 3), np.float32), name="x")
    x.assign(x * 2.0 + 1.0)   # a persistent tensor read and updated
    text = ad.draw_graph(str(tmp_path / "g.gv"), stage="opt")
    assert "cylinder" in text
    with pytest.raises(ValueError, match=r"\.dot"):
        ad.draw_graph(str(tmp_path / "g.txt"))
    with pytest.raises(ValueError, match="choose one of"):
        ad.draw_graph(str(tmp_path / "g.dot"), stage="memory")
    try:
        ad.draw_graph(str(tmp_path / "g.svg"), stage="fused")
    except (ImportError, RuntimeError) as error:   # no Graphviz here: the message says what to install
        assert "pip install graphviz" in str(error) and ".dot" in str(error)
    else:
        assert (tmp_path / "g.svg").read_text().lstrip().startswith(("<?xml", "<svg"))


def run_python(code: str, **env_changes: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


SMALL_PROGRAM = """
import numpy as np
import autodiff as ad
w = ad.Tensor(np.ones((4, 3), np.float32), name="w")
def step():
    x = ad.Feeder(lambda: np.ones((2, 4), np.float32), (2, 4), name="x")
    loss = (x @ w).relu().sum()
    w.grad = None
    loss.backward()
    w.sub_(w.grad * 0.01)
ad.ir_for(2, step)
ad.execute(device="numpy-proc")
"""


def test_autodiff_log_debug_shows_pass_dumps_and_nothing_without_it():
    logged = run_python(SMALL_PROGRAM, AUTODIFF_LOG="debug", AUTODIFF_DUMP_PASSES=None)
    assert logged.returncode == 0, logged.stderr
    assert "autodiff.passes DEBUG: --- after prune" in logged.stderr
    assert "autodiff.passes INFO: cse:" in logged.stderr
    assert "autodiff.fusion INFO:" in logged.stderr and "autodiff.alloc INFO: arena" in logged.stderr
    quiet = run_python(SMALL_PROGRAM, AUTODIFF_LOG=None, AUTODIFF_DUMP_PASSES=None)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""


def test_dump_passes_lasts_one_compile(capsys):
    x = ad.Tensor(np.ones(3, np.float32), name="x")
    x.assign(x + 1.0)
    ad.execute(device="numpy", dump_passes=True)
    assert "--- after prune" in capsys.readouterr().err
    ad.execute(device="numpy")
    assert capsys.readouterr().err == ""


def test_plot_memory_labels_nodes_and_leaves_the_backend_alone(tmp_path):
    import matplotlib
    from autodiff.compiler import compile_program
    from autodiff.visualize import live_bytes, memory_figure
    trace_small_transformer()
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        path = ad.plot_memory(str(tmp_path / "plan.png"), time_axis="kernel")
        assert Path(path).read_bytes()[:4] == b"\x89PNG"
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    compiled = compile_program(None, "numpy-proc")
    figure = memory_figure(compiled.proc, compiled.plan, compiled.graph, time_axis="step")
    axes = figure.axes[0]
    ops = {n.op.value for n in compiled.graph.walk()}
    labels = [t.get_text() for t in axes.texts]
    of_nodes = [t for t in labels if t.startswith("%")]   # the others: operand copies of no graph node
    assert of_nodes and all(re.match(r"%\d+ (\w+)", t)[1] in ops for t in of_nodes)
    assert any(re.search(r"\.py:\d+$", t) for t in of_nodes)
    legend = axes.get_legend()
    entries = [t.get_text() for t in legend.get_texts()]
    assert "liveness lower bound" in entries and set(entries[2:]) & ops
    figure.draw_without_rendering()
    assert legend.get_window_extent().x0 >= axes.get_window_extent().x1   # outside the plot
    steps = sum(1 for c in compiled.proc.walk() if not isinstance(c, LoopCmd))
    assert max(live_bytes(compiled.plan, steps)) == compiled.plan.lower_bound_bytes
