"""Property: random programs give the same numbers with every graph pass on, and each off.

The programs are those of random_programs.py: elementwise ops with broadcasting, views,
reductions, matmuls, repeated subexpressions (CSE bait) and identities (simplify bait), a
backward pass and an SGD update, all inside an ir_for, or an ir_for in an ir_for, so the
update carries between iterations.
"""
from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import autodiff as ad
from autodiff.opt import PASS_NAMES
from random_programs import assert_agree, loop_counts, pick, run_autodiff

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(pick, min_size=5, max_size=40), loop_counts)
def test_random_programs_agree_with_each_pass_off(picks, loops):
    reference = run_autodiff(picks, set(PASS_NAMES), loops=loops)          # nothing optimized
    for disabled in [set()] + [{name} for name in PASS_NAMES]:
        got = run_autodiff(picks, disabled, loops=loops)
        assert_agree(got, reference, f"disable={disabled}, loops={loops}", rtol=2e-5, atol=1e-6)


def test_reference_transformer_step_passes_each_remove_something():
    from reference_model import trace_reference_step
    trace_reference_step(layers=6, steps=2)
    compiled = ad.compile(device="numpy")
    counts = {r.name: (r.nodes_before, r.nodes_after) for r in compiled.pass_records}
    for name in ("simplify", "cse"):
        before, after = counts[name]
        assert after < before, f"{name} removed nothing: {before} -> {after}"
    first, last = compiled.pass_records[0], compiled.pass_records[-1]
    assert last.nodes_after < first.nodes_before
