"""Static memory placement: validity on random inputs, the validator, greedy on a
hand example, and the MiniMalloc "challenging" instances."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autodiff.alloc import Lifetime, PlacementError, liveness_lower_bound, place_buffers, validate_placement
from autodiff.alloc.greedy import GREEDY_ORDERINGS, lowest_fit_offsets
from autodiff.alloc.sections import build_sectioned_problem

MINIMALLOC = Path(__file__).resolve().parents[2] / "shared" / "data" / "minimalloc"
INSTANCES = "ABCDEFGHIJK"
KNOWN_HEIGHT = 1_048_576


def load_instance(name: str) -> list[Lifetime]:
    with (MINIMALLOC / f"{name}.csv").open(newline="") as f:
        return [
            Lifetime(int(r["id"]), int(r["lower"]), int(r["upper"]), int(r["size"]))
            for r in csv.DictReader(f)
        ]


def greedy_by_size_height(buffers: list[Lifetime], alignment: int) -> int:
    problem = build_sectioned_problem(
        [b.start for b in buffers], [b.end for b in buffers], [b.size for b in buffers], alignment
    )
    offsets = lowest_fit_offsets(problem, GREEDY_ORDERINGS["size"](problem))
    return max(o * problem.unit + b.size for o, b in zip(offsets, buffers))


@st.composite
def buffer_lists(draw: st.DrawFn) -> list[Lifetime]:
    count = draw(st.integers(0, 40))
    buffers = []
    for i in range(count):
        start = draw(st.integers(0, 30))
        length = draw(st.integers(0, 12))  # 0: never live
        size = draw(st.one_of(st.just(0), st.integers(1, 300), st.integers(1, 5000)))
        buffers.append(Lifetime(i if i % 3 else f"t{i}", start, start + length, size))
    return buffers


@settings(max_examples=150, deadline=None)
@given(buffer_lists(), st.sampled_from([1, 8, 64]), st.integers(0, 3))
def test_random_buffers_get_a_valid_plan(buffers: list[Lifetime], alignment: int, seed: int) -> None:
    plan = place_buffers(buffers, alignment=alignment, time_budget_s=5.0, seed=seed, node_budget=300)
    assert set(plan.offsets) == {b.id for b in buffers}
    validate_placement(buffers, plan.offsets, alignment=alignment)
    assert all(off % alignment == 0 for off in plan.offsets.values())
    assert plan.lower_bound == liveness_lower_bound(buffers)
    assert plan.height >= plan.lower_bound
    live = [b for b in buffers if b.size > 0 and b.end > b.start]
    assert plan.height == max((plan.offsets[b.id] + b.size for b in live), default=0)


@settings(max_examples=40, deadline=None)
@given(buffer_lists())
def test_same_seed_and_budget_give_the_same_plan(buffers: list[Lifetime]) -> None:
    first = place_buffers(buffers, alignment=1, time_budget_s=30.0, seed=1, node_budget=400)
    second = place_buffers(buffers, alignment=1, time_budget_s=30.0, seed=1, node_budget=400)
    assert first.offsets == second.offsets
    assert first.strategy == second.strategy


def test_validator_names_the_two_overlapping_buffers() -> None:
    buffers = [Lifetime("a", 0, 4, 100), Lifetime("b", 2, 6, 100), Lifetime("c", 4, 8, 100)]
    validate_placement(buffers, {"a": 0, "b": 128, "c": 0})  # a and c never meet
    with pytest.raises(PlacementError, match="'a' and 'b' overlap"):
        validate_placement(buffers, {"a": 0, "b": 64, "c": 256})


def test_validator_rejects_missing_and_misaligned_offsets() -> None:
    buffers = [Lifetime("a", 0, 4, 100), Lifetime("b", 2, 6, 100)]
    with pytest.raises(PlacementError, match="'b' has no offset"):
        validate_placement(buffers, {"a": 0})
    with pytest.raises(PlacementError, match="not a multiple of 64"):
        validate_placement(buffers, {"a": 0, "b": 100})


def test_buffers_that_touch_in_time_may_share_bytes() -> None:
    buffers = [Lifetime("a", 0, 4, 64), Lifetime("b", 4, 8, 64)]  # [0, 4) and [4, 8)
    assert liveness_lower_bound(buffers) == 64
    validate_placement(buffers, {"a": 0, "b": 0})
    assert place_buffers(buffers).offsets == {"a": 0, "b": 0}


def test_greedy_on_a_hand_example() -> None:
    # Decreasing size, each at the lowest offset clear of what it overlaps:
    # P at 0; Q and R on P (4); S over Q and R (7); T into the gap [4, 7)
    # below S, since it meets neither Q (ends at 4) nor R (starts at 6).
    buffers = [
        Lifetime("P", 0, 10, 4),
        Lifetime("Q", 0, 4, 3),
        Lifetime("R", 6, 10, 3),
        Lifetime("S", 2, 8, 2),
        Lifetime("T", 4, 6, 1),
    ]
    plan = place_buffers(buffers, alignment=1)
    assert plan.offsets == {"P": 0, "Q": 4, "R": 4, "S": 7, "T": 4}
    assert plan.height == plan.lower_bound == 9
    assert plan.strategy == "greedy:size"


def test_empty_zero_size_and_never_live_buffers() -> None:
    empty = place_buffers([])
    assert (empty.offsets, empty.height, empty.lower_bound) == ({}, 0, 0)
    buffers = [Lifetime("z", 0, 5, 0), Lifetime("never", 3, 3, 500), Lifetime("x", 0, 5, 10)]
    plan = place_buffers(buffers)
    assert plan.offsets == {"z": 0, "never": 0, "x": 0}
    assert (plan.height, plan.lower_bound) == (10, 10)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(PlacementError, match="duplicate"):
        place_buffers([Lifetime(1, 0, 2, 8), Lifetime(1, 1, 3, 8)])
    with pytest.raises(PlacementError, match="ends"):
        place_buffers([Lifetime(1, 5, 2, 8)])
    with pytest.raises(PlacementError, match="negative"):
        place_buffers([Lifetime(1, 0, 2, -8)])


def test_search_beats_greedy_on_a_small_puzzle() -> None:
    # Greedy by size puts c (the longer 4) at 0 and a on it, which leaves b no
    # room below 8; the plan at the bound puts a at 0 with d, then b, on it.
    buffers = [
        Lifetime("a", 5, 7, 4),
        Lifetime("b", 5, 6, 2),
        Lifetime("c", 6, 10, 4),
        Lifetime("d", 4, 6, 3),
    ]
    assert greedy_by_size_height(buffers, 1) == 10
    plan = place_buffers(buffers, alignment=1)
    validate_placement(buffers, plan.offsets, alignment=1)
    assert plan.height == plan.lower_bound == 9
    assert plan.strategy.startswith("search:")


def test_training_step_shape_reaches_the_bound_with_greedy() -> None:
    # Forward activations live until their backward use (a nested pattern),
    # gradients briefly, parameters the whole step: greedy is optimal here.
    layers = 100
    buffers = [Lifetime(f"param{i}", 0, 4 * layers, 4096) for i in range(layers)]
    for i in range(layers):
        buffers.append(Lifetime(f"act{i}", i, 4 * layers - i, 1024 * (1 + i % 7)))
        buffers.append(Lifetime(f"grad{i}", 4 * layers - i - 1, 4 * layers - i + 1, 4096))
    plan = place_buffers(buffers)     # its speed is measured in benchmarks/bench_placement.py
    validate_placement(buffers, plan.offsets)
    assert plan.height == plan.lower_bound


@pytest.mark.skipif(not MINIMALLOC.is_dir(), reason=f"MiniMalloc data not found at {MINIMALLOC}")
@pytest.mark.parametrize("name", list(INSTANCES))
def test_minimalloc_instance_gets_a_valid_plan(name: str) -> None:
    buffers = load_instance(name)
    plan = place_buffers(buffers, alignment=1, time_budget_s=30.0, node_budget=1500)
    validate_placement(buffers, plan.offsets, alignment=1)
    assert plan.height >= plan.lower_bound
    # The greedy stage alone is never worse than plain greedy by size.
    assert plan.height <= greedy_by_size_height(buffers, 1)


@pytest.mark.skipif(not MINIMALLOC.is_dir(), reason=f"MiniMalloc data not found at {MINIMALLOC}")
@pytest.mark.parametrize("name", ["C", "G"])
def test_search_reaches_the_known_height_on_quick_instances(name: str) -> None:
    # Deterministic: a node budget, with a wall-clock cap far out of reach.
    buffers = load_instance(name)
    plan = place_buffers(buffers, alignment=1, time_budget_s=60.0, node_budget=6000)
    validate_placement(buffers, plan.offsets, alignment=1)
    assert plan.height <= KNOWN_HEIGHT
    assert plan.height < greedy_by_size_height(buffers, 1)
