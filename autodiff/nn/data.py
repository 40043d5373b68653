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
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .. import comm
from ..backends.host import narrow_to_int32
from ..frontend.control import Feeder
from ..ir.dtypes import FLOAT, INT
from ..frontend.tensor import Tensor


def _device_array(name: str, data: Any) -> np.ndarray:
    """A C-contiguous float32 (floats) or int32 (integers, booleans) copy of `data`."""
    array = as_device_array(data, f"DataLoader: {name}")
    if array.ndim == 0:
        raise ValueError(f"DataLoader: {name} must have a leading sample axis, got a scalar")
    return array


def as_device_array(data: Any, what: str) -> np.ndarray:
    """`data` (a numpy array, a torch tensor, nested lists) as a C-contiguous array of a device
    dtype: floats as float32, integers and booleans as int32 (values checked to fit)."""
    if hasattr(data, "detach"):           # a torch tensor: no autograd, on the host
        data = data.detach().cpu().numpy()
    array = np.asarray(data)
    if array.dtype.kind in "iu" and array.dtype != np.int32:
        array = narrow_to_int32(array, what)
    elif array.dtype.kind not in "iubf":
        raise TypeError(f"{what}: a {array.dtype} array has no device dtype (float32 or int32)")
    return np.ascontiguousarray(array, dtype=INT if array.dtype.kind in "iub" else FLOAT)


def stream_feeders(draw: Callable[[], Sequence[np.ndarray]],
                   specs: Sequence[tuple[tuple[int, ...], str, str]]) -> tuple[Tensor, ...]:
    """One Feeder per part of a stream of batches, kept in step.

    `draw()` returns the next batch's parts; `specs` gives each part's (shape, dtype, name).
    Whichever Feeder is called first draws the batch and queues the other parts for their
    Feeders, so the parts the device sees always come from the same batch, in whatever
    order (or however far ahead) the runtime calls the host functions."""
    pending: list[deque[np.ndarray]] = [deque() for _ in specs]

    def part(i: int) -> Callable[[], np.ndarray]:
        def fn() -> np.ndarray:
            if not pending[i]:   # this Feeder is ahead of the others: draw, queue every part
                for queue, value in zip(pending, draw()):
                    queue.append(value)
            return pending[i].popleft()
        return fn

    return tuple(Feeder(part(i), shape, dtype, name=name) for i, (shape, dtype, name) in enumerate(specs))


class IterableLoader:
    """Feeders from any Python iterable of batches: a `torch.utils.data.DataLoader`, a
    generator, a list of `(x, y)` tuples.

    Usage, inside the traced loop body::

        batches = IterableLoader(torch_loader)      # drop_last=True: every batch one shape
        def train_step():
            xb, yb = batches.feeders()
            ...
        ad.ir_for(steps, train_step)

    Each batch is an array, or a tuple/list of arrays (numpy arrays or torch tensors). The
    first batch is read at construction and fixes every part's shape and dtype, as the
    program is traced for one shape. Floats are fed as float32, integers (int64 labels)
    and booleans as int32, values checked to fit. A later batch of another shape (a last
    incomplete batch) stops the run with a FeederError naming the batch. When the iterable
    ends, it is iterated again from the start if it can be (a DataLoader, a list: a new
    epoch) and a FeederError otherwise (a generator: no more data).
    """

    def __init__(self, iterable: Iterable[Any]) -> None:
        self.iterable = iterable
        self.batches_drawn = 0
        self._iterator: Iterator[Any] = iter(iterable)
        self._restartable = not isinstance(iterable, Iterator)   # a generator is its own iterator
        raw = self._next_raw()
        self._tuple = isinstance(raw, (tuple, list))
        first = self._convert(raw)
        self.shapes = [a.shape for a in first]
        self.dtypes = [str(a.dtype) for a in first]
        self._first: list[np.ndarray] | None = first

    def _next_raw(self) -> Any:
        try:
            return next(self._iterator)
        except StopIteration:
            if not self._restartable or self.batches_drawn == 0:
                raise ValueError(f"IterableLoader: the iterable ended after {self.batches_drawn} "
                                 "batches and cannot be iterated again") from None
            self._iterator = iter(self.iterable)
            try:
                return next(self._iterator)
            except StopIteration:
                raise ValueError("IterableLoader: the iterable is empty when iterated again") from None

    def _convert(self, batch: Any) -> list[np.ndarray]:
        if isinstance(batch, Mapping):
            raise TypeError("IterableLoader: batches must be arrays or tuples/lists of arrays, got a "
                            f"dict with keys {list(batch)}; yield a tuple (e.g. batch['x'], batch['y'])")
        parts = list(batch) if isinstance(batch, (tuple, list)) else [batch]
        return [as_device_array(p, f"IterableLoader: part {i} of batch {self.batches_drawn}")
                for i, p in enumerate(parts)]

    def next_batch(self) -> list[np.ndarray]:
        """The next batch's parts on the host, checked against the first batch's shapes."""
        if self._first is not None:
            batch, self._first = self._first, None
        else:
            batch = self._convert(self._next_raw())
        got = [a.shape for a in batch]
        if got != self.shapes:
            raise ValueError(f"IterableLoader: batch {self.batches_drawn} has shapes {got}, the program "
                             f"was traced for {self.shapes} (the first batch); drop a last incomplete "
                             "batch (DataLoader(..., drop_last=True))")
        self.batches_drawn += 1
        return batch

    def feeders(self, name: str = "batch") -> Tensor | tuple[Tensor, ...]:
        """One Feeder per part of a batch (a single Feeder when batches are plain arrays)."""
        specs = [(shape, dtype, f"{name}.{i}") for i, (shape, dtype) in enumerate(zip(self.shapes, self.dtypes))]
        parts = stream_feeders(self.next_batch, specs)
        return parts if self._tuple else parts[0]


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

    Under data parallelism (autodiff.distributed, `shard=True`) `batch_size` is the global
    batch: every rank draws the same batches (same seed) and feeds its own
    `batch_size // world_size` rows of each, rank r the r-th slice.
    """

    def __init__(self, x: Any, y: Any, batch_size: int, shuffle: bool = True, seed: int = 0,
                 shard: bool = True) -> None:
        self.x, self.y = _device_array("x", x), _device_array("y", y)
        if len(self.x) != len(self.y):
            raise ValueError(f"DataLoader: x has {len(self.x)} samples but y has {len(self.y)}")
        if int(batch_size) != batch_size or not 1 <= batch_size <= len(self.x):
            raise ValueError(f"DataLoader: batch_size must be an integer in [1, {len(self.x)}] "
                             f"(batches are full: drop_last), got {batch_size}")
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.ranks, self.rank = (comm.world_size(), comm.rank()) if shard else (1, 0)
        if self.batch_size % self.ranks:
            raise ValueError(f"DataLoader: batch_size {batch_size} must be divisible by the {self.ranks} ranks "
                             "(each feeds an equal slice of every global batch)")
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

    @property
    def local_batch_size(self) -> int:
        """Rows each rank feeds per batch (the whole batch on one process)."""
        return self.batch_size // self.ranks

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """The next `(x, y)` batch of this rank on the host (what the Feeders deliver)."""
        idx = self.next_indices()
        rows = self.local_batch_size
        idx = idx[self.rank * rows:(self.rank + 1) * rows]
        return self.x[idx], self.y[idx]

    def feeders(self, name: str = "batch") -> tuple[Tensor, Tensor]:
        """Two Feeder tensors `(xb, yb)` delivering each batch's inputs and labels.

        Call inside the traced loop body: every iteration then gets the next batch.
        Each call makes a new pair drawing from this loader's one stream.
        """
        xb, yb = stream_feeders(self.next_batch, [
            ((self.local_batch_size,) + self.x.shape[1:], self.x.dtype, f"{name}.x"),
            ((self.local_batch_size,) + self.y.shape[1:], self.y.dtype, f"{name}.y")])
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
