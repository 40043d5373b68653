"""Feeders on a background thread (host.Feeds): program order, errors in their place,
the same results with the thread switched off, and no runaway calls after a stop."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import autodiff as ad
from autodiff.backends.host import Feeds, feeds_ahead, feeds_in_order
from autodiff.errors import FeederError, ReceiverError

THREAD_MODES = [frozenset(), frozenset({"feeder_thread"})]


def _two_feeders_in_nested_loops(log: list[tuple[str, int]], threads: set[str], slow: bool = False) -> list[float]:
    """Outer loop of 3 with a Feeder, inner loop of 2 with another; returns the Receiver log.
    `slow` Feeders take 5 ms a call (past host.SLOW_FEEDER_SECONDS)."""
    seen: list[float] = []
    acc = ad.Tensor(np.zeros((), np.float32), name="acc")

    def feeder(name: str):
        def feed() -> np.ndarray:
            threads.add(threading.current_thread().name)
            if slow:
                time.sleep(0.005)
            log.append((name, len(log)))
            return np.full((4,), len(log), np.float32)
        return feed

    def outer(i):
        a = ad.Feeder(feeder("a"), shape=(4,), name="a")

        def inner(j):
            b = ad.Feeder(feeder("b"), shape=(4,), name="b")
            acc.assign(acc + (a * b).sum())
        ad.ir_for(2, inner)
        ad.Receiver(lambda v: seen.append(float(v)), [acc], name="acc")

    ad.ir_for(3, outer)
    return seen


@pytest.mark.parametrize("slow", [False, True], ids=["quick", "slow"])
@pytest.mark.parametrize("disable", THREAD_MODES, ids=["thread", "no-thread"])
def test_feeders_called_in_program_order(device, disable, slow):
    log: list[tuple[str, int]] = []
    threads: set[str] = set()
    seen = _two_feeders_in_nested_loops(log, threads, slow)
    ad.execute(device=device, disable=disable)
    assert [name for name, _ in log] == ["a", "b", "b"] * 3
    # the values the program saw are the values of the calls in that order
    expected, acc = [], 0.0
    for outer in range(3):
        first = 3 * outer + 1
        acc += 4 * first * (first + 1) + 4 * first * (first + 2)
        expected.append(acc)
    assert seen == pytest.approx(expected)


@pytest.mark.skipif("feeder_thread" in os.environ.get("AUTODIFF_DISABLE", ""), reason="the switch under test is off")
@pytest.mark.parametrize("device_name", ["opencl"])
def test_slow_feeders_run_on_a_background_thread_unless_switched_off(device_name, monkeypatch):
    """The first call that takes longer than SLOW_FEEDER_SECONDS starts the thread; quick
    Feeders stay on the executor's thread (a hand-over costs more than they do).
    The threshold is raised to 1 ms here: a quick Feeder (a few microseconds) preempted on a
    loaded machine could otherwise pass 0.1 ms and rightly start the thread."""
    from autodiff.backends import host
    monkeypatch.setattr(host, "SLOW_FEEDER_SECONDS", 1e-3)
    from autodiff.backends.opencl import opencl_available
    if not opencl_available():
        pytest.skip("no OpenCL device")
    main = threading.current_thread().name
    for slow, disable, on_main in [(True, frozenset(), False), (True, frozenset({"feeder_thread"}), True),
                                   (False, frozenset(), True)]:
        ad.reset()
        threads: set[str] = set()
        _two_feeders_in_nested_loops([], threads, slow)
        ad.execute(device=device_name, disable=disable)
        assert (threads == {main}) is on_main, (slow, disable, threads)


@pytest.mark.parametrize("slow", [False, True], ids=["quick", "slow"])
def test_feeder_error_raised_in_its_place_and_state_kept(device, slow):
    calls: list[int] = []
    acc = ad.Tensor(np.zeros((), np.float32), name="acc")

    def feed() -> np.ndarray:
        if slow:                 # past SLOW_FEEDER_SECONDS: the calls after the first on the thread
            time.sleep(0.0005)
        calls.append(1)
        if len(calls) == 4:
            raise ValueError("disk gone")
        return np.ones((3,), np.float32)

    def body():
        x = ad.Feeder(feed, shape=(3,), name="batch")
        acc.assign(acc + x.sum())

    ad.ir_for(10, body)
    with pytest.raises(FeederError, match=r"Feeder 'batch' raised at iteration 3"):
        ad.execute(device=device)
    assert acc.item() == pytest.approx(9.0)   # the three iterations before the error
    assert len(calls) == 4                            # nothing fed after the failing call


def test_receiver_error_stops_the_feeder_thread(device):
    calls: list[int] = []

    def feed() -> np.ndarray:
        time.sleep(0.0005)       # past SLOW_FEEDER_SECONDS: the feeder thread starts
        calls.append(1)
        return np.ones((2,), np.float32)

    def stop(v) -> None:
        raise RuntimeError("enough")

    def body(i):
        x = ad.Feeder(feed, shape=(2,), name="x")
        ad.Receiver(stop, [x.sum()], name="stop")

    ad.ir_for(1000, body)
    with pytest.raises(ReceiverError):
        ad.execute(device=device)
    # the host may run ahead of the device (up to 64 iterations) and the feeder thread ahead
    # of the host, but a stopped run does not go on feeding the whole loop
    assert len(calls) < 1000
    assert "autodiff-feeders" not in {t.name for t in threading.enumerate()}


def test_feeds_in_order_and_depth_from_the_program():
    ad.Feeder(lambda: np.zeros((1,), np.float32), shape=(1,), name="once")
    log: list[tuple[str, int]] = []
    _two_feeders_in_nested_loops(log, set())
    compiled = ad.compile(device="numpy-proc")
    order = [(cmd.name, iterations) for cmd, iterations in feeds_in_order(compiled.proc.commands)]
    assert order[0] == ("once", ())
    assert order[1:4] == [("a", (0,)), ("b", (0, 0)), ("b", (0, 1))]
    assert len(order) == 1 + 3 * 3
    assert feeds_ahead(compiled.proc.commands) == 2 * 3


def test_feeds_without_feeders_starts_no_thread():
    ad.ir_for(3, lambda i: ad.Receiver(lambda v: None, [i]))
    compiled = ad.compile(device="numpy-proc")
    feeds = Feeds(compiled.proc.commands, ahead=4)
    assert feeds.thread is None
    feeds.close()
