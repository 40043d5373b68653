"""Host-side work shared by every device: calling Feeders and Receivers with clear errors."""
from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import FeederError, IndexOutOfRangeError, ReceiverError
from ..ir.dtypes import INT
from ..ir.ops import is_internal_callback
from ..proc.ir import FeedCmd, LoopCmd, ReceiveCmd

INT32_MIN, INT32_MAX = int(np.iinfo(np.int32).min), int(np.iinfo(np.int32).max)

# the Recorder of the profiled run in progress (autodiff/profiler.py), None otherwise: Feeder
# and Receiver calls are timed through it; with profiling off this is one test per callback
recorder = None


def set_recorder(new: object) -> None:
    global recorder
    recorder = new


def where_in_loops(iterations: Sequence[int]) -> str:
    if not iterations:
        return "outside any loop"
    return "iteration " + ", ".join(str(i) for i in iterations)


def call_feeder(fn: Callable[[], object], name: str, shape: tuple[int, ...], dtype: str,
                iterations: Sequence[int]) -> np.ndarray:
    """fn() checked against the Feeder's shape and dtype (no silent conversion)."""
    try:
        value = fn() if recorder is None else recorder.host_call(fn, (), f"Feeder {name}", "feeder")
    except Exception as err:
        raise FeederError(f"Feeder '{name}' raised at {where_in_loops(iterations)}: {err!r}") from err
    if dtype == INT and isinstance(value, np.ndarray) and value.dtype.kind in "iu" and value.dtype != INT:
        value = narrow_to_int32(value, f"Feeder '{name}' at {where_in_loops(iterations)}", FeederError)
    if not isinstance(value, np.ndarray) or value.shape != tuple(shape) or str(value.dtype) != dtype:
        got = (f"shape {value.shape} dtype {value.dtype}" if isinstance(value, np.ndarray)
               else f"a {type(value).__name__}")
        raise FeederError(f"Feeder '{name}' returned {got} at {where_in_loops(iterations)}; expected a numpy "
                          f"array of shape {tuple(shape)} dtype {dtype} (convert with "
                          f"np.asarray(x, np.{dtype}).reshape({tuple(shape)}))")
    return value


def narrow_to_int32(value: np.ndarray, what: str, error: type[Exception] = ValueError) -> np.ndarray:
    """An integer array of any width as int32, after checking every value fits (int64 labels
    and indices are what numpy and torch produce; the device holds int32)."""
    if value.size and (value.min() < INT32_MIN or value.max() > INT32_MAX):
        bad = value[(value < INT32_MIN) | (value > INT32_MAX)].flat[0]
        raise error(f"{what}: value {bad} of a {value.dtype} array does not fit in int32 "
                    f"[{INT32_MIN}, {INT32_MAX}], the device's integer type")
    return value.astype(np.int32)


def receiver_due(every: int, iterations: Sequence[int]) -> bool:
    """every=k delivers on iterations k-1, 2k-1, ... of the innermost enclosing loop."""
    return not iterations or (iterations[-1] + 1) % every == 0


def call_receiver(fn: Callable[..., object], name: str, values: list[np.ndarray],
                  iterations: Sequence[int]) -> None:
    try:
        if recorder is None:
            fn(*values)
        else:
            recorder.host_call(fn, values, f"Receiver {name}", "receiver")
    except IndexOutOfRangeError as err:   # an index check: its own class, the iteration added
        raise IndexOutOfRangeError(f"{err}, {where_in_loops(iterations)}") from None
    except Exception as err:
        raise ReceiverError(f"Receiver '{name}' raised at {where_in_loops(iterations)}: {err!r}; "
                            "persistent tensors keep the values computed so far", name) from err


# After a Receiver raises inside a loop, the outermost loop still completes this many more
# iterations (Receivers silent) and then stops: the device executors run that far ahead of
# the callbacks, and every backend stops at the same point, so the persistent tensors
# after a failure are the same on every device and from run to run.
FAILURE_LEAD = 64


class Failure:
    """Where a run stops after a Receiver (or an index check) raised, the same on every backend.

    Outside any loop: at once, nothing after it runs. Inside a loop: every later Receiver is
    silent, the current iteration and FAILURE_LEAD more iterations of the outermost loop run
    in full (inner loops included), and then the run stops. The error says how many
    iterations of the outermost loop the persistent tensors reflect
    (`err.completed_iterations`; None for an error outside any loop)."""

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.outer: int | None = None    # the outermost loop's iteration that failed

    def record(self, error: Exception, iterations: Sequence[int]) -> None:
        if self.error is None:
            self.error = error
            self.outer = iterations[0] if iterations else None
            error.completed_iterations = None   # type: ignore[attr-defined]

    def runs_outer_iteration(self, i: int) -> bool:
        """Whether iteration `i` of the outermost loop still runs."""
        return self.error is None or (self.outer is not None and i <= self.outer + FAILURE_LEAD)

    def outer_loop_done(self, iterations_run: int) -> None:
        if self.error is not None and self.outer is not None:
            self.error.completed_iterations = iterations_run   # type: ignore[attr-defined]


RECEIVER_ERRORS = (ReceiverError, IndexOutOfRangeError)


def receive_now(fn: Callable[..., object], name: str, values: list[np.ndarray], iterations: list[int],
                failure: Failure) -> None:
    """A Receiver on an executor that runs in step with the host (the numpy devices)."""
    try:
        call_receiver(fn, name, values, iterations)
    except RECEIVER_ERRORS as err:
        failure.record(err, iterations)
        if not iterations:
            raise   # outside loops a failure stops at once


def loop_in_step(count: int, iterations: list[int], failure: Failure, run_iteration: Callable[[int], None]) -> None:
    """A loop on an executor that runs in step with the host, stopping after a failure where
    `Failure` says, as the device executors do (base.DeviceExecutor.run_loop)."""
    outermost = not iterations
    iterations.append(0)
    ran = 0
    try:
        for i in range(count):
            if outermost and not failure.runs_outer_iteration(i):
                break
            iterations[-1] = i
            run_iteration(i)
            ran = i + 1
    finally:
        iterations.pop()
    if outermost and failure.error is not None:
        failure.outer_loop_done(ran)
        raise failure.error


@dataclass
class PendingReceive:
    """A Receiver's copies in flight: delivered once `ready()`; `wait()` blocks until they are."""
    ready: Callable[[], bool]
    wait: Callable[[], None]
    arrays: list[np.ndarray]
    fn: Callable[..., object]
    name: str
    iterations: tuple[int, ...]


def deliver_receives(pending: list[PendingReceive], wait: bool, failure: Failure,
                     until: Callable[[PendingReceive], bool] = lambda p: True) -> None:
    """Call back the Receivers whose data has arrived, in program order, while `until(first)`;
    without `wait`, stop at the first still in flight. A callback that raises is recorded in
    `failure`; later ones are dropped uncalled."""
    while pending and until(pending[0]):
        first = pending[0]
        if not wait and not first.ready():
            return
        first.wait()
        pending.pop(0)
        if failure.error is not None:
            continue
        try:
            call_receiver(first.fn, first.name, first.arrays, first.iterations)
        except RECEIVER_ERRORS as err:
            failure.record(err, first.iterations)


def only_internal_callbacks(commands: list) -> bool:
    """Whether every Feeder and Receiver of the commands is marked `ops.internal_callback`."""
    for cmd in commands:
        if isinstance(cmd, (FeedCmd, ReceiveCmd)) and not is_internal_callback(cmd.fn):
            return False
        if isinstance(cmd, LoopCmd) and not only_internal_callbacks(cmd.body):
            return False
    return True


def _has_feed(commands: list) -> bool:
    return any(isinstance(c, FeedCmd) or (isinstance(c, LoopCmd) and _has_feed(c.body)) for c in commands)


def feeds_in_order(commands: list, iterations: tuple[int, ...] = ()) -> Iterator[tuple[FeedCmd, tuple[int, ...]]]:
    """Every Feeder call of one run, in program order, with the loop iterations it belongs to
    (loops are counted at compile time, so the order is known before anything runs)."""
    for cmd in commands:
        if isinstance(cmd, FeedCmd):
            yield cmd, iterations
        elif isinstance(cmd, LoopCmd) and _has_feed(cmd.body):
            for i in range(cmd.count):
                yield from feeds_in_order(cmd.body, iterations + (i,))


SLOW_FEEDER_SECONDS = 1e-4
"""A Feeder call taking longer than this starts the feeder thread for the calls after it.
Handing each value over from a thread costs the host tens of microseconds (the GIL, a
condition variable), more than a Feeder returning an array it holds: the reference
transformer at L = 1 and 2 took 0.040 and 0.113 ms/step with every call on the thread
against 0.028 and 0.077 with none (medians, machine F)."""


class Feeds:
    """The Feeder values of one run, taken in program order by a device executor.

    With `ahead` > 0, once a Feeder call takes longer than SLOW_FEEDER_SECONDS a background
    thread calls the Feeders after it in program order, up to `ahead` values before the
    executor takes them, so that reading data overlaps with enqueueing and waiting for the
    device (double-buffered when `ahead` is twice the Feeders per iteration); quick Feeders
    are called when the executor reaches them. A Feeder that raises is reported when the
    executor reaches it, either way. With `ahead` == 0 each Feeder is called when the
    executor reaches it."""

    def __init__(self, commands: list, ahead: int) -> None:
        self.commands = commands
        self.ahead = ahead
        self.may_thread = ahead > 0 and _has_feed(commands)
        self.taken = 0                       # calls made on this thread, before any background one
        self.thread: threading.Thread | None = None

    def take(self, cmd: FeedCmd, iterations: Sequence[int]) -> np.ndarray:
        b = cmd.buffer
        if self.thread is None:
            start = time.perf_counter()
            value = call_feeder(cmd.fn, cmd.name, b.shape, b.dtype, iterations)
            self.taken += 1
            if self.may_thread and time.perf_counter() - start > SLOW_FEEDER_SECONDS:
                self._start_thread()
            return value
        fed, value = self.values.get()
        assert fed is cmd, "the feeder thread and the executor disagree on the program order"
        if isinstance(value, BaseException):
            raise value
        return value

    def _start_thread(self) -> None:
        self.values: queue.Queue = queue.Queue(maxsize=self.ahead)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._produce, args=(self.commands, self.taken),
                                       name="autodiff-feeders", daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop calling Feeders: a run that ends early has called at most `ahead` more than it used."""
        if self.thread is not None:
            self.stopped.set()
            self.thread.join()

    def _produce(self, commands: list, skip: int) -> None:
        """The Feeder calls of the run after the first `skip` (made on the executor's thread)."""
        for cmd, iterations in itertools.islice(feeds_in_order(commands), skip, None):
            b = cmd.buffer
            try:
                value: np.ndarray | BaseException = call_feeder(cmd.fn, cmd.name, b.shape, b.dtype, iterations)
            except BaseException as err:   # handed to the executor, raised in the main thread
                value = err
            if not self._put((cmd, value)) or isinstance(value, BaseException):
                return

    def _put(self, item: tuple) -> bool:
        while not self.stopped.is_set():
            try:
                self.values.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False


def feeds_ahead(commands: list) -> int:
    """How many values the feeder thread may hold: two of each Feeder in the program."""
    count = 0
    stack = list(commands)
    while stack:
        cmd = stack.pop()
        if isinstance(cmd, FeedCmd):
            count += 1
        elif isinstance(cmd, LoopCmd):
            stack.extend(cmd.body)
    return 2 * count
