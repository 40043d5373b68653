"""Greedy placement: put buffers down one by one at the lowest offset that fits.

Greedy is the fast path: on most compiler-produced schedules one of these
orderings already reaches the liveness bound, and then no search runs at all.
"""
from __future__ import annotations

from typing import Callable

from .sections import SectionedProblem

# An ordering maps a problem to the sequence in which greedy places its buffers.
Ordering = Callable[[SectionedProblem], list[int]]


def _by(key: Callable[[SectionedProblem, int], tuple[int, ...]]) -> Ordering:
    # The buffer index is the final tie-break so that every ordering is total.
    return lambda p: sorted(range(p.num_buffers), key=lambda b: (*key(p, b), b))


def _lifetime(p: SectionedProblem, b: int) -> int:
    return p.ends[b] - p.starts[b]


# Name -> ordering, tried in this order; "size" first because it is the
# classic best single heuristic and the early exit usually fires on it.
GREEDY_ORDERINGS: dict[str, Ordering] = {
    "size": _by(lambda p, b: (-p.sizes[b], -_lifetime(p, b))),
    "area": _by(lambda p, b: (-p.sizes[b] * _lifetime(p, b), -p.sizes[b])),
    "lifetime": _by(lambda p, b: (-_lifetime(p, b), -p.sizes[b])),
    "start": _by(lambda p, b: (p.starts[b], -p.sizes[b])),
}


def lowest_fit_offsets(problem: SectionedProblem, order: list[int]) -> list[int]:
    """Place buffers in ``order``, each at the lowest offset clear of its placed neighbours."""
    sizes = problem.sizes
    offsets = [-1] * problem.num_buffers
    for b in order:
        size = sizes[b]
        blocked = sorted(
            (offsets[c], offsets[c] + sizes[c]) for c in problem.overlaps[b] if offsets[c] >= 0
        )
        candidate = 0
        for low, high in blocked:
            if low >= candidate + size:
                break  # the gap below `low` is wide enough
            candidate = max(candidate, high)
        offsets[b] = candidate
    return offsets


def height_of(problem: SectionedProblem, offsets: list[int]) -> int:
    """Height of a plan in units (padded sizes)."""
    return max((o + s for o, s in zip(offsets, problem.sizes)), default=0)
