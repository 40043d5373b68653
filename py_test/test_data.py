"""DataLoader: batches in step, one visit per sample per epoch, reshuffled, seeded, drop_last."""
from __future__ import annotations

import numpy as np
import pytest

import autodiff as ad
from autodiff.nn.data import DataLoader

N, FEATURES, BATCH = 23, 3, 5   # 4 full batches per epoch; 3 samples dropped


def _dataset() -> tuple[np.ndarray, np.ndarray]:
    # row i of x is [i, i + 0.25, i + 0.5], its label is i: a batch is in step when x[:, 0] == y
    ids = np.arange(N)
    x = ids[:, None] + np.array([0.0, 0.25, 0.5])   # float64: the loader feeds float32
    return x, ids


def _run(loader: DataLoader, steps: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []

    def body() -> None:
        xb, yb = loader.feeders()
        ad.Receiver(lambda a, b: (xs.append(a), ys.append(b)), [xb, yb], name="batch")

    ad.ir_for(steps, body)
    ad.execute()
    return xs, ys


def test_batches_stay_in_step_and_cover_each_epoch_once() -> None:
    loader = DataLoader(*_dataset(), batch_size=BATCH, seed=3)
    assert loader.steps_per_epoch == len(loader) == N // BATCH == 4
    epochs = 3
    xs, ys = _run(loader, epochs * loader.steps_per_epoch)

    assert xs[0].shape == (BATCH, FEATURES) and xs[0].dtype == np.float32
    assert ys[0].shape == (BATCH,) and ys[0].dtype == np.int32
    for xb, yb in zip(xs, ys):
        np.testing.assert_array_equal(xb[:, 0], yb)
        np.testing.assert_array_equal(xb[:, 2], yb + 0.5)
    per_epoch = [np.concatenate(ys[e * 4:(e + 1) * 4]) for e in range(epochs)]
    for seen in per_epoch:
        assert len(np.unique(seen)) == len(seen) == 4 * BATCH   # no sample twice in an epoch
        assert set(seen) <= set(range(N))
    # reshuffled: each epoch visits in a different order and drops different samples
    assert not np.array_equal(per_epoch[0], per_epoch[1])
    assert len({tuple(sorted(set(range(N)) - set(seen))) for seen in per_epoch}) > 1
    assert loader.batches_drawn == epochs * 4 and loader.epoch == epochs


def test_seed_reproduces_the_stream_and_host_batches_match_feeders() -> None:
    x, y = _dataset()
    xs, ys = _run(DataLoader(x, y, batch_size=BATCH, seed=11), 6)
    host = DataLoader(x, y, batch_size=BATCH, seed=11)
    for xb, yb in zip(xs, ys):
        hx, hy = host.next_batch()
        np.testing.assert_array_equal(hx, xb)
        np.testing.assert_array_equal(hy, yb)
    other = DataLoader(x, y, batch_size=BATCH, seed=12)
    assert not np.array_equal(other.next_batch()[1], ys[0])


def test_no_shuffle_is_sequential_with_drop_last() -> None:
    loader = DataLoader(*_dataset(), batch_size=BATCH, shuffle=False)
    ys = [loader.next_batch()[1] for _ in range(5)]
    np.testing.assert_array_equal(np.concatenate(ys[:4]), np.arange(20))   # 20, 21, 22 dropped
    np.testing.assert_array_equal(ys[4], np.arange(5))                     # next epoch restarts


def test_feeders_stay_in_step_when_called_out_of_order() -> None:
    """A runtime may call (prefetch) either Feeder's function first, or one several times ahead."""
    loader = DataLoader(*_dataset(), batch_size=BATCH, seed=0)
    xb, yb = loader.feeders()
    fetch_x, fetch_y = xb.node.args.fn, yb.node.args.fn
    ys = [fetch_y(), fetch_y(), fetch_y()]
    xs = [fetch_x(), fetch_x()]
    ys.append(fetch_y())
    xs += [fetch_x(), fetch_x()]
    for a, b in zip(xs, ys):
        np.testing.assert_array_equal(a[:, 0], b)
    assert loader.batches_drawn == 4


def test_state_dict_resumes_the_stream() -> None:
    x, y = _dataset()
    loader = DataLoader(x, y, batch_size=BATCH, seed=5)
    for _ in range(6):
        loader.next_batch()
    resumed = DataLoader(x, y, batch_size=BATCH, seed=5)
    resumed.load_state_dict(loader.state_dict())
    for _ in range(5):
        np.testing.assert_array_equal(resumed.next_batch()[1], loader.next_batch()[1])


def test_bad_arguments() -> None:
    x, y = _dataset()
    with pytest.raises(ValueError, match="samples"):
        DataLoader(x, y[:-1], batch_size=BATCH)
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(x, y, batch_size=N + 1)
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(x, y, batch_size=0)


def test_int64_feeders_are_int32_on_the_device_with_values_checked(device) -> None:
    """numpy and torch give labels as int64: accepted where every value fits in int32."""
    labels = ad.Feeder(lambda: np.arange(4), (4,), np.int64, name="labels")
    wide = ad.Feeder(lambda: np.array([1, -2, 3], np.int64), (3,), np.int32, name="wide")
    assert labels.dtype == "int32"
    got: list[np.ndarray] = []
    ad.Receiver(lambda a, b: got.extend([a, b]), [labels * 2, wide])
    ad.execute(device=device)
    np.testing.assert_array_equal(got[0], [0, 2, 4, 6])
    np.testing.assert_array_equal(got[1], [1, -2, 3])
    assert got[0].dtype == np.int32

    ad.reset()
    too_big = ad.Feeder(lambda: np.array([0, 2**31], np.int64), (2,), np.int64, name="too_big")
    ad.Receiver(lambda a: None, [too_big])
    with pytest.raises(ad.FeederError, match=r"too_big.*2147483648.*does not fit in int32"):
        ad.execute(device=device)


def test_iterable_loader_feeds_a_torch_dataloader_and_restarts_each_epoch(device) -> None:
    torch = pytest.importorskip("torch")
    from autodiff.nn import IterableLoader
    x, y = _dataset()
    torch_loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),   # float64, int64
        batch_size=BATCH, shuffle=False, drop_last=True)
    batches = IterableLoader(torch_loader)
    assert batches.shapes == [(BATCH, FEATURES), (BATCH,)] and batches.dtypes == ["float32", "int32"]
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []

    def body() -> None:
        xb, yb = batches.feeders()
        ad.Receiver(lambda a, b: (xs.append(a), ys.append(b)), [xb, yb])

    steps = N // BATCH + 2          # one epoch and two batches of the next
    ad.ir_for(steps, body)
    ad.execute(device=device)
    order = [i % (N // BATCH) for i in range(steps)]
    for got_x, got_y, i in zip(xs, ys, order):
        np.testing.assert_array_equal(got_y, y[i * BATCH:(i + 1) * BATCH])
        np.testing.assert_allclose(got_x, x[i * BATCH:(i + 1) * BATCH].astype(np.float32))
    assert len(xs) == steps and batches.batches_drawn == steps


def test_iterable_loader_errors_name_the_batch() -> None:
    from autodiff.nn import IterableLoader
    # a last incomplete batch: a shape the program was not traced for
    uneven = IterableLoader([np.zeros((2, 3), np.float32), np.zeros((1, 3), np.float32)])
    ad.ir_for(2, lambda: ad.Receiver(lambda a: None, [uneven.feeders()]))
    with pytest.raises(ad.FeederError, match=r"batch 1 has shapes \[\(1, 3\)\].*drop_last"):
        ad.execute(device="numpy")
    # a generator cannot be iterated twice
    ad.reset()
    once = IterableLoader(np.ones(2, np.float32) for _ in range(2))
    ad.ir_for(3, lambda: ad.Receiver(lambda a: None, [once.feeders()]))
    with pytest.raises(ad.FeederError, match="ended after 2 batches"):
        ad.execute(device="numpy")
    with pytest.raises(TypeError, match="dict"):
        IterableLoader([{"x": np.zeros(2)}])
    with pytest.raises(TypeError, match="no device dtype"):
        IterableLoader([np.array(["a"])])
