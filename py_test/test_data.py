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
