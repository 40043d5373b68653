"""The structural compile cache: a traced step that is the same program as an earlier one
reuses that one's compiled program.

A part of the trace to run (`Part`: its nodes in program order, the values it must hand
back) is keyed by its structure alone: ops, input positions, shapes, dtypes, op arguments
and constants, the shapes of the persistent tensors and host values it uses (numbered by
first use, not by identity), the device and the switches. Not in the key: which persistent
tensors they are, the host values, Feeder and Receiver functions, random seeds (a reused
program draws new numbers, its run counter being new), source lines.

The compiled program is built from a canonical copy of the part whose persistent tensors
are *slots* (variables of its own): a run binds the slots to the values of the tensors of
this step, runs, and hands the results back. So a Python loop that traces the same step
every iteration compiles it once.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..ir import ops as O
from ..ir.dtypes import dtype_name
from ..ir.graph import Block, Node, Variable
from ..ir.ops import Op, internal_callback, is_internal_callback
from ..ir.shapes import SHAPE_RULES
from . import entry
from .program import Program

MAX_ENTRIES = 64   # compiled programs kept (least recently used dropped first)
# ops whose arguments name tensors, host functions or seeds: keyed by what they mean
_SPECIAL_ARGS = frozenset({Op.READ, Op.ASSIGN, Op.FEEDER, Op.RECEIVER, Op.FOR, Op.RANDOM, Op.CONST})


@dataclass
class Part:
    """What one realization runs: `nodes` (root level, program order; FOR bodies with them),
    `outputs` (nodes whose values come back), `inputs` (values known on the host, by node)."""
    nodes: list[Node]
    outputs: list[Node]
    inputs: dict[Node, np.ndarray]


@dataclass
class Binding:
    """What a run of a cached program binds to its slots: per slot a Variable (a persistent
    tensor, read and written back) or an array (a known value), and the host functions."""
    slots: list[Variable | np.ndarray] = field(default_factory=list)
    feeders: list[Callable[[], Any]] = field(default_factory=list)
    receivers: list[Callable[..., Any]] = field(default_factory=list)
    feeder_nodes: list[Node] = field(default_factory=list)


@dataclass
class Entry:
    """One compiled program and the slots a run binds."""
    compiled: Any   # compiler.CompiledProgram
    slots: list[Variable]
    feeders: list[Callable[[], Any]]
    receivers: list[Callable[..., Any]]
    fed: list[Any]
    results: list[np.ndarray]
    lock: threading.Lock = field(default_factory=threading.Lock)   # one run at a time binds the slots


class _FeedSlot:
    """The Feeder function of a cached program: calls this run's function, keeps the value."""
    def __init__(self, entry: Entry, index: int) -> None:
        self.entry, self.index = entry, index

    def __call__(self) -> Any:
        value = self.entry.feeders[self.index]()
        self.entry.fed[self.index] = value
        return value


class _ReceiveSlot:
    def __init__(self, entry: Entry, index: int) -> None:
        self.entry, self.index = entry, index

    def __call__(self, *arrays: np.ndarray) -> Any:
        return self.entry.receivers[self.index](*arrays)


class _Collect:
    """The Receiver of the values a realization hands back."""
    autodiff_internal = True   # reads no persistent tensor (ir.ops.internal_callback)

    def __init__(self, entry: Entry) -> None:
        self.entry = entry

    def __call__(self, *arrays: np.ndarray) -> None:
        self.entry.results[:] = [np.array(a, copy=True) for a in arrays]


@dataclass
class CacheInfo:
    hits: int = 0
    misses: int = 0
    size: int = 0


_cache: OrderedDict[Any, Entry] = OrderedDict()
_info = CacheInfo()


def compile_cache_info() -> CacheInfo:
    """Hits, misses and size of the structural compile cache (interactive reads and ad.jit)."""
    return CacheInfo(_info.hits, _info.misses, len(_cache))


def clear_compile_cache() -> None:
    """Forget every cached compiled program and zero the counts."""
    _cache.clear()
    _info.hits = _info.misses = 0


# --- the key ---------------------------------------------------------------------------

class _Keyer:
    """Walks a part once: its structural key and what a run binds (numbered by first use)."""

    def __init__(self, part: Part) -> None:
        self.part = part
        self.index: dict[int, int] = {}   # id(node) -> position in the walk
        self.slot_of: dict[int, int] = {}  # id(variable) or id(known node) -> slot
        self.binding = Binding()

    def slot(self, obj: Any, value: Variable | np.ndarray) -> int:
        if id(obj) not in self.slot_of:
            self.slot_of[id(obj)] = len(self.binding.slots)
            self.binding.slots.append(value)
        return self.slot_of[id(obj)]

    def ref(self, node: Node) -> Any:
        if node in self.part.inputs:
            return ("in", self.slot(node, self.part.inputs[node]))
        return self.index[id(node)]

    def block_key(self, nodes: list[Node]) -> tuple:
        # one loop with locals: this walk runs for every step of an interactive loop
        index, known, ref, out = self.index, self.part.inputs, self.ref, []
        for node in nodes:
            inputs = tuple([ref(i) if i in known else index[id(i)] for i in node.inputs])
            index[id(node)] = len(index)
            args = self.args_key(node) if node.op in _SPECIAL_ARGS else node.args
            out.append((node.op, inputs, node.shape, node.dtype, args))
        return tuple(out)

    def args_key(self, node: Node) -> Any:
        args = node.args
        if node.op in (Op.READ, Op.ASSIGN):
            var = args.var
            return ("var", self.slot(var, var), var.shape, var.dtype)
        if node.op is Op.FEEDER:
            self.binding.feeders.append(args.fn)
            self.binding.feeder_nodes.append(node)
            return ("feed", args.name, is_internal_callback(args.fn))
        if node.op is Op.RECEIVER:
            self.binding.receivers.append(args.fn)
            return ("receive", args.name, args.every, args.check, is_internal_callback(args.fn))
        if node.op is Op.FOR:
            body = self.block_key(args.body.nodes)
            index = self.index.get(id(args.index)) if args.index is not None else None
            return ("for", args.count, args.start, args.step, body, index)
        if node.op is Op.RANDOM:
            return ("random",)   # the seed is not structure: a reused program draws anew
        if node.op is Op.CONST:
            value = args.value
            return ("const", type(value).__name__, repr(value))   # 1 and 1.0, nan, -0.0 apart
        return args


def structural_key(part: Part, device: str, disable: frozenset[str]) -> tuple[Any, "_Keyer"]:
    """The cache key of a part, and the walk that made it (its slots and host functions)."""
    keyer = _Keyer(part)
    nodes = keyer.block_key(part.nodes)
    outputs = tuple(keyer.ref(n) for n in part.outputs)
    slots = tuple((v.shape, v.dtype) if isinstance(v, Variable) else (v.shape, dtype_name(v.dtype))
                  for v in keyer.binding.slots)
    switches = (tuple(sorted(disable)), os.environ.get("AUTODIFF_DISABLE", ""))
    return (device, switches, nodes, outputs, slots), keyer


# --- the canonical program -----------------------------------------------------------------

def _canonical(part: Part, keyer: "_Keyer", entry_: Entry) -> Program:
    """A copy of the part whose persistent tensors and known values are the entry's slots."""
    program = Program()
    program.internal = True
    entry_.slots = [program.new_variable(np.array(v.value if isinstance(v, Variable) else v), f"slot{i}")
                    for i, v in enumerate(keyer.binding.slots)]
    copies: dict[int, Node] = {}
    for node, value in part.inputs.items():   # known values: read at the top of the program
        slot = keyer.slot_of.get(id(node))
        if slot is not None:
            var = entry_.slots[slot]
            copies[id(node)] = program.add_node(Op.READ, (), var.shape, var.dtype, O.ReadArgs(var), "")
    counters = {"feed": 0, "receive": 0}

    def copy_block(nodes: list[Node]) -> None:
        for node in nodes:
            inputs = tuple(copies[id(i)] for i in node.inputs)
            copies[id(node)] = _copy_node(program, node, inputs, keyer, entry_, counters, copy_block, copies)

    copy_block(part.nodes)
    if part.outputs:
        outputs = tuple(copies[id(n)] for n in part.outputs)
        shape, dtype = SHAPE_RULES[Op.RECEIVER]([(n.shape, n.dtype) for n in outputs], None)
        program.add_node(Op.RECEIVER, outputs, tuple(shape), dtype,
                         O.ReceiverArgs(_Collect(entry_), "values", 1), "")
    return program


def _copy_node(program: Program, node: Node, inputs: tuple[Node, ...], keyer: _Keyer, entry_: Entry,
               counters: dict[str, int], copy_block: Callable[[list[Node]], None],
               copies: dict[int, Node]) -> Node:
    """The copy of one node: persistent tensors become slots, host functions indirections."""
    args = node.args
    if node.op in (Op.READ, Op.ASSIGN):
        var = entry_.slots[keyer.slot_of[id(args.var)]]
        args = O.ReadArgs(var) if node.op is Op.READ else O.AssignArgs(var)
    elif node.op is Op.FEEDER:
        slot = _FeedSlot(entry_, counters["feed"])
        args = O.FeederArgs(internal_callback(slot) if is_internal_callback(args.fn) else slot, args.name)
        counters["feed"] += 1
    elif node.op is Op.RECEIVER:
        slot = _ReceiveSlot(entry_, counters["receive"])   # internal where what it calls is (in the key)
        args = O.ReceiverArgs(internal_callback(slot) if is_internal_callback(args.fn) else slot, args.name,
                              args.every, args.check)
        counters["receive"] += 1
    elif node.op is Op.FOR:
        body = Block(parent=program.block)
        program.push_block(body)
        try:
            copy_block(args.body.nodes)
        finally:
            program.pop_block()
        index = copies.get(id(args.index)) if args.index is not None else None
        copy = program.add_node(Op.FOR, inputs, node.shape, node.dtype,
                                O.ForArgs(args.count, args.start, args.step, body, index), node.where)
        body.owner = copy
        return copy
    return program.add_node(node.op, inputs, node.shape, node.dtype, args, node.where)


# --- running a part ----------------------------------------------------------------------

def prepare(part: Part, device: str | None = None) -> tuple[Entry, Binding]:
    """The compiled program of a part (from the cache, else compiled now) and its binding."""
    compiler = entry.compiler()
    device = device or compiler.default_device()
    key, keyer = structural_key(part, device, frozenset())
    found = _cache.get(key)
    if found is None:
        _info.misses += 1
        found = Entry(None, [], [], [], [], [])
        found.compiled = compiler.compile_program(_canonical(part, keyer, found), device)
        _cache[key] = found
        while len(_cache) > MAX_ENTRIES:
            _cache.popitem(last=False)
    else:
        _info.hits += 1
        _cache.move_to_end(key)
    return found, keyer.binding


def run_part(part: Part, device: str | None = None) -> tuple[list[np.ndarray], Any]:
    """Run a part through the cache: (the values of its outputs, the run's Report).
    Persistent tensors get their new values; Feeder values come back in `part.inputs`."""
    found, binding = prepare(part, device)
    return run_prepared(found, binding, part)


def run_prepared(found: Entry, binding: Binding, part: Part) -> tuple[list[np.ndarray], Any]:
    """Bind the part's tensors, values and host functions to the entry's slots and run it."""
    with found.lock:
        return _run_bound(found, binding, part)


def _run_bound(found: Entry, binding: Binding, part: Part) -> tuple[list[np.ndarray], Any]:
    for slot, value in zip(found.slots, binding.slots):
        slot.stored = value.stored if isinstance(value, Variable) else value   # not downloaded
    found.feeders[:] = binding.feeders
    found.receivers[:] = binding.receivers
    found.fed[:] = [None] * len(binding.feeders)
    found.results[:] = []
    try:
        report = found.compiled.run()
    finally:
        for slot, value in zip(found.slots, binding.slots):
            if isinstance(value, Variable):
                value.stored = slot.stored
        for node, fed in zip(binding.feeder_nodes, found.fed):
            if fed is not None:
                part.inputs[node] = np.asarray(fed, dtype=node.dtype).reshape(node.shape)
    values = [np.asarray(a).reshape(n.shape) for a, n in zip(found.results, part.outputs)]
    return values, report
