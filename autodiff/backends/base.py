"""The run loop every device executor shares (OpenCL, CUDA): one place for its semantics.

A backend prepares, at compile time, one launch per kernel (or per megakernel) and turns
the program's commands into steps (`prepare_steps`); it then supplies only the device
operations: copy persistent tensors in and out, launch, copy a Feeder's value in, start
an asynchronous copy out for a Receiver, put a marker in the queue and wait for one, and
wait for the queue to drain. The loop here owns everything else:

- persistent tensors are uploaded before and downloaded after every run, also when the
  run fails, so the work done so far is kept; where every host callback is autodiff's own
  (`keeps_on_device`: an interactive step, an ad.jit function) the run instead leaves each
  value on the device as a `DeviceValue`, downloaded when it is first read, and the next
  run of the same program skips the upload of a tensor that still holds its unread value;
- Feeders are called in program order (`host.Feeds`; once one is slow, on a background
  thread ahead of the host, unless the "feeder_thread" switch is off);
- the host runs at most MAX_ITERATIONS_AHEAD loop iterations ahead of the device;
- Receivers are called back in program order as their data arrives; after one raises the
  run stops where `host.Failure` says (the same point on every backend), and the error is
  raised once the device has drained;
- a loop with an `IterationBatch` (a body that is one megakernel, its Feeders and its
  Receivers) runs several iterations per launch: their Feeder values go in one copy, their
  Receiver values come back in one, and each is delivered as if its iteration ran alone;
- a collective across ranks starts with an asynchronous read-back whose array the
  communication thread (`comm`) waits for and reduces through MPI, while the host goes on
  enqueuing the kernels up to the collective's wait; the wait writes the result back into
  the device buffer (with the "collective_overlap" switch off the start waits at once).
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .. import comm
from ..proc.index import Var
from ..ir.dtypes import ITEMSIZE
from ..proc.ir import (Buffer, CollectiveStartCmd, CollectiveWaitCmd, FeedCmd, KernelCmd, LoopCmd, ProcProgram,
                       ReceiveCmd)
from .host import (FAILURE_LEAD, Failure, Feeds, PendingReceive, deliver_receives, feeds_ahead, only_internal_callbacks,
                   receiver_due)

# the host waits when it gets this many loop iterations ahead of the device; the outermost
# loop's Receivers are delivered no later, which is what makes a failure stop where it says
MAX_ITERATIONS_AHEAD = FAILURE_LEAD

Step = tuple   # ("launch", launch) | ("feed", FeedCmd) | ("receive", ReceiveCmd) | ("loop", LoopCmd, steps, batch)
#               | ("collective_start", CollectiveStartCmd) | ("collective_wait", CollectiveWaitCmd)


@dataclass
class IterationBatch:
    """A loop run `per_launch` iterations per launch of `launch` (an iterated megakernel: the
    loop variable's argument is the first iteration, `count` the iterations of this launch,
    `rings` the device buffers holding `in_words` Feeder words and `out_words` Receiver words
    per iteration)."""
    launch: Any
    per_launch: int
    count: Var
    in_words: int
    out_words: int
    rings: Any = None


def prepare_steps(commands: list, launch_for: Callable[[KernelCmd], Any],
                  batches: dict[int, IterationBatch] | None = None) -> list[Step]:
    """The command list as steps; `launch_for(cmd)` is the prepared launch of a kernel command,
    `batches[id(loop)]` a loop's batch where it runs several iterations per launch.
    Consecutive commands with the same launch (the kernels of one megakernel) are one step."""
    batches = batches or {}
    steps: list[Step] = []
    for cmd in commands:
        if isinstance(cmd, KernelCmd):
            launch = launch_for(cmd)
            if not steps or steps[-1][0] != "launch" or steps[-1][1] is not launch:
                steps.append(("launch", launch))
        elif isinstance(cmd, FeedCmd):
            steps.append(("feed", cmd))
        elif isinstance(cmd, ReceiveCmd):
            steps.append(("receive", cmd))
        elif isinstance(cmd, CollectiveStartCmd):
            steps.append(("collective_start", cmd))
        elif isinstance(cmd, CollectiveWaitCmd):
            steps.append(("collective_wait", cmd))
        elif isinstance(cmd, LoopCmd):
            steps.append(("loop", cmd, prepare_steps(cmd.body, launch_for, batches), batches.get(id(cmd))))
    return steps


class DeviceValue:
    """A persistent tensor's value that a run left on the device (Variable.stored), read
    back the first time `array()` is called. Handing values out this way saves the download
    of every tensor nobody reads between two runs, and, when the next run of the same
    program finds the value unread in the tensor it binds, that tensor's upload too: an
    interactive training step or an ad.jit step then moves only its inputs and outputs.

    `successor`: set when the next run kept the value on the device and updated it; reading
    this one then gives that run's value (the value it held is gone)."""
    __slots__ = ("executor", "buffer", "run", "shape", "dtype", "nbytes", "_array", "kept", "successor",
                 "__weakref__")

    def __init__(self, executor: "DeviceExecutor", buffer: Buffer, run: int) -> None:
        self.executor, self.buffer, self.run = executor, buffer, run
        self.shape, self.dtype, self.nbytes = tuple(buffer.shape), np.dtype(buffer.dtype), buffer.nbytes
        self._array: np.ndarray | None = None
        self.kept = False                          # a later run of the executor works on it in place
        self.successor: DeviceValue | None = None

    @property
    def unread(self) -> bool:
        return self._array is None and not self.kept

    def array(self) -> np.ndarray:
        # a run of the executor in progress (a step in the background) finishes first
        with self.executor.run_lock:
            if self.successor is not None:
                return self.successor.array()
            if self.kept:   # only a callback inside the run could get here, and those are ours
                raise RuntimeError(f"'{self.buffer.name}' is being updated by the run in progress")
            if self._array is None:
                self._array = self.executor.download(self.buffer)
            return self._array


class DeviceExecutor:
    """Base of the executors that run a procedural program on a device queue.

    Subclasses set `program`, `steps` and `feeds_ahead` and implement the device operations
    below; `run()` executes the whole program once.
    """
    program: ProcProgram
    steps: list[Step]
    feeds_ahead: int
    runs: int = 0
    kernels_launched: int = 0
    overlap_collectives: bool = True    # False with the "collective_overlap" switch off
    keeps_on_device: bool = False       # see DeviceValue; set by `keep_values_on_device`

    # --- device operations a backend supplies ----------------------------------------
    def upload(self, buffer: Buffer, host: np.ndarray) -> None:
        """Start copying a persistent tensor's value to the device (without blocking)."""
        raise NotImplementedError

    def download(self, buffer: Buffer) -> np.ndarray:
        """A persistent tensor's value, once the queue has drained (blocking)."""
        raise NotImplementedError

    def download_all(self, buffers: list[Buffer]) -> list[np.ndarray]:
        """Every persistent tensor's value after a run (a backend may wait once for all)."""
        return [self.download(b) for b in buffers]

    def launch(self, launch: Any, values: dict[Var, int]) -> None:
        """Enqueue one prepared launch; `values` holds the loop variables it may read."""
        raise NotImplementedError

    def feed(self, cmd: FeedCmd, value: np.ndarray) -> None:
        """Start copying a Feeder's value into its staging buffer (without blocking)."""
        raise NotImplementedError

    def read_back(self, buffers: list[Buffer]) -> tuple[list[np.ndarray], Callable[[], bool], Callable[[], None]]:
        """Start copying buffers to host arrays: (arrays, ready(), wait())."""
        raise NotImplementedError

    def feed_ring(self, batch: IterationBatch, values: list[np.ndarray]) -> None:
        """Start copying the Feeder values of one launch of `batch` (in program order) to its ring."""
        raise NotImplementedError

    def read_ring(self, batch: IterationBatch, count: int) -> tuple[np.ndarray, Callable[[], bool], Callable[[], None]]:
        """Start copying the Receiver words of `count` iterations from its ring: (uint32 array, ready(), wait())."""
        raise NotImplementedError

    def write(self, buffer: Buffer, host: np.ndarray) -> None:
        """Start copying a host array into a temporary (a collective's result), keeping the
        array alive until the copy is done (without blocking)."""
        raise NotImplementedError

    def mark(self) -> Any:
        """A marker in the queue: everything enqueued before it is done once it is."""
        raise NotImplementedError

    def wait(self, marker: Any) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Wait until the queue has drained."""
        raise NotImplementedError

    def release_marked(self, marker: Any) -> None:
        """Host memory kept alive for copies enqueued before `marker` may go now."""

    def release_all(self) -> None:
        """The queue has drained: every host array kept for a copy may go."""

    def run_iteration(self, loop: LoopCmd, body: list[Step]) -> None:
        """One iteration of a loop body (CUDA replays it as a graph where it can)."""
        self.run_steps(body)

    def marks_enabled(self) -> bool:
        """False while a backend only records launches (CUDA graph capture)."""
        return True

    # --- the run loop ----------------------------------------------------------------
    def keep_values_on_device(self, commands: list, disable: frozenset[str]) -> None:
        """Hand persistent tensors out as DeviceValues where no callback of the user's could read
        one during a run (it would see the value from before the run, as a download gives)."""
        self.keeps_on_device = "device_resident" not in disable and only_internal_callbacks(commands)
        self.run_lock = threading.RLock()
        self.handed_out: list[weakref.ref[DeviceValue]] = []

    def run(self) -> None:
        if not self.keeps_on_device:
            return self._run({})
        with self.run_lock:
            persistent = [b for b in self.program.buffers if b.kind == "persistent" and b.nbytes]
            kept: dict[int, DeviceValue] = {}
            for b in persistent:
                value = b.var.stored
                if (isinstance(value, DeviceValue) and value.executor is self and value.buffer is b
                        and value.run == self.runs - 1 and value.unread):
                    kept[b.id] = value
            # the values of the last run that someone still holds unread go to the host before this
            # run overwrites them (a bound tensor's own unread value stays: it is this run's input)
            held = [v for v in (r() for r in self.handed_out) if v is not None and v.unread and v.buffer.id not in kept]
            for value, array in zip(held, self.download_all([v.buffer for v in held])):
                value._array = array
            for value in kept.values():
                value.kept = True
            self._run(kept)

    def _run(self, kept: dict[int, DeviceValue]) -> None:
        persistent = [b for b in self.program.buffers if b.kind == "persistent" and b.nbytes]
        for b in persistent:
            if b.id not in kept:
                self.upload(b, np.ascontiguousarray(b.var.value, dtype=b.dtype))
        self.values: dict[Var, int] = {self.program.run_counter: self.runs}
        self.iterations: list[int] = []
        self.pending: list[PendingReceive] = []
        self.failure = Failure()
        self.feeds = Feeds(self.program.commands, self.feeds_ahead)
        self.collectives: dict[int, Any] = {}   # id of a started Collective -> its Future
        try:
            self.run_steps(self.steps)
            self.finish()
            self.deliver(wait=True)
        finally:
            self.feeds.close()
            self.finish()
            self.release_all()
            if self.keeps_on_device:
                self._hand_out(persistent, kept)
            else:
                for b, value in zip(persistent, self.download_all(persistent)):
                    b.var.value = value
            self.runs += 1
        if self.failure.error is not None:
            raise self.failure.error

    def _hand_out(self, persistent: list[Buffer], kept: dict[int, DeviceValue]) -> None:
        """Every persistent tensor gets its value as a DeviceValue of this run."""
        self.handed_out = []
        for b in persistent:
            value = DeviceValue(self, b, self.runs)
            if b.id in kept:
                kept[b.id].successor = value
            b.var.stored = value
            self.handed_out.append(weakref.ref(value))

    def run_steps(self, steps: list[Step]) -> None:
        for step in steps:
            if self.failure.error is not None and not self.iterations:
                return   # outside loops a failure stops at once
            kind = step[0]
            if kind == "launch":
                self.launch(step[1], self.values)
            elif kind == "feed":
                cmd = step[1]
                value = self.feeds.take(cmd, self.iterations)
                if cmd.buffer.nbytes:
                    self.feed(cmd, value)
            elif kind == "receive":
                self.receive(step[1])
            elif kind == "collective_start":
                self.start_collective(step[1])
            elif kind == "collective_wait":
                self.wait_collective(step[1])
            else:
                self.run_loop(step[1], step[2], step[3])

    def receive(self, cmd: ReceiveCmd) -> None:
        if self.failure.error is not None or not receiver_due(cmd.every, self.iterations):
            return
        arrays, ready, wait = self.read_back(cmd.buffers)
        self.pending.append(PendingReceive(ready=ready, wait=wait, arrays=arrays, fn=cmd.fn, name=cmd.name,
                                           iterations=tuple(self.iterations)))
        if not self.iterations:
            self.deliver(wait=True)   # outside loops: known before anything after it is enqueued

    def start_collective(self, cmd: CollectiveStartCmd) -> None:
        c = cmd.collective
        arrays, _, wait = self.read_back(c.sources)

        def value() -> np.ndarray:   # called on the communication thread
            wait()
            return arrays[0] if len(arrays) == 1 else np.concatenate([a.reshape(-1) for a in arrays])
        future = comm.start(c.kind, value, c.op, c.root)
        if not self.overlap_collectives:
            comm.wait(future)
        self.collectives[id(c)] = future

    def wait_collective(self, cmd: CollectiveWaitCmd) -> None:
        c = cmd.collective
        result = comm.wait(self.collectives.pop(id(c)))
        if c.out.nbytes:
            self.write(c.out, result)

    def run_loop(self, loop: LoopCmd, body: list[Step], batch: IterationBatch | None = None) -> None:
        outermost = not self.iterations
        self.iterations.append(0)
        marks: list[tuple[int, int, Any]] = []   # (first iteration, last iteration, marker after them)
        ran = 0
        try:
            while ran < loop.count:
                first = ran
                last = min(loop.count, first + (batch.per_launch if batch else 1)) - 1
                # keep the host at most MAX_ITERATIONS_AHEAD iterations ahead of the device; in the
                # outermost loop, the Receivers of iterations that far back are delivered now, so
                # a failure among them is known before anything past where it stops is launched
                while marks and marks[0][0] < last - MAX_ITERATIONS_AHEAD:
                    _, done, marker = marks.pop(0)
                    self.wait(marker)
                    self.release_marked(marker)
                    if outermost:
                        self.deliver(wait=True, until=lambda p, done=done: p.iterations[0] <= done)
                if outermost and not self.failure.runs_outer_iteration(first):
                    break
                while outermost and not self.failure.runs_outer_iteration(last):
                    last -= 1
                self.iterations[-1] = first
                self.values[loop.variable] = first
                if batch is None:
                    self.run_iteration(loop, body)
                    ran = first + 1
                else:
                    ran = self.run_batch(batch, loop, body, first, last)
                if not self.marks_enabled():
                    continue
                marks.append((first, ran - 1, self.mark()))
                if self.pending:
                    self.deliver(wait=False)
        finally:
            self.iterations.pop()
            if outermost:
                self.finish()
                self.deliver(wait=True)
                self.failure.outer_loop_done(ran)

    def run_batch(self, batch: IterationBatch, loop: LoopCmd, body: list[Step], first: int, last: int) -> int:
        """Iterations first..last in one launch; returns the iteration after the last one run.
        A Feeder that raises stops the batch before its iteration, as it stops a plain loop."""
        feeds = [step[1] for step in body if step[0] == "feed"]
        receives = [step[1] for step in body if step[0] == "receive"]
        values: list[np.ndarray] = []
        count = 0
        try:
            for i in range(first, last + 1):
                self.iterations[-1] = i
                values += [self.feeds.take(cmd, self.iterations) for cmd in feeds]
                count += 1
        finally:
            if count:
                self.iterations[-1] = first
                self.feed_ring(batch, values)
                self.values[batch.count] = count
                self.launch(batch.launch, self.values)
                self._receive_batch(batch, receives, first, count)
        return first + count

    def _receive_batch(self, batch: IterationBatch, receives: list[ReceiveCmd], first: int, count: int) -> None:
        """Each Receiver of each iteration of a batch, delivered in order as if run alone."""
        due = [(i, cmd) for i in range(first, first + count) for cmd in receives
               if self.failure.error is None and receiver_due(cmd.every, self.iterations[:-1] + [i])]
        if not due:
            return
        words, ready, wait = self.read_ring(batch, count)
        outer = tuple(self.iterations[:-1])
        starts: dict[int, int] = {}   # id of a Receiver -> its first word in an iteration's slot
        at = 0
        for cmd in receives:
            starts[id(cmd)] = at
            at += sum(b.nbytes // ITEMSIZE for b in cmd.buffers)
        for i, cmd in due:
            at = (i - first) * batch.out_words + starts[id(cmd)]
            arrays = []
            for b in cmd.buffers:
                arrays.append(words[at:at + b.nbytes // ITEMSIZE].view(b.dtype).reshape(b.shape))
                at += b.nbytes // ITEMSIZE
            self.pending.append(PendingReceive(ready=ready, wait=wait, arrays=arrays, fn=cmd.fn, name=cmd.name,
                                               iterations=outer + (i,)))

    def deliver(self, wait: bool, until: Callable[[PendingReceive], bool] = lambda p: True) -> None:
        deliver_receives(self.pending, wait, self.failure, until)


def feeds_ahead_for(commands: list, disable: frozenset[str]) -> int:
    """Values the feeder thread may hold ahead (0: no thread, with "feeder_thread" off)."""
    return 0 if "feeder_thread" in disable else feeds_ahead(commands)
