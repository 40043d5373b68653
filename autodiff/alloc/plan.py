"""Memory planning for the procedural IR: loop-aware liveness, then tetris placement.

Time is the position of a command in program order (a loop's body spans a range of
steps). A temporary lives from the kernel that writes it to its last reader,
inclusive on both ends: a buffer read by a kernel lives until that kernel ends and
one written by a kernel lives from its start, so two buffers that meet inside one
kernel never share bytes (a pitfall seen in an earlier compiler of this kind). A value read inside a
loop but written before it lives until the loop's last iteration ends.

In-place reuse is the one exception: an elementwise kernel may write its output
over an input that dies in that kernel when every work-item reads exactly the
element it writes (the input is loaded only at the output's own indices). The two
buffers then form one group placed as one rectangle.

Persistent tensors and Feeder staging buffers live outside the arena.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..loggers import get_logger
from ..proc.index import Index
from ..proc.ir import (Buffer, CollectiveStartCmd, CollectiveWaitCmd, Command, Kernel, KernelCmd, Load, LoopCmd, ProcProgram, ReceiveCmd, Reduce,
                       loads_of, walk_expr)
from . import placement

ALIGNMENT = 64   # bytes; OpenCL's CL_DEVICE_MEM_BASE_ADDR_ALIGN is at most 1024 bits on common devices


@dataclass
class Lifetime:
    buffer: Buffer
    start: int          # first step it holds a value (its writer)
    end: int            # last step it is read, inclusive


@dataclass
class MemoryPlan:
    offsets: dict[int, int]                 # temp buffer id -> byte offset in the arena
    arena_bytes: int
    lower_bound_bytes: int
    no_reuse_bytes: int
    persistent_bytes: int
    feed_bytes: int
    lifetimes: dict[int, Lifetime] = field(default_factory=dict)
    in_place: list[tuple[int, int]] = field(default_factory=list)   # (input id, output id) sharing bytes
    strategy: str = ""
    seconds: float = 0.0


def _aligned(nbytes: int) -> int:
    return max(ALIGNMENT, (nbytes + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT)


def _steps(program: ProcProgram) -> tuple[dict[int, int], dict[int, tuple[int, int]], dict[int, list[int]]]:
    """Step of every command, [first, last] step of every loop body, and each command's loop path."""
    step_of: dict[int, int] = {}
    span: dict[int, tuple[int, int]] = {}
    path_of: dict[int, list[int]] = {}
    step = 0
    # frames: (iterator over commands, loop command or None, path, first step)
    stack: list[tuple[object, LoopCmd | None, list[int], int]] = [(iter(program.commands), None, [], 0)]
    while stack:
        commands, loop, path, first = stack[-1]
        cmd = next(commands, None)
        if cmd is None:
            stack.pop()
            if loop is not None:
                span[id(loop)] = (first, step - 1)
            continue
        path_of[id(cmd)] = path
        if isinstance(cmd, LoopCmd):
            stack.append((iter(cmd.body), cmd, path + [id(cmd)], step))
            continue
        step_of[id(cmd)] = step
        step += 1
    return step_of, span, path_of


def _reads(cmd: Command) -> list[int]:
    if isinstance(cmd, KernelCmd):
        return [load.buffer_id for load in loads_of(cmd.kernel.value)]
    if isinstance(cmd, ReceiveCmd):
        return [b.id for b in cmd.buffers]
    if isinstance(cmd, CollectiveStartCmd):
        return [b.id for b in cmd.collective.sources]
    return []


def lifetimes(program: ProcProgram) -> dict[int, Lifetime]:
    step_of, span, path_of = _steps(program)
    temps = {b.id: b for b in program.buffers if b.kind == "temp"}
    written: dict[int, tuple[int, list[int]]] = {}
    result: dict[int, Lifetime] = {}
    for cmd in program.walk():
        if isinstance(cmd, LoopCmd):
            continue
        at, path = step_of[id(cmd)], path_of[id(cmd)]
        for buffer_id in _reads(cmd):
            if buffer_id not in temps or buffer_id not in written:
                continue
            _, write_path = written[buffer_id]
            end = at
            # read inside a loop the write is outside of: live until that loop's last step
            for loop_id in path:
                if loop_id not in write_path:
                    end = max(end, span[loop_id][1])
                    break
            result[buffer_id].end = max(result[buffer_id].end, end)
        out = cmd.kernel.out if isinstance(cmd, KernelCmd) else \
            cmd.collective.out if isinstance(cmd, CollectiveWaitCmd) else None
        if out is not None and out.id in temps:
            written[out.id] = (at, path)
            result[out.id] = Lifetime(out, at, at)
    return result


def in_place_candidates(program: ProcProgram, lives: dict[int, Lifetime]) -> list[tuple[int, int]]:
    """(input, output) temp pairs where the kernel may write over its dying input."""
    step_of, _, _ = _steps(program)
    pairs = []
    taken: set[int] = set()
    for cmd in program.walk():
        if not isinstance(cmd, KernelCmd):
            continue
        kernel = cmd.kernel
        out = kernel.out
        if out.id not in lives or any(isinstance(e, Reduce) for e in walk_expr(kernel.value)):
            continue
        identity = tuple(Index.of(v) for v in kernel.variables)
        loads = loads_of(kernel.value)
        for load in loads:
            life = lives.get(load.buffer_id)
            if life is None or load.buffer_id in taken or life.end != step_of[id(cmd)]:
                continue
            if life.buffer.nbytes != out.nbytes or life.buffer.dtype != out.dtype:
                continue
            same = [l for l in loads if l.buffer_id == load.buffer_id]
            if all(l.indices == identity for l in same):
                pairs.append((load.buffer_id, out.id))
                taken.add(load.buffer_id)
                taken.add(out.id)
                break
    return pairs


def plan_memory(program: ProcProgram, reuse: bool = True, time_budget_s: float = 1.0) -> MemoryPlan:
    """Offsets for every temporary in one arena; `reuse=False` gives each its own bytes."""
    lives = lifetimes(program)
    persistent = sum(b.nbytes for b in program.buffers if b.kind == "persistent")
    feeds = sum(b.nbytes for b in program.buffers if b.kind == "feed")
    temps = [b for b in program.buffers if b.kind == "temp" and b.id in lives]
    no_reuse = sum(_aligned(b.nbytes) for b in temps)
    if not reuse:
        offsets, at = {}, 0
        for b in temps:
            offsets[b.id] = at
            at += _aligned(b.nbytes)
        return MemoryPlan(offsets, at, at, no_reuse, persistent, feeds, lives, [], "no reuse")
    pairs = in_place_candidates(program, lives)
    # union the in-place pairs into groups placed as one rectangle
    group_of = {b.id: b.id for b in temps}

    def root(i: int) -> int:
        while group_of[i] != i:
            group_of[i] = group_of[group_of[i]]
            i = group_of[i]
        return i

    for a, b in pairs:
        group_of[root(b)] = root(a)
    groups: dict[int, list[int]] = {}
    for b in temps:
        groups.setdefault(root(b.id), []).append(b.id)
    rectangles = [placement.Lifetime(g, min(lives[i].start for i in members), max(lives[i].end for i in members) + 1,
                                   max(_aligned(lives[i].buffer.nbytes) for i in members))
                  for g, members in groups.items()]
    placed = placement.place_buffers(rectangles, alignment=ALIGNMENT, time_budget_s=time_budget_s)
    offsets = {i: placed.offsets[g] for g, members in groups.items() for i in members}
    get_logger("alloc").info("arena %d B (liveness lower bound %d B, no reuse %d B) for %d temporaries: %s, %.3f s",
                             placed.height, placed.lower_bound, no_reuse, len(temps), placed.strategy, placed.seconds)
    return MemoryPlan(offsets, placed.height, placed.lower_bound, no_reuse, persistent, feeds, lives, pairs,
                      placed.strategy, placed.seconds)


def validate_plan(program: ProcProgram, plan: MemoryPlan) -> None:
    """No two temporaries live at once share a byte (in-place pairs excepted)."""
    shared = {frozenset(p) for p in plan.in_place}
    lives = sorted(plan.lifetimes.values(), key=lambda l: l.start)
    for i, a in enumerate(lives):
        a_lo = plan.offsets[a.buffer.id]
        for b in lives[i + 1:]:
            if b.start > a.end:
                break
            b_lo = plan.offsets[b.buffer.id]
            overlap = a_lo < b_lo + b.buffer.nbytes and b_lo < a_lo + a.buffer.nbytes
            if overlap and frozenset((a.buffer.id, b.buffer.id)) not in shared and not _chained(a, b, plan):
                raise placement.PlacementError(
                    f"{a.buffer.name} [{a.start}, {a.end}] and {b.buffer.name} [{b.start}, {b.end}] share bytes")


def _chained(a: Lifetime, b: Lifetime, plan: MemoryPlan) -> bool:
    """Buffers of one in-place chain (a -> b -> c) may share bytes without touching directly."""
    group: dict[int, int] = {}
    for x, y in plan.in_place:
        group.setdefault(x, x)
        group[y] = group[x]
    return a.buffer.id in group and group.get(a.buffer.id) == group.get(b.buffer.id)


def format_plan(program: ProcProgram, plan: MemoryPlan) -> str:
    """The plan as a table: every temporary's offset, size and lifetime; then the totals."""
    rows = sorted(plan.lifetimes.values(), key=lambda l: (plan.offsets[l.buffer.id], l.start))
    lines = [f"{'buffer':<16} {'offset':>10} {'bytes':>10} {'live':>13}  note"]
    collectives = {c.collective.out.id: c.collective.name for c in program.walk() if isinstance(c, CollectiveWaitCmd)}
    for life in rows:
        b = life.buffer
        note = f"result of {collectives[b.id]}" if b.id in collectives else ""
        for src, dst in plan.in_place:
            if dst == b.id:
                note = f"writes over {next(x.name for x in program.buffers if x.id == src)}"
        lines.append(f"{b.name:<16} {plan.offsets[b.id]:>10} {b.nbytes:>10} {f'[{life.start}, {life.end}]':>13}  {note}")
    lines.append(f"arena {plan.arena_bytes} bytes; liveness lower bound {plan.lower_bound_bytes}; "
                 f"no reuse {plan.no_reuse_bytes}; persistent {plan.persistent_bytes}; feed staging "
                 f"{plan.feed_bytes}; placement '{plan.strategy}' in {plan.seconds:.3f} s")
    return "\n".join(lines)
