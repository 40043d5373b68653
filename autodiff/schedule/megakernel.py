"""Which small kernels run together as one megakernel launch, and where their runs are cut.

A megakernel runs consecutive small kernels as the stages of one single-work-group
launch (see `render_megakernel`): for kernels of a few thousand elements the launch,
not the work, is the cost. PoCL's build time grows faster than linearly with the
stages of one kernel (measured: 45 stages 7.7 s cold, 275 stages 111 s), so runs are
cut into pieces of at most `MAX_STAGES`, and the cuts follow the repeats of the run:
the kernels of a 6-layer model are the kernels of one layer six times, so a piece
cut at the same place in every layer has the same stages, renders to the same
source (offsets come from a table, not the text) and is built once.
"""
from __future__ import annotations

from typing import Callable, Hashable, Sequence

from ..proc.cost import kernel_work
from ..proc.ir import FeedCmd, Kernel, KernelCmd, LoopCmd, ProcProgram, ReceiveCmd

MAX_ELEMENTS = 1 << 15      # a kernel this big or bigger keeps its own launch (all cores)
MAX_WORK = 1 << 19          # kernel_work of one stage (a megakernel runs on one core)
MAX_STAGES = 48             # stages of one megakernel
# stages built in all distinct megakernels of a program: past it, the remaining pieces
# launch their kernels one by one (single kernels share sources across layers anyway)
MAX_DISTINCT_STAGES = 192
SHORT_UNIT = 4              # a repeating unit this short is grouped, copies per piece
# the longest repeat looked for (a layer's kernels, forward or backward) in stages
MAX_PERIOD = 8 * MAX_STAGES
# iterations of a loop run in one launch of its megakernel: enough that one launch does about
# this much work (kernel_work), at most MAX_ITERATIONS_PER_LAUNCH (well inside FAILURE_LEAD,
# so that after a failure the run still stops where every backend stops)
ITERATED_WORK = 1 << 24
MAX_ITERATIONS_PER_LAUNCH = 32
# the Feeder and Receiver values of one launch's iterations, staged in device rings (and twice
# that many Feeder values held on the host by the feeder thread): at most this many bytes
MAX_RING_BYTES = 16 << 20


def is_small(kernel: Kernel) -> bool:
    """Cheap enough to run on one work-group: launch cost would dominate its own launch."""
    return kernel.out.size <= MAX_ELEMENTS and kernel_work(kernel) <= MAX_WORK


def small_runs(program: ProcProgram) -> list[list[KernelCmd]]:
    """Maximal runs of consecutive small kernels (two or more) in every command list."""
    runs: list[list[KernelCmd]] = []
    stack = [program.commands]
    while stack:
        commands = stack.pop()
        stack.extend(c.body for c in reversed(commands) if isinstance(c, LoopCmd))
        current: list[KernelCmd] = []
        for cmd in commands + [None]:
            if isinstance(cmd, KernelCmd) and is_small(cmd.kernel):
                current.append(cmd)
                continue
            if len(current) >= 2:
                runs.append(current)
            current = []
    return runs


def repeats(s: Sequence[Hashable], max_period: int) -> list[int]:
    """period[j]: the length of the unit that repeats from j on, else 0: of the longest p
    (2 <= p <= max_period) with s[j:j+p] == s[j+p:j+2p], its shortest divisor d >= 2 with
    s[j:j+p] made of p/d copies of s[j:j+d]. (Six copies of a layer's kernels give the
    layer, not two layers; "abab" inside a layer gives 2 only where no longer unit repeats.)"""
    n = len(s)
    period = [0] * n
    for j in range(n):
        for p in range(min(max_period, (n - j) // 2), 1, -1):
            if s[j] == s[j + p] and s[j:j + p] == s[j + p:j + 2 * p]:
                unit = s[j:j + p]
                period[j] = next(d for d in range(2, p + 1) if p % d == 0 and unit[:p - d] == unit[d:])
                break
    return period


def cut_run(s: Sequence[Hashable], known: dict[Hashable, set[tuple]], max_stages: int = MAX_STAGES,
            max_period: int = MAX_PERIOD) -> list[int]:
    """The lengths of the pieces a run of stage signatures `s` is cut into.

    At each position, in order of preference: a piece already cut (in this run or an
    earlier one; `known` maps a first signature to pieces) that matches here, the longest
    first; else, where a repeat of period p starts, as many copies of a unit of at most
    `SHORT_UNIT` stages as fit in one piece, or a longer unit cut into equal pieces of at
    most `max_stages` (later copies then match them); else everything up to the next
    position where one of those applies, at most `max_stages`.
    """
    period = repeats(s, max_period)
    n = len(s)

    def known_at(i: int) -> int:
        return max((len(k) for k in known.get(s[i], ()) if tuple(s[i:i + len(k)]) == k), default=0)

    def remember(i: int, length: int) -> None:
        if length >= 2:
            known.setdefault(s[i], set()).add(tuple(s[i:i + length]))

    lengths: list[int] = []
    i = 0
    while i < n:
        take = known_at(i)
        if take:
            lengths.append(take)
        elif period[i] and period[i] <= SHORT_UNIT:
            # a short unit (the same update of many tensors): as many copies as fit in one
            # piece, so 32 equal stages are one launch, not 16 launches of 2 (a longer unit,
            # a layer, stays one piece per copy: the last layer often differs at its end)
            p = period[i]
            copies = 1
            while copies * p < max_stages and tuple(s[i + copies * p:i + (copies + 1) * p]) == tuple(s[i:i + p]):
                copies += 1
            take = p * min(copies, max_stages // p)
            remember(i, take)
            lengths.append(take)
        elif period[i]:
            p = period[i]
            count = -(-p // max_stages)
            at = i
            for k in range(count):          # p split as evenly as it goes
                size = p // count + (1 if k < p % count else 0)
                remember(at, size)
                lengths.append(size)
                at += size
            take = p
        else:
            take = 1
            while i + take < n and take < max_stages and not (period[i + take] or known_at(i + take)):
                take += 1
            remember(i, take)
            lengths.append(take)
        i += take
    return lengths


def plan_megakernels(program: ProcProgram, signature: Callable[[Kernel], str]) -> list[list[KernelCmd]]:
    """The groups of kernel commands that launch as one megakernel each, in program order.

    `signature(kernel)` is the text of the kernel's stage: equal text, equal stage.
    """
    ids: dict[str, int] = {}
    known: dict[Hashable, set[tuple]] = {}
    built: set[tuple] = set()
    distinct_stages = 0
    groups: list[list[KernelCmd]] = []
    for run in small_runs(program):
        s = [ids.setdefault(signature(cmd.kernel), len(ids)) for cmd in run]
        at = 0
        for length in cut_run(s, known):
            piece, key = run[at:at + length], tuple(s[at:at + length])
            at += length
            if length < 2:
                continue
            if key not in built:
                if distinct_stages + length > MAX_DISTINCT_STAGES:
                    continue
                built.add(key)
                distinct_stages += length
            groups.append(piece)
    return groups


def _feeds_then_kernels_and_receives(body: list) -> bool:
    """Feeders first, then kernels and Receivers in any order, nothing else (no inner loop)."""
    feeds = next((n for n, c in enumerate(body) if not isinstance(c, FeedCmd)), len(body))
    rest = body[feeds:]
    return (all(isinstance(c, (KernelCmd, ReceiveCmd)) for c in rest)
            and any(isinstance(c, KernelCmd) for c in rest))


def iterated_loops(program: ProcProgram, groups: list[list[KernelCmd]]) -> list[tuple[LoopCmd, int, int]]:
    """(loop, index of its megakernel in `groups`, iterations per launch) of every loop whose
    body is Feeders, then the kernels of one megakernel and Receivers: such a loop can run
    several iterations per launch (codegen's `Iterated`), which saves the host the enqueues of
    a launch and of its copies per iteration (on PoCL ~10-40 us each, more than a small
    step's kernel time). A body with much work per iteration gains little and keeps its
    launch per iteration."""
    group_of = {tuple(id(c) for c in group): n for n, group in enumerate(groups)}
    found: list[tuple[LoopCmd, int, int]] = []
    stack = [program.commands]
    while stack:
        commands = stack.pop()
        for cmd in commands:
            if not isinstance(cmd, LoopCmd):
                continue
            stack.append(cmd.body)
            if cmd.count < 2 or not _feeds_then_kernels_and_receives(cmd.body):
                continue
            kernels = tuple(id(c) for c in cmd.body if isinstance(c, KernelCmd))
            if kernels not in group_of:
                continue
            work = sum(kernel_work(c.kernel) for c in cmd.body if isinstance(c, KernelCmd))
            staged = sum(c.buffer.nbytes for c in cmd.body if isinstance(c, FeedCmd)) + sum(
                b.nbytes for c in cmd.body if isinstance(c, ReceiveCmd) for b in c.buffers)
            per_launch = min(MAX_ITERATIONS_PER_LAUNCH, cmd.count, max(1, ITERATED_WORK // max(work, 1)),
                             MAX_RING_BYTES // max(staged, 1))
            if per_launch >= 2:
                found.append((cmd, group_of[kernels], per_launch))
    return found
