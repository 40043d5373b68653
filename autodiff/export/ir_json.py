"""The procedural IR as JSON data and back: kernels' value expressions, the schedule, buffers.

Expressions and access expressions are one node table in post-order: each node is a short
list whose first item says what it is and whose references are positions of earlier nodes,
so decoding is one pass forward, sharing stays shared and nothing recurses (fused
expressions are deep). Feeders' and Receivers' functions are not data: the schedule names
them and the loader supplies them (index checks excepted: they are data, `IndexCheck`).

    ["var", name, extent]            ["index", [[atom, coef], ...], const]
    ["div" | "mod", form, divisor]   ["dyn", expr, low, high]
    ["load", buffer, [forms], dtype, one_to_one]     ["const", value, dtype]
    ["guard", [[form, low, high], ...], body, otherwise, dtype]
    ["iv", form, dtype]   ["alu", op, [exprs], dtype]   ["reduce", op, [vars], body, dtype]
    ["random", seed, counter form, element form, dtype]

Non-finite constants are written "inf", "-inf" and "nan" so that the file stays strict JSON.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from ..alloc.plan import MemoryPlan
from ..frontend.checks import IndexCheck
from ..ir.ops import Op
from ..proc.index import DivAtom, DynAtom, Index, ModAtom, Var
from ..proc.ir import (Alu, Buffer, Const, FeedCmd, Guard, IndexValue, Kernel, KernelCmd, Load, LoopCmd,
                       RandomBits, ReceiveCmd, Reduce, Valid)

Node = list


def _children(obj: Any) -> list[Any]:
    """What a node refers to (encoded before it)."""
    if isinstance(obj, Index):
        return [atom for atom, _ in obj.terms]
    if isinstance(obj, (DivAtom, ModAtom)):
        return [obj.form]
    if isinstance(obj, DynAtom):
        return [obj.value]
    if isinstance(obj, Load):
        return list(obj.indices)
    if isinstance(obj, Guard):
        return [form for form, _, _ in obj.valid.ranges] + [obj.body, obj.otherwise]
    if isinstance(obj, IndexValue):
        return [obj.index]
    if isinstance(obj, Alu):
        return list(obj.args)
    if isinstance(obj, Reduce):
        return list(obj.variables) + [obj.body]
    if isinstance(obj, RandomBits):
        return [obj.counter, obj.element]
    return []


def number(value: Any) -> Any:
    """A constant as JSON: int, float, bool, or the name of a non-finite float."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else str(value)


def from_number(value: Any) -> Any:
    return float(value) if isinstance(value, str) else value


class NodeTable:
    """Encodes expressions into `nodes`, each distinct object (by identity; Vars by value) once."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.position: dict[Any, int] = {}
        self.alive: list[Any] = []   # what the table encoded: ids stay unique while it lives

    def _key(self, obj: Any) -> Any:
        return ("var", obj.name, obj.extent) if isinstance(obj, Var) else id(obj)

    def ref(self, root: Any) -> int:
        """The position of `root`'s node, encoding it and what it refers to first (iteratively)."""
        stack: list[tuple[Any, bool]] = [(root, False)]
        while stack:
            obj, expanded = stack.pop()
            if self._key(obj) in self.position:
                continue
            if not expanded:
                stack.append((obj, True))
                stack.extend((c, False) for c in reversed(_children(obj)) if self._key(c) not in self.position)
                continue
            self.alive.append(obj)
            self.position[self._key(obj)] = len(self.nodes)
            self.nodes.append(self._node(obj))
        return self.position[self._key(root)]

    def _node(self, obj: Any) -> Node:
        r = lambda o: self.position[self._key(o)]   # noqa: E731 - the children are encoded
        if isinstance(obj, Var):
            return ["var", obj.name, obj.extent]
        if isinstance(obj, Index):
            return ["index", [[r(atom), coef] for atom, coef in obj.terms], obj.const]
        if isinstance(obj, (DivAtom, ModAtom)):
            return ["div" if isinstance(obj, DivAtom) else "mod", r(obj.form), obj.divisor]
        if isinstance(obj, DynAtom):
            return ["dyn", r(obj.value), obj.low, obj.high]
        if isinstance(obj, Load):
            return ["load", obj.buffer_id, [r(i) for i in obj.indices], obj.dtype, obj.one_to_one]
        if isinstance(obj, Const):
            return ["const", number(obj.value), obj.dtype]
        if isinstance(obj, Guard):
            ranges = [[r(form), low, high] for form, low, high in obj.valid.ranges]
            return ["guard", ranges, r(obj.body), r(obj.otherwise), obj.dtype]
        if isinstance(obj, IndexValue):
            return ["iv", r(obj.index), obj.dtype]
        if isinstance(obj, Alu):
            return ["alu", obj.op.name, [r(a) for a in obj.args], obj.dtype]
        if isinstance(obj, Reduce):
            return ["reduce", obj.op.name, [r(v) for v in obj.variables], r(obj.body), obj.dtype]
        if isinstance(obj, RandomBits):
            return ["random", obj.seed, r(obj.counter), r(obj.element), obj.dtype]
        raise TypeError(f"export: cannot write a {type(obj).__name__} of the procedural IR")


def decode_nodes(nodes: list[Node]) -> list[Any]:
    """Every node of the table rebuilt, in order (each refers only to earlier ones)."""
    out: list[Any] = []
    for node in nodes:
        kind, r = node[0], out.__getitem__
        if kind == "var":
            obj: Any = Var(node[1], node[2])
        elif kind == "index":
            obj = Index(tuple((r(atom), coef) for atom, coef in node[1]), node[2])
        elif kind in ("div", "mod"):
            obj = (DivAtom if kind == "div" else ModAtom)(r(node[1]), node[2])
        elif kind == "dyn":
            obj = DynAtom(r(node[1]), node[2], node[3])
        elif kind == "load":
            obj = Load(node[1], tuple(r(i) for i in node[2]), node[3], node[4])
        elif kind == "const":
            obj = Const(from_number(node[1]), node[2])
        elif kind == "guard":
            obj = Guard(Valid(tuple((r(f), lo, hi) for f, lo, hi in node[1])), r(node[2]), r(node[3]), node[4])
        elif kind == "iv":
            obj = IndexValue(r(node[1]), node[2])
        elif kind == "alu":
            obj = Alu(Op[node[1]], tuple(r(a) for a in node[2]), node[3])
        elif kind == "reduce":
            obj = Reduce(Op[node[1]], tuple(r(v) for v in node[2]), r(node[3]), node[4])
        elif kind == "random":
            obj = RandomBits(node[1], r(node[2]), r(node[3]), node[4])
        else:
            raise ValueError(f"unknown node kind '{kind}' in the exported kernels")
        out.append(obj)
    return out


def encode_kernels(kernels: list[Kernel]) -> dict[str, Any]:
    """Each kernel (name, output buffer, variables, kind, value) over one node table."""
    table = NodeTable()
    rows = [{"name": k.name, "out": k.out.id, "variables": [table.ref(v) for v in k.variables],
             "kind": str(k.kind), "value": table.ref(k.value), "ops": list(k.ops)} for k in kernels]
    return {"nodes": table.nodes, "kernels": rows}


def decode_kernels(data: dict[str, Any], buffers: dict[int, Buffer]) -> list[Kernel]:
    nodes = decode_nodes(data["nodes"])
    return [Kernel(row["name"], buffers[row["out"]], tuple(nodes[v] for v in row["variables"]),
                   nodes[row["value"]], row["kind"], ops=list(row["ops"])) for row in data["kernels"]]


# --- buffers, the schedule, the memory plan -----------------------------------------------

def encode_buffer(b: Buffer) -> dict[str, Any]:
    return {"id": b.id, "name": b.name, "shape": list(b.shape), "dtype": b.dtype, "kind": str(b.kind)}


def decode_buffer(row: dict[str, Any], value_of: Callable[[dict[str, Any]], Any]) -> Buffer:
    """`value_of(row)` is what a persistent buffer's `var` is (something with `.value`)."""
    var = value_of(row) if row["kind"] == "persistent" else None
    return Buffer(row["id"], row["name"], tuple(row["shape"]), row["dtype"], row["kind"], var)


def encode_schedule(commands: list, kernel_ref: Callable[[KernelCmd], dict[str, Any]]) -> list[dict[str, Any]]:
    """The command list as data: `kernel_ref(cmd)` says which kernel (and launch) a command runs."""
    out: list[dict[str, Any]] = []
    for cmd in commands:
        if isinstance(cmd, KernelCmd):
            out.append(kernel_ref(cmd))
        elif isinstance(cmd, FeedCmd):
            out.append({"feed": cmd.name, "buffer": cmd.buffer.id})
        elif isinstance(cmd, ReceiveCmd):
            row = {"receive": cmd.name, "buffers": [b.id for b in cmd.buffers], "every": cmd.every}
            if isinstance(cmd.fn, IndexCheck):   # part of the program: the loader rebuilds it
                row["index_check"] = {"op": cmd.fn.opname, "size": cmd.fn.size, "where": cmd.fn.where}
            out.append(row)
        elif isinstance(cmd, LoopCmd):
            out.append({"loop": cmd.count, "variable": [cmd.variable.name, cmd.variable.extent],
                        "body": encode_schedule(cmd.body, kernel_ref)})
    return out


def decode_schedule(rows: list[dict[str, Any]], buffers: dict[int, Buffer],
                    kernel_cmd: Callable[[dict[str, Any]], KernelCmd]) -> list:
    """Commands again; Feeders and Receivers get a placeholder function until a run sets theirs."""
    out: list = []
    for row in rows:
        if "feed" in row:
            out.append(FeedCmd(buffers[row["buffer"]], _unset, row["feed"]))
        elif "receive" in row:
            check = row.get("index_check")
            fn = _unset if check is None else IndexCheck(check["op"], check["size"], check["where"])
            out.append(ReceiveCmd([buffers[i] for i in row["buffers"]], fn, row["receive"], row["every"]))
        elif "loop" in row:
            out.append(LoopCmd(row["loop"], Var(*row["variable"]), decode_schedule(row["body"], buffers, kernel_cmd)))
        else:
            out.append(kernel_cmd(row))
    return out


def _unset(*args: Any) -> None:
    raise AssertionError("an exported program ran a Feeder or Receiver before run() set it")


PLAN_FIELDS = ("arena_bytes", "lower_bound_bytes", "no_reuse_bytes", "persistent_bytes", "feed_bytes")


def encode_plan(plan: MemoryPlan) -> dict[str, Any]:
    out: dict[str, Any] = {name: getattr(plan, name) for name in PLAN_FIELDS}
    out["offsets"] = {str(buffer_id): offset for buffer_id, offset in plan.offsets.items()}
    out["strategy"] = plan.strategy
    return out


def decode_plan(data: dict[str, Any]) -> MemoryPlan:
    offsets = {int(buffer_id): offset for buffer_id, offset in data["offsets"].items()}
    return MemoryPlan(offsets, *(data[name] for name in PLAN_FIELDS), strategy=data.get("strategy", ""))
