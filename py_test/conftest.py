"""Shared fixtures: a fresh program per test, and the devices to run on."""
from __future__ import annotations

import os

import numpy as np
import pytest

import autodiff as ad


def available_devices() -> list[str]:
    """Every registered backend that runs here; AUTODIFF_TEST_DEVICES=numpy,opencl narrows it."""
    from autodiff.backends.registry import backends
    devices = [b.name for b in backends() if b.problem() is None]
    wanted = os.environ.get("AUTODIFF_TEST_DEVICES")
    if wanted:
        devices = [d for d in devices if d in wanted.split(",")]
    return devices


# every memory plan made during the tests is checked by the validator
os.environ.setdefault("AUTODIFF_DEBUG", "1")

# No kernel cache in the suite (test_kernel_cache.py turns it on where it tests it): storing
# a binary makes PoCL build every kernel once more, and across the suite's thousands of
# small programs the background storers made a cold run 10.4 -> 13.5 minutes on 2 cores.
os.environ["AUTODIFF_DISABLE"] = ",".join(dict.fromkeys(
    [n for n in os.environ.get("AUTODIFF_DISABLE", "").split(",") if n] + ["kernel_cache"]))


# The rules' tilings in the suite, not what `python -m autodiff.tune` stored on this machine
# (test_tune.py checks the tuned path, and that it computes the same numbers).
os.environ.setdefault("AUTODIFF_TUNE", "0")


@pytest.fixture(autouse=True)
def fresh_program():
    """Every test traces into an empty default program with a fixed seed."""
    ad.reset()
    ad.manual_seed(0)
    yield
    ad.reset()


@pytest.fixture(params=available_devices())
def device(request) -> str:
    return request.param


def devices_slow_on(*slow: str) -> list:
    """`available_devices()` as parameters for `device`, those in `slow` marked slow: a heavy
    test's exhaustive device matrix runs in the slow set (`.ci/run` runs it), the cheap devices
    in the default run."""
    return [pytest.param(d, marks=pytest.mark.slow) if d in slow else d for d in available_devices()]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
