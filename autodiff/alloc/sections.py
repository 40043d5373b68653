"""The packing problem in the form the planners work on: units, sections, overlaps.

Why units: offsets must be multiples of the alignment, so every size is first
padded up to a multiple of it; a plan in which every buffer rests on offset 0
or on top of another buffer then only uses offsets that are sums of padded
sizes, so dividing everything by the gcd of the padded sizes loses nothing and
keeps the numbers small.

Why sections: two intervals overlap exactly when they share a *maximal*
cross-section of live buffers (interval graphs are chordal), and there are at
most as many maximal cross-sections as buffers. Every maximal cross-section is
the set of buffers live just before some buffer ends, right after a start, so
each buffer spans one contiguous run of sections. The exact search keeps its
bounds per section.
"""
from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class SectionedProblem:
    """Buffers that are live at some time and non-empty, in search units.

    Buffer ``b`` (an index into these tuples) needs ``sizes[b]`` units and lives
    in sections ``first_section[b] <= s < end_section[b]``.
    """

    sizes: tuple[int, ...]
    starts: tuple[int, ...]          # lifetime [start, end) in the caller's time steps
    ends: tuple[int, ...]
    first_section: tuple[int, ...]
    end_section: tuple[int, ...]     # exclusive
    section_members: tuple[tuple[int, ...], ...]
    overlaps: tuple[tuple[int, ...], ...]  # buffers whose lifetimes overlap b's, ascending
    unit: int                        # bytes per unit; a multiple of the alignment

    @property
    def num_buffers(self) -> int:
        return len(self.sizes)

    @property
    def num_sections(self) -> int:
        return len(self.section_members)

    def section_totals(self) -> list[int]:
        """Units live in each section; their maximum is the liveness bound."""
        totals = [0] * self.num_sections
        for b, size in enumerate(self.sizes):
            for s in range(self.first_section[b], self.end_section[b]):
                totals[s] += size
        return totals

    def lower_bound(self) -> int:
        """The liveness lower bound on the height, in units."""
        return max(self.section_totals(), default=0)


def padded_size(size: int, alignment: int) -> int:
    """``size`` rounded up to a multiple of ``alignment``: what a buffer really blocks."""
    return -(-size // alignment) * alignment


def build_sectioned_problem(
    starts: Sequence[int], ends: Sequence[int], sizes: Sequence[int], alignment: int
) -> SectionedProblem:
    """Pad, scale and section buffers; each must have ``size > 0`` and ``end > start``."""
    padded = [padded_size(size, alignment) for size in sizes]
    unit = alignment * math.gcd(*[p // alignment for p in padded]) if padded else alignment
    units = tuple(p // unit for p in padded)

    # Section k of the raw sweep is the live set just before end time k; a
    # buffer is in it iff start < end_times[k] <= end.
    end_times = sorted(dict.fromkeys(ends))
    raw_first = [bisect_right(end_times, start) for start in starts]
    raw_last = [bisect_left(end_times, end) for end in ends]
    # Only sections where some buffer begins are maximal; the others are
    # subsets of the section before them and add no constraint.
    maximal = sorted(dict.fromkeys(raw_first))
    first = tuple(bisect_left(maximal, k) for k in raw_first)
    end = tuple(bisect_right(maximal, k) for k in raw_last)

    members: list[list[int]] = [[] for _ in maximal]
    for b in range(len(units)):
        for s in range(first[b], end[b]):
            members[s].append(b)
    return SectionedProblem(
        sizes=units,
        starts=tuple(starts),
        ends=tuple(ends),
        first_section=first,
        end_section=end,
        section_members=tuple(tuple(m) for m in members),
        overlaps=_overlap_lists(first, end),
        unit=unit,
    )


def _overlap_lists(first: Sequence[int], end: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """For each buffer, the buffers sharing a section with it, in ascending index order.

    Sorting by first section lets the inner scan stop at the first buffer that
    starts after ``b`` ends, so the cost is the number of overlapping pairs.
    """
    order = sorted(range(len(first)), key=lambda b: (first[b], b))
    neighbours: list[list[int]] = [[] for _ in first]
    for i, b in enumerate(order):
        for c in order[i + 1:]:
            if first[c] >= end[b]:
                break
            neighbours[b].append(c)
            neighbours[c].append(b)
    return tuple(tuple(sorted(n)) for n in neighbours)
