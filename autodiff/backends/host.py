"""Host-side work shared by every device: calling Feeders and Receivers with clear errors."""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from ..errors import FeederError, ReceiverError
from ..proc.ir import FeedCmd, LoopCmd


def where_in_loops(iterations: Sequence[int]) -> str:
    if not iterations:
        return "outside any loop"
    return "iteration " + ", ".join(str(i) for i in iterations)


def call_feeder(fn: Callable[[], object], name: str, shape: tuple[int, ...], dtype: str,
                iterations: Sequence[int]) -> np.ndarray:
    """fn() checked against the Feeder's shape and dtype (no silent conversion)."""
    try:
        value = fn()
    except Exception as err:
        raise FeederError(f"Feeder '{name}' raised at {where_in_loops(iterations)}: {err!r}") from err
    if not isinstance(value, np.ndarray) or value.shape != tuple(shape) or str(value.dtype) != dtype:
        got = (f"shape {value.shape} dtype {value.dtype}" if isinstance(value, np.ndarray)
               else f"a {type(value).__name__}")
        raise FeederError(f"Feeder '{name}' returned {got} at {where_in_loops(iterations)}; expected a numpy "
                          f"array of shape {tuple(shape)} dtype {dtype} (convert with "
                          f"np.asarray(x, np.{dtype}).reshape({tuple(shape)}))")
    return value


def receiver_due(every: int, iterations: Sequence[int]) -> bool:
    """every=k delivers on iterations k-1, 2k-1, ... of the innermost enclosing loop."""
    return not iterations or (iterations[-1] + 1) % every == 0


def call_receiver(fn: Callable[..., object], name: str, values: list[np.ndarray],
                  iterations: Sequence[int]) -> None:
    try:
        fn(*values)
    except Exception as err:
        raise ReceiverError(f"Receiver '{name}' raised at {where_in_loops(iterations)}: {err!r}; "
                            "persistent tensors keep the values computed so far", name) from err


@dataclass
class PendingReceive:
    """A Receiver's copies in flight: delivered once `ready()`; `wait()` blocks until they are."""
    ready: Callable[[], bool]
    wait: Callable[[], None]
    arrays: list[np.ndarray]
    fn: Callable[..., object]
    name: str
    iterations: tuple[int, ...]


def deliver_receives(pending: list[PendingReceive], wait: bool) -> ReceiverError | None:
    """Call back the Receivers whose data has arrived, in program order; without `wait`, stop at
    the first still in flight. A callback that raises stops delivery and is returned."""
    while pending:
        first = pending[0]
        if not wait and not first.ready():
            return None
        first.wait()
        pending.pop(0)
        try:
            call_receiver(first.fn, first.name, first.arrays, first.iterations)
        except ReceiverError as err:
            return err
    return None


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


class Feeds:
    """The Feeder values of one run, taken in program order by a device executor.

    With `ahead` > 0 a background thread calls the Feeders in program order, up to `ahead`
    values before the executor takes them, so that reading data overlaps with enqueueing and
    waiting for the device (double-buffered when `ahead` is twice the Feeders per iteration).
    A Feeder that raises is reported when the executor reaches it, as without the thread.
    With `ahead` == 0 each Feeder is called when the executor reaches it."""

    def __init__(self, commands: list, ahead: int) -> None:
        self.thread: threading.Thread | None = None
        if ahead > 0 and _has_feed(commands):
            self.values: queue.Queue = queue.Queue(maxsize=ahead)
            self.stopped = threading.Event()
            self.thread = threading.Thread(target=self._produce, args=(commands,), name="autodiff-feeders",
                                           daemon=True)
            self.thread.start()

    def take(self, cmd: FeedCmd, iterations: Sequence[int]) -> np.ndarray:
        b = cmd.buffer
        if self.thread is None:
            return call_feeder(cmd.fn, cmd.name, b.shape, b.dtype, iterations)
        fed, value = self.values.get()
        assert fed is cmd, "the feeder thread and the executor disagree on the program order"
        if isinstance(value, BaseException):
            raise value
        return value

    def close(self) -> None:
        """Stop calling Feeders: a run that ends early has called at most `ahead` more than it used."""
        if self.thread is not None:
            self.stopped.set()
            self.thread.join()

    def _produce(self, commands: list) -> None:
        for cmd, iterations in feeds_in_order(commands):
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
