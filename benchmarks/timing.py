"""Timing shared by the benchmarks: per loop iteration of a compiled program, per call of a function."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def wait_for_kernel_storing() -> None:
    """After a run, autodiff stores the kernels it built from a background process that
    builds them all once more (`opencl_build.store_pending`). It runs at the lowest priority,
    but on 2 cores it still takes time from what is timed beside it: wait for it first."""
    from autodiff.backends.opencl_build import finish_storing
    finish_storing()


def seconds_per_iteration(program: Callable[[int], Any], reps: int, rounds: int = 5) -> float:
    """`program(count)` compiles a program whose loop runs `count` iterations. The result is
    the median over rounds of (run of 2*reps - run of reps) / reps: uploads, read-backs and
    the fixed cost of a run cancel."""
    short, long = program(reps), program(2 * reps)
    short.run()
    long.run()
    wait_for_kernel_storing()
    samples = [loop_sample(short, long, reps) for _ in range(rounds)]
    return max(statistics.median(samples), 1e-9)


def loop_sample(short: Any, long: Any, reps: int) -> float:
    """One sample of seconds per iteration: (a run of the 2*reps program - a run of the reps one) / reps."""
    t = time.perf_counter()
    short.run()
    t_short = time.perf_counter() - t
    t = time.perf_counter()
    long.run()
    return (time.perf_counter() - t - t_short) / reps


def seconds_per_call(fn: Callable[[], Any], reps: int, rounds: int = 5) -> float:
    """Median over rounds of the time of `reps` calls of `fn` / reps, after one warm-up call."""
    fn()
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        samples.append((time.perf_counter() - t) / reps)
    return statistics.median(samples)
