"""The graph IR as text: one node per line, `%id = op(inputs, args)  dtype[shape]`, loop
bodies indented. Inputs are references (`%12`), so shared subtrees are never printed twice.
Used by `print_graph` and by the pass pipeline's dumps."""
from __future__ import annotations

import dataclasses
import os

from .dtypes import dtype_record
from .graph import Block, Node
from .ops import Op


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
    return f"{dtype_record(node.dtype).short}[{','.join(map(str, node.shape))}]"


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
