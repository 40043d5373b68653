"""Property: random programs give the same numbers on every device, with the switches that
change kernels off, as on the numpy device (the executable specification).

The programs are those of test_passes_random.py (elementwise chains with broadcasting,
views, reductions over drawn axes, matmuls, a backward pass and an SGD update inside an
ir_for), with one parameter of a drawn number of rows: 0, 1 or more.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import available_devices
from test_passes_random import _run, pick

DEVICES = [d for d in available_devices() if d != "numpy"]
SWITCH_SETS = {"numpy-proc": [set(), {"fusion"}, {"memory_reuse"}],
               "opencl": [set(), {"vectorize", "megakernel"}, {"tiled_matmul", "fusion"}],
               "cuda": [set()]}


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(picks=st.lists(pick, min_size=4, max_size=24), rows=st.sampled_from([0, 1, 5]))
def test_random_programs_agree_across_devices(device, picks, rows):
    reference = _run(picks, set(), "numpy", rows)
    for disabled in SWITCH_SETS.get(device, [set()]):
        got = _run(picks, disabled, device, rows)
        assert len(got) == len(reference)
        for n, (a, b) in enumerate(zip(got, reference)):
            assert np.shape(a) == np.shape(b), f"value {n}, disable={disabled}"
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=f"value {n} on {device}, disable={disabled}")
