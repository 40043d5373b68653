"""Exact search: does a plan of height <= capacity exist?

The method follows the published description of MiniMalloc (Moffitt, ASPLOS
2023); the code is our own.

* Canonical plans only. Any plan can be pushed down until every buffer rests
  on offset 0 or on top of a buffer it overlaps in time; listing such a plan
  by (offset, preorder rank) gives a sequence in which each buffer sits
  exactly at its current *minimum offset* (the highest top among its placed
  neighbours). So the search only branches on *which* buffer comes next, never
  on where it goes, and it only takes buffers in increasing (offset, rank).
* Section inference. Later buffers go no lower than the current offset and
  no lower than the floor of their section (the top of what is placed there,
  or the lowest minimum offset of what is still unplaced there), and they
  stack: floor + unplaced total must fit under the capacity in every section.
* Dominance. If some unplaced buffer would fit entirely below the candidate's
  offset, placing the candidate first only leaves a gap that buffer could have
  filled, and the plan with the gap filled is found on another branch.
* Decomposition. Once every buffer crossing a section boundary is placed, the
  two sides no longer interact; they are solved one after the other, so a
  failure on one side never makes the search revisit choices on the other.

The depth-first search keeps an explicit stack (a plan has one level per
buffer, far beyond Python's recursion limit) and stops after a node budget, so
a run is deterministic; the wall-clock deadline is only a safety net.
"""
from __future__ import annotations

import enum
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Sequence

from .sections import SectionedProblem


class Outcome(enum.Enum):
    FOUND = "found"            # offsets hold a plan within the capacity
    INFEASIBLE = "infeasible"  # the whole space was searched: no such plan
    ABORTED = "aborted"        # node budget or deadline ran out first


@dataclass
class SearchResult:
    outcome: Outcome
    offsets: list[int] | None  # in units, one per buffer, when FOUND
    nodes: int


@dataclass
class _Partition:
    """A run of sections whose unplaced buffers can be solved on their own."""

    first_section: int
    end_section: int
    buffers: list[int]


@dataclass
class _Node:
    """One decision point: which buffer of ``partition`` to place next."""

    partition: _Partition
    keys: list[int]     # candidates, encoded offset * num_buffers + rank, ascending
    position: int       # index into keys of the next candidate to try
    min_height: int     # lowest top any unplaced buffer could reach
    placed: int = -1    # the buffer placed below this node while a child runs
    offset_log: list[tuple[int, int]] = field(default_factory=list)
    floor_log: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class _Split:
    """Independent partitions, solved left to right; all must succeed."""

    parts: list[_Partition]
    index: int = 0


class _OutOfBudget(Exception):
    pass


# How many nodes pass between two looks at the clock: reading it costs more
# than a node's bookkeeping.
_CLOCK_EVERY = 256


class CanonicalSearch:
    """One depth-first search at a fixed capacity and preorder."""

    def __init__(
        self,
        problem: SectionedProblem,
        capacity: int,
        rank: Sequence[int],
        node_limit: int,
        deadline: float,
    ) -> None:
        self.p = problem
        self.capacity = capacity
        self.rank = list(rank)
        self.by_rank = [0] * problem.num_buffers
        for b, r in enumerate(rank):
            self.by_rank[r] = b
        self.node_limit = node_limit
        self.deadline = deadline
        self.nodes = 0
        n = problem.num_buffers
        self.offset = [-1] * n
        self.solution = [-1] * n
        self.min_offset = [0] * n
        self.floor = [0] * problem.num_sections
        self.total = problem.section_totals()
        # cuts[s]: unplaced buffers crossing the boundary between s and s + 1.
        self.cuts = [0] * max(problem.num_sections - 1, 0)
        for b in range(n):
            for s in range(problem.first_section[b], problem.end_section[b] - 1):
                self.cuts[s] += 1

    def run(self) -> SearchResult:
        if max(self.total, default=0) > self.capacity:
            return SearchResult(Outcome.INFEASIBLE, None, 0)
        whole = _Partition(0, self.p.num_sections, list(range(self.p.num_buffers)))
        try:
            found = self._search(_Split(self._split(whole, self._zero_cuts(whole))))
        except _OutOfBudget:
            return SearchResult(Outcome.ABORTED, None, self.nodes)
        if not found:
            return SearchResult(Outcome.INFEASIBLE, None, self.nodes)
        return SearchResult(Outcome.FOUND, list(self.solution), self.nodes)

    def _search(self, root: _Split) -> bool:
        """Iterative DFS. ``returning`` is the answer of the frame just popped
        (None while descending into a freshly pushed frame)."""
        stack: list[_Node | _Split] = [root]
        returning: bool | None = None
        while stack:
            frame = stack[-1]
            if isinstance(frame, _Split):
                if returning is False:
                    stack.pop()
                    continue
                if returning is True:
                    frame.index += 1
                if frame.index == len(frame.parts):
                    stack.pop()
                    returning = True
                    continue
                stack.append(self._node(frame.parts[frame.index], last_key=-1))
                returning = None
                continue
            if returning is not None:
                self._undo(frame)
                if returning:
                    stack.pop()
                    continue
            elif not frame.keys:
                stack.pop()  # nothing left to place here: this partition is done
                returning = True
                continue
            child = self._advance(frame)
            if child is None:
                stack.pop()
                returning = False
            else:
                stack.append(child)
                returning = None
        return bool(returning)

    def _node(self, part: _Partition, last_key: int) -> _Node:
        """Order the unplaced buffers of ``part`` by (minimum offset, rank)."""
        self.nodes += 1
        if self.nodes > self.node_limit or (
            self.nodes % _CLOCK_EVERY == 0 and time.perf_counter() > self.deadline
        ):
            raise _OutOfBudget
        n = self.p.num_buffers
        sizes, offset, min_offset, rank = self.p.sizes, self.offset, self.min_offset, self.rank
        keys: list[int] = []
        min_height = 1 << 62
        for c in part.buffers:
            if offset[c] < 0:
                low = min_offset[c]
                keys.append(low * n + rank[c])
                if low + sizes[c] < min_height:
                    min_height = low + sizes[c]
        keys.sort()
        # Canonical order: only keys after the one placed last in this partition.
        return _Node(part, keys, bisect_right(keys, last_key), min_height)

    def _advance(self, node: _Node) -> _Node | _Split | None:
        """Place the next candidate that passes the checks; return the child frame."""
        n = self.p.num_buffers
        while node.position < len(node.keys):
            key = node.keys[node.position]
            node.position += 1
            off, r = divmod(key, n)
            if off >= node.min_height:
                break  # dominated, and so is every later key (offsets only grow)
            b = self.by_rank[r]
            if off + self.p.sizes[b] > self.capacity:
                continue
            if self._apply(node, b, off):
                cut_points = self._new_cut_points(b)
                if cut_points:
                    return _Split(self._split(node.partition, cut_points))
                return self._node(node.partition, key)
            self._undo(node)
        node.position = len(node.keys)
        return None

    def _apply(self, node: _Node, b: int, off: int) -> bool:
        """Place ``b`` at ``off``, logging every change on ``node``; False if pruned."""
        p, cap = self.p, self.capacity
        size = p.sizes[b]
        top = off + size
        offset, min_offset, floor, total = self.offset, self.min_offset, self.floor, self.total
        offset[b] = off
        self.solution[b] = off
        node.placed = b
        offset_log: list[tuple[int, int]] = []
        floor_log: list[tuple[int, int]] = []
        node.offset_log, node.floor_log = offset_log, floor_log
        low, high = p.first_section[b], p.end_section[b]
        # Neighbours must now clear b's top.
        for c in p.overlaps[b]:
            if offset[c] < 0 and min_offset[c] < top:
                offset_log.append((c, min_offset[c]))
                min_offset[c] = top
                low = min(low, p.first_section[c])
                high = max(high, p.end_section[c])
        feasible = True
        for s in range(p.first_section[b], p.end_section[b]):
            floor_log.append((s, floor[s]))
            floor[s] = top
            total[s] -= size
            if top + total[s] > cap:
                feasible = False
        if feasible:
            feasible = self._raise_floors(low, high, floor_log)
        if feasible:
            part = node.partition
            feasible = off + max(total[part.first_section:part.end_section]) <= cap
        for s in range(p.first_section[b], p.end_section[b] - 1):
            self.cuts[s] -= 1
        return feasible

    def _raise_floors(self, low: int, high: int, floor_log: list[tuple[int, int]]) -> bool:
        """Lift each section's floor to the lowest minimum offset of its unplaced buffers."""
        members, offset, min_offset = self.p.section_members, self.offset, self.min_offset
        floor, total, cap = self.floor, self.total, self.capacity
        for s in range(low, high):
            if total[s] == 0:
                continue
            lowest = min([min_offset[c] for c in members[s] if offset[c] < 0])
            if lowest > floor[s]:
                floor_log.append((s, floor[s]))
                floor[s] = lowest
                if lowest + total[s] > cap:
                    return False
        return True

    def _undo(self, node: _Node) -> None:
        """Take back the placement ``_apply`` made on ``node``."""
        p, b = self.p, node.placed
        for s, old in reversed(node.floor_log):
            self.floor[s] = old
        for c, old in reversed(node.offset_log):
            self.min_offset[c] = old
        size = p.sizes[b]
        for s in range(p.first_section[b], p.end_section[b]):
            self.total[s] += size
        for s in range(p.first_section[b], p.end_section[b] - 1):
            self.cuts[s] += 1
        self.offset[b] = -1
        node.placed = -1

    def _new_cut_points(self, b: int) -> list[int]:
        """Boundaries inside b's span that b was the last unplaced buffer to cross."""
        first, end = self.p.first_section[b], self.p.end_section[b]
        return [s + 1 for s in range(first, end - 1) if self.cuts[s] == 0]

    def _zero_cuts(self, part: _Partition) -> list[int]:
        return [s + 1 for s in range(part.first_section, part.end_section - 1) if self.cuts[s] == 0]

    def _split(self, part: _Partition, cut_points: list[int]) -> list[_Partition]:
        """Cut ``part`` at the given boundaries, keeping pieces with unplaced buffers."""
        bounds = [part.first_section, *cut_points, part.end_section]
        first, end, offset = self.p.first_section, self.p.end_section, self.offset
        pieces: list[_Partition] = []
        for lo, hi in zip(bounds, bounds[1:]):
            inside = [c for c in part.buffers if offset[c] < 0 and first[c] < hi and end[c] > lo]
            if inside:
                pieces.append(_Partition(lo, hi, inside))
        return pieces
