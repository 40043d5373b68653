"""Property: random programs give the same numbers on every device, with the switches that
change kernels off, as on the numpy device (the executable specification), and the numpy
device gives the same numbers as torch (an independent reference).

The programs are those of random_programs.py (elementwise chains with broadcasting, views,
reductions over drawn axes, matmuls, a backward pass and an SGD update in a loop), with
one parameter of a drawn number of rows: 0, 1 or more. The torch program is built from the same picks by the same interpreter, in eager mode
with torch's autograd and a manual SGD step.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import available_devices
from random_programs import assert_agree, pick, rounding_slack, run_autodiff, run_torch

DEVICES = [d for d in available_devices() if d != "numpy"]
SWITCH_SETS = {"numpy-proc": [set(), {"fusion"}, {"memory_reuse"}],
               "opencl": [set(), {"vectorize", "megakernel"}, {"tiled_matmul", "fusion"}],
               "cuda": [set()]}
ROWS = st.sampled_from([0, 1, 5])
HEALTH = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]


def numpy_reference(picks, rows: int) -> tuple[list, list[float]]:
    """The values of the numpy device, checked against torch's, and how far float32
    rounding may move them (torch in float32 against float64)."""
    reference = run_autodiff(picks, set(), "numpy", rows)
    want = run_torch(picks, rows)
    slack = rounding_slack(want, run_torch(picks, rows, dtype="float64"))
    assert_agree(reference, want, "numpy device against torch", slack)
    return reference, slack


def check_program(device: str, picks, rows: int) -> None:
    """The numpy device against torch, then `device` with each of its switch sets off
    against the numpy device."""
    reference, slack = numpy_reference(picks, rows)
    for disabled in SWITCH_SETS.get(device, [set()]):
        got = run_autodiff(picks, disabled, device, rows)
        assert_agree(got, reference, f"{device} against numpy, disable={disabled}", slack)


@settings(max_examples=40, deadline=None, suppress_health_check=HEALTH)
@given(picks=st.lists(pick, min_size=4, max_size=40), rows=ROWS)
def test_random_programs_agree_with_torch(picks, rows):
    numpy_reference(picks, rows)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=6, deadline=None, suppress_health_check=HEALTH)
@given(picks=st.lists(pick, min_size=4, max_size=24), rows=ROWS)
def test_random_programs_agree_across_devices(device, picks, rows):
    check_program(device, picks, rows)
