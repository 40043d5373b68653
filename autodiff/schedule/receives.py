"""Receivers last in loop bodies: each one after the kernels that cannot change what it reads.

A Receiver between two kernels cuts the run of small kernels there (its read-back has to
see the buffer before the kernels after it may reuse the memory), so a loop body with a
loss Receiver in its middle launches two megakernels per iteration, and cannot run several
iterations per launch. Moved behind the kernels that follow it, it reads the same values:
temporaries are written once, and it is not moved past a kernel or Feeder that writes a
buffer it reads (an in-place update of a persistent tensor it reports), nor past an inner
loop or any other command. The memory plan, made after this, keeps the received buffers
alive until their Receiver. Receivers keep their order among themselves.

Only inside loops: there a Receiver that raises lets its iteration finish anyway
(`host.Failure`); outside any loop it stops the run at once, so what runs after it must
stay after it.
"""
from __future__ import annotations

from ..proc.ir import Command, FeedCmd, KernelCmd, LoopCmd, ProcProgram, ReceiveCmd


def sink_receives(program: ProcProgram) -> ProcProgram:
    """Every loop body of `program` with its Receivers moved as late as they can go (in place)."""
    stack = [c for c in program.commands if isinstance(c, LoopCmd)]
    while stack:
        loop = stack.pop()
        loop.body = _sunk(loop.body)
        stack.extend(c for c in loop.body if isinstance(c, LoopCmd))
    return program


def _written(cmd: Command) -> int | None:
    """The buffer a kernel or Feeder writes; None for any other command."""
    if isinstance(cmd, KernelCmd):
        return cmd.kernel.out.id
    if isinstance(cmd, FeedCmd):
        return cmd.buffer.id
    return None


def _sunk(body: list[Command]) -> list[Command]:
    out: list[Command] = []
    waiting: list[ReceiveCmd] = []
    for cmd in body:
        if isinstance(cmd, ReceiveCmd):
            waiting.append(cmd)
            continue
        written = _written(cmd)
        # the Receivers up to the last one reading what `cmd` writes go before it (in order)
        stay = len(waiting) if written is None else max(
            (n + 1 for n, r in enumerate(waiting) if any(b.id == written for b in r.buffers)), default=0)
        out += waiting[:stay]
        waiting = waiting[stay:]
        out.append(cmd)
    return out + waiting
