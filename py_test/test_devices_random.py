"""Property: random programs give the same numbers on every device, with the switches that
change kernels off, as on the numpy device (the executable specification), and the numpy
device gives the same numbers as torch (an independent reference).

The programs are those of random_programs.py (elementwise chains with broadcasting, views,
reductions over drawn axes, matmuls, a backward pass and an SGD update inside one loop or a
loop in a loop, of drawn counts), with one parameter of a drawn number of rows: 0, 1 or
more. The torch program is built from the same picks by the same interpreter, in eager mode
with torch's autograd and a manual SGD step.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import available_devices
from random_programs import assert_agree, loop_counts, pick, rounding_slack, run_autodiff, run_torch

DEVICES = [d for d in available_devices() if d != "numpy"]
SWITCH_SETS = {"numpy-proc": [set(), {"fusion"}, {"memory_reuse"}],
               "opencl": [set(), {"vectorize", "megakernel"}, {"tiled_matmul", "fusion"}],
               "cuda": [set()]}
ROWS = st.sampled_from([0, 1, 5])
# programs per device: in the default run, OpenCL's take about 25 s on 2 cores (PoCL builds
# each new kernel in about a second, and each program is run with three switch sets)
EXAMPLES = {"numpy-proc": 30, "opencl": 4}
SLOW_EXAMPLES = {"numpy-proc": 300, "opencl": 40}


def numpy_reference(picks, rows: int, loops: tuple[int, ...]) -> tuple[list, list[float]]:
    """The values of the numpy device, checked against torch's, and how far float32
    rounding may move them (torch in float32 against float64)."""
    reference = run_autodiff(picks, set(), "numpy", rows, loops)
    want = run_torch(picks, rows, loops)
    slack = rounding_slack(want, run_torch(picks, rows, loops, dtype="float64"))
    assert_agree(reference, want, f"numpy device against torch, loops={loops}", slack)
    return reference, slack


def check_program(device: str, picks, rows: int, loops: tuple[int, ...]) -> None:
    """The numpy device against torch, then `device` with each of its switch sets off
    against the numpy device."""
    reference, slack = numpy_reference(picks, rows, loops)
    for disabled in SWITCH_SETS.get(device, [set()]):
        got = run_autodiff(picks, disabled, device, rows, loops)
        assert_agree(got, reference, f"{device} against numpy, disable={disabled}, loops={loops}", slack)


def check_programs(examples: int, max_picks: int, check: Callable[..., None]) -> None:
    """`check(picks, rows, loops)` on `examples` drawn programs of up to `max_picks` picks."""
    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(picks=st.lists(pick, min_size=4, max_size=max_picks), rows=ROWS, loops=loop_counts)
    def drawn(picks, rows, loops):
        check(picks, rows, loops)
    drawn()


def test_random_programs_agree_with_torch():
    check_programs(40, 40, numpy_reference)


@pytest.mark.parametrize("device", DEVICES)
def test_random_programs_agree_across_devices(device):
    check_programs(EXAMPLES.get(device, 6), 24, partial(check_program, device))


@pytest.mark.slow
def test_many_random_programs_agree_with_torch():
    check_programs(400, 40, numpy_reference)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_many_random_programs_agree_across_devices(device):
    check_programs(SLOW_EXAMPLES.get(device, 40), 40, partial(check_program, device))
