"""Static memory placement ("tetris" planning): give each buffer a byte offset.

A buffer is a rectangle: it occupies ``size`` bytes during the half-open time
interval ``[start, end)``. A plan gives every buffer an offset (a multiple of
the alignment) such that no two buffers live at the same time share a byte.
Its height, the memory it needs, is the largest ``offset + size``; nothing can
beat the liveness lower bound, the most bytes live at any one time.

``place_buffers`` stops as soon as a plan reaches the lower bound (on the
alignment grid: sizes padded to the alignment):

1. greedy lowest-fit under several orderings (``greedy.py``), best one kept;
2. if that is above the bound, an exact search over canonical plans
   (``canonical_search.py``): a probe at the bound, alongside a bisection of
   capacities below the best plan so far (``capacity_search.py``);
3. the best plan is returned, named by the stage and preorder that made it.

Determinism: the search stops after a node budget (by default
``time_budget_s * NODES_PER_SECOND``), so for a given input, seed and budget
the plan is the same on every machine. ``time_budget_s`` is also a wall-clock
cap, a safety net that only fires on machines slower than that rate; when it
does, the plan may differ from run to run.

Cost: building the problem and each greedy pass take O(n log n + overlapping
pairs); the search's tables need O(n * (max overlaps + sections)) memory and
are skipped beyond about 64 MB (the greedy plan is kept).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from .capacity_search import NODES_PER_SECOND, lowest_capacity_plan
from .greedy import GREEDY_ORDERINGS, height_of, lowest_fit_offsets
from .sections import SectionedProblem, build_sectioned_problem

BufferId = int | str


@dataclass(frozen=True)
class Lifetime:
    """A buffer to place: ``size`` bytes live during the half-open time interval ``[start, end)``
    (named apart from the procedural IR's `Buffer`, which this stands for in the planner)."""

    id: BufferId
    start: int  # first time step it is live
    end: int    # one past the last time step (half-open)
    size: int   # bytes


@dataclass
class Placement:
    """A plan: one offset per buffer id, and how good it is."""

    offsets: dict[BufferId, int]
    height: int        # bytes the plan needs: max(offset + size) over live buffers
    lower_bound: int   # liveness lower bound in bytes; height >= lower_bound
    strategy: str      # the method that produced this plan, e.g. "greedy:size"
    seconds: float     # wall-clock time spent planning
    # (seconds since the start, height) each time a better plan was found.
    progress: list[tuple[float, int]] = field(default_factory=list)


class PlacementError(Exception):
    """An invalid input, or a plan that breaks the rules."""


def liveness_lower_bound(buffers: Sequence[Lifetime]) -> int:
    """The most bytes live at any one time; no plan can be lower."""
    events: list[tuple[int, int]] = []
    for b in buffers:
        if b.size > 0 and b.end > b.start:
            events.append((b.start, b.size))
            events.append((b.end, -b.size))
    # At equal times ends (negative) sort first: [start, end) is half-open.
    events.sort(key=lambda e: (e[0], e[1]))
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return peak


def place_buffers(
    buffers: Sequence[Lifetime],
    alignment: int = 64,
    time_budget_s: float = 2.0,
    seed: int = 0,
    node_budget: int | None = None,
) -> Placement:
    """Plan offsets for ``buffers``; each offset is a multiple of ``alignment``.

    Zero-size buffers and buffers that are never live (``start == end``) get
    offset 0 and do not count towards the height. ``node_budget`` bounds the
    exact search (default ``time_budget_s * NODES_PER_SECOND``); ``seed``
    picks the random tie-breaks of the search's randomised preorders. The
    result's ``progress`` lists each improvement as (seconds, height).
    """
    began = time.perf_counter()
    _check_input(buffers, alignment, time_budget_s)
    offsets: dict[BufferId, int] = {b.id: 0 for b in buffers}
    lower_bound = liveness_lower_bound(buffers)
    live = [b for b in buffers if b.size > 0 and b.end > b.start]
    if not live:
        return Placement(offsets, 0, lower_bound, "empty", time.perf_counter() - began)

    problem = build_sectioned_problem(
        [b.start for b in live], [b.end for b in live], [b.size for b in live], alignment
    )
    progress: list[tuple[float, int]] = []

    def record(unit_offsets: list[int]) -> None:
        progress.append((time.perf_counter() - began, _height_in_bytes(live, unit_offsets, problem.unit)))

    target = problem.lower_bound()
    unit_offsets, strategy = _best_greedy(problem, target)
    record(unit_offsets)
    if height_of(problem, unit_offsets) > target:
        if node_budget is None:
            node_budget = int(time_budget_s * NODES_PER_SECOND)
        searched = lowest_capacity_plan(
            problem,
            upper_bound=height_of(problem, unit_offsets) - 1,
            node_budget=node_budget,
            deadline=began + time_budget_s,
            seed=seed,
            on_plan=record,
        )
        if searched is not None:
            unit_offsets, strategy = searched

    for b, off in zip(live, unit_offsets):
        offsets[b.id] = off * problem.unit
    height = _height_in_bytes(live, unit_offsets, problem.unit)
    return Placement(offsets, height, lower_bound, strategy, time.perf_counter() - began, progress)


def _height_in_bytes(live: Sequence[Lifetime], unit_offsets: Sequence[int], unit: int) -> int:
    """The real height: unpadded sizes on top of offsets in units."""
    return max(off * unit + b.size for b, off in zip(live, unit_offsets))


def _best_greedy(problem: SectionedProblem, target: int) -> tuple[list[int], str]:
    """The lowest greedy plan over all orderings, stopping early at ``target``."""
    best: list[int] = []
    best_name = ""
    for name, ordering in GREEDY_ORDERINGS.items():
        offsets = lowest_fit_offsets(problem, ordering(problem))
        if not best or height_of(problem, offsets) < height_of(problem, best):
            best, best_name = offsets, name
        if height_of(problem, best) <= target:
            break
    return best, f"greedy:{best_name}"


def _check_input(buffers: Sequence[Lifetime], alignment: int, time_budget_s: float) -> None:
    if alignment < 1:
        raise PlacementError(f"alignment must be positive, got {alignment}")
    if time_budget_s < 0:
        raise PlacementError(f"time budget must be >= 0, got {time_budget_s}")
    seen: dict[BufferId, None] = {}
    for b in buffers:
        if b.id in seen:
            raise PlacementError(f"duplicate buffer id {b.id!r}")
        seen[b.id] = None
        if b.size < 0:
            raise PlacementError(f"buffer {b.id!r} has negative size {b.size}")
        if b.end < b.start:
            raise PlacementError(f"buffer {b.id!r} ends ({b.end}) before it starts ({b.start})")


def validate_placement(
    buffers: Sequence[Lifetime], offsets: Mapping[BufferId, int], alignment: int = 64
) -> None:
    """Raise ``PlacementError`` unless ``offsets`` is a valid plan for ``buffers``.

    Checks that every buffer has a non-negative offset that is a multiple of
    ``alignment``, and that no two buffers live at the same time share a byte
    (the error names both).
    """
    for b in buffers:
        if b.id not in offsets:
            raise PlacementError(f"buffer {b.id!r} has no offset")
        off = offsets[b.id]
        if off < 0 or off % alignment:
            raise PlacementError(f"buffer {b.id!r} has offset {off}, not a multiple of {alignment}")
    # Sweep by start time: only buffers whose lifetimes overlap are compared.
    live = sorted(
        (b for b in buffers if b.size > 0 and b.end > b.start), key=lambda b: (b.start, b.end)
    )
    active: list[Lifetime] = []
    for b in live:
        active = [a for a in active if a.end > b.start]
        low, high = offsets[b.id], offsets[b.id] + b.size
        for a in active:
            if offsets[a.id] < high and low < offsets[a.id] + a.size:
                raise PlacementError(
                    f"buffers {a.id!r} and {b.id!r} overlap: both live at time {b.start}, "
                    f"bytes [{offsets[a.id]}, {offsets[a.id] + a.size}) and [{low}, {high})"
                )
        active.append(b)


__all__ = [
    "Lifetime",
    "Placement",
    "PlacementError",
    "liveness_lower_bound",
    "place_buffers",
    "validate_placement",
]
