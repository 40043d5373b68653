"""DataLoader: shuffled `(x, y)` minibatches from numpy arrays, fed through two Feeders.

The two Feeders stay in step: whichever of them is called first draws the next
batch and keeps the other half for its partner, so the labels the device sees
always belong to the inputs it sees, in whatever order (or however far ahead)
the runtime calls the two host functions.

Batches have a static shape, so an epoch is `len(x) // batch_size` batches and
the last incomplete batch is dropped (PyTorch's `drop_last=True`). With
`shuffle=True` each epoch visits the samples in a new order drawn from
`(seed, epoch)`, so the whole stream is reproducible and can be resumed from
a batch count alone (`state_dict` / `load_state_dict`).
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable, Mapping

import numpy as np

from ..frontend.control import Feeder
from ..ir.dtypes import FLOAT, INT
from ..frontend.tensor import Tensor


def _device_array(name: str, data: Any) -> np.ndarray:
    """A C-contiguous float32 (floats) or int32 (integers, booleans) copy of `data`."""
    array = np.asarray(data)
    if array.ndim == 0:
        raise ValueError(f"DataLoader: {name} must have a leading sample axis, got a scalar")
    dtype = INT if array.dtype.kind in "iub" else FLOAT
    return np.ascontiguousarray(array, dtype=dtype)


class DataLoader:
    """Minibatches `(x[idx], y[idx])` of `batch_size` samples, reshuffled every epoch.

    Usage, inside the traced loop body::

        loader = DataLoader(x, y, batch_size=32, shuffle=True, seed=0)
        def train_step():
            xb, yb = loader.feeders()
            ...
        ad.ir_for(epochs * loader.steps_per_epoch, train_step)

    `x` and `y` are numpy arrays (or array-likes) with the same number of rows;
    floating data is fed as float32, integer data (class labels) as int32.
    """

    def __init__(self, x: Any, y: Any, batch_size: int, shuffle: bool = True, seed: int = 0) -> None:
        self.x, self.y = _device_array("x", x), _device_array("y", y)
        if len(self.x) != len(self.y):
            raise ValueError(f"DataLoader: x has {len(self.x)} samples but y has {len(self.y)}")
        if int(batch_size) != batch_size or not 1 <= batch_size <= len(self.x):
            raise ValueError(f"DataLoader: batch_size must be an integer in [1, {len(self.x)}] "
                             f"(batches are full: drop_last), got {batch_size}")
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.batches_drawn = 0
        self._order_epoch = -1
        self._order = np.arange(len(self.x))

    def __len__(self) -> int:
        return self.steps_per_epoch

    @property
    def steps_per_epoch(self) -> int:
        """Full batches per epoch; the remaining `len(x) % batch_size` samples are dropped."""
        return len(self.x) // self.batch_size

    @property
    def epoch(self) -> int:
        """The epoch the next batch comes from."""
        return self.batches_drawn // self.steps_per_epoch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The order in which `epoch` visits the samples (a permutation of all of them)."""
        if not self.shuffle:
            return np.arange(len(self.x))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.x))

    def next_indices(self) -> np.ndarray:
        """Sample indices of the next batch (advances the stream by one batch)."""
        epoch, step = divmod(self.batches_drawn, self.steps_per_epoch)
        if epoch != self._order_epoch:
            self._order, self._order_epoch = self.epoch_order(epoch), epoch
        self.batches_drawn += 1
        return self._order[step * self.batch_size:(step + 1) * self.batch_size]

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """The next `(x, y)` batch on the host (what the Feeders deliver, in the same stream)."""
        idx = self.next_indices()
        return self.x[idx], self.y[idx]

    def feeders(self, name: str = "batch") -> tuple[Tensor, Tensor]:
        """Two Feeder tensors `(xb, yb)` delivering each batch's inputs and labels.

        Call inside the traced loop body: every iteration then gets the next batch.
        Each call makes a new pair drawing from this loader's one stream.
        """
        pending_x: deque[np.ndarray] = deque()
        pending_y: deque[np.ndarray] = deque()

        def half(own: deque[np.ndarray], other: deque[np.ndarray], first: bool) -> Callable[[], np.ndarray]:
            def fn() -> np.ndarray:
                if not own:  # this Feeder is ahead of its partner: draw a batch, keep its partner's half
                    xb, yb = self.next_batch()
                    own.append(xb if first else yb)
                    other.append(yb if first else xb)
                return own.popleft()
            return fn

        xb = Feeder(half(pending_x, pending_y, True), (self.batch_size,) + self.x.shape[1:],
                    self.x.dtype, name=f"{name}.x")
        yb = Feeder(half(pending_y, pending_x, False), (self.batch_size,) + self.y.shape[1:],
                    self.y.dtype, name=f"{name}.y")
        return xb, yb

    def state_dict(self) -> dict[str, np.ndarray]:
        """The stream position: how many batches have been drawn (the order follows from the seed)."""
        return {"batches_drawn": np.array(self.batches_drawn, np.int64)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the stream from a saved position (same data, batch size, shuffle and seed)."""
        unexpected = [k for k in state if k != "batches_drawn"]
        if unexpected or "batches_drawn" not in state:
            raise KeyError(f"DataLoader.load_state_dict: expected only 'batches_drawn', got {list(state)}")
        self.batches_drawn = int(np.asarray(state["batches_drawn"]))
