"""Host-side work shared by every device: calling Feeders and Receivers with clear errors."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import FeederError, ReceiverError


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
