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
* Dominance. A placed buffer that overlaps nothing unplaced changes nothing
  for the rest; if the rest fails with it, the node fails.
* Decomposition. Once every buffer crossing a section boundary is placed, the
  two sides no longer interact; they are solved one after the other, so a
  failure on one side never makes the search revisit choices on the other.

Our addition: *stranded* buffers. A buffer passed over by the canonical order
(its key is below the last one placed) can only be placed once a later
neighbour lifts it, so it sits at least one neighbour's size above the last
offset; section floors are re-checked with those lifts.

The depth-first search keeps an explicit stack (a plan has one level per
buffer, far beyond Python's recursion limit) and counts nodes, so a run is
deterministic; it can be paused at a node limit and resumed later.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import numpy as np

from .sections import SectionedProblem


class Outcome(enum.Enum):
    FOUND = "found"            # offsets hold a plan within the capacity
    INFEASIBLE = "infeasible"  # the whole space was searched: no such plan
    ABORTED = "aborted"        # node budget or deadline ran out first


# Stands for "no minimum offset" (the buffer is placed). Far above any
# capacity, and far enough below int64 overflow to survive `* num_buffers`.
_UNSET = 1 << 40

# Nodes between two looks at the clock: reading it costs more than a node.
_CLOCK_EVERY = 256

# Int64 entries SearchTables may hold; beyond it the search is skipped.
_MAX_TABLE_ENTRIES = 8_000_000


class SearchTables:
    """The static numpy form of a problem, built once and shared by every run."""

    def __init__(self, problem: SectionedProblem) -> None:
        self.problem = problem
        n = problem.num_buffers
        self.sizes = np.array(problem.sizes, dtype=np.int64)
        self.sizes_padded = np.append(self.sizes, _UNSET)  # index n: the padding below
        self.first = np.array(problem.first_section, dtype=np.int64)
        self.end = np.array(problem.end_section, dtype=np.int64)
        self.width = np.array(problem.ends, dtype=np.int64) - np.array(problem.starts, dtype=np.int64)
        self.overlaps = [np.array(o, dtype=np.int64) for o in problem.overlaps]
        self.totals = np.array(problem.section_totals(), dtype=np.int64)
        self.cuts = np.zeros(max(problem.num_sections - 1, 0), dtype=np.int64)
        for b in range(n):
            self.cuts[problem.first_section[b] : problem.end_section[b] - 1] += 1
        # All sections' members back to back, and where each section's begin:
        # the floors of a run of sections are then one minimum.reduceat.
        self.section_members = np.array(
            [c for members in problem.section_members for c in members], dtype=np.int64
        )
        self.section_starts = np.cumsum([0] + [len(m) for m in problem.section_members])
        # Each buffer's neighbours, padded with index n to a rectangle, so the
        # neighbours of a set of buffers are one gather.
        self.neighbours = np.full((n, max(self.max_degree(problem), 1)), n, dtype=np.int64)
        for b, o in enumerate(problem.overlaps):
            self.neighbours[b, : len(o)] = o
        # Placing b can only move the floors of sections that b or one of its
        # neighbours spans: one contiguous run (the hull), since every
        # neighbour shares a section with b. Keep its members and starts.
        self.hull: list[tuple[int, int]] = []
        self.hull_members: list[np.ndarray] = []
        self.hull_starts: list[np.ndarray] = []
        starts = self.section_starts
        for b in range(n):
            low = min([problem.first_section[b], *(problem.first_section[c] for c in problem.overlaps[b])])
            high = max([problem.end_section[b], *(problem.end_section[c] for c in problem.overlaps[b])])
            self.hull.append((low, high))
            self.hull_members.append(self.section_members[starts[low] : starts[high]])
            self.hull_starts.append(starts[low:high] - starts[low])

    @staticmethod
    def max_degree(problem: SectionedProblem) -> int:
        return max((len(o) for o in problem.overlaps), default=0)

    @staticmethod
    def affordable(problem: SectionedProblem) -> bool:
        """Whether the tables fit in a modest amount of memory (about 64 MB)
        and the keys (offset * buffers + rank) fit in int64."""
        entries = problem.num_buffers * (SearchTables.max_degree(problem) + problem.num_sections)
        return entries <= _MAX_TABLE_ENTRIES and problem.num_buffers < (1 << 62) // _UNSET


@dataclass
class _Partition:
    """A run of sections whose unplaced buffers can be solved on their own."""

    first_section: int
    end_section: int
    buffers: np.ndarray  # int64 buffer indices
    ranks: np.ndarray    # preorder rank of each entry of `buffers`
    by_rank: list[int]   # buffer index of each rank
    by_rank_array: np.ndarray  # the same, as an array for vectorised lookups


@dataclass
class _Node:
    """One decision point: which buffer of ``partition`` to place next."""

    partition: _Partition
    keys: list[int]     # live candidates, encoded offset * num_buffers + rank, ascending
    position: int = 0   # index into keys of the next candidate to try
    placed: int = -1    # the buffer placed below this node while a child runs
    placed_at: int = 0
    hatless: bool = False  # no unplaced buffer overlaps the placed one
    raised: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    raised_from: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass
class _Split:
    """Independent partitions, solved left to right; all must succeed."""

    parts: list[_Partition]
    index: int = 0


class CanonicalSearch:
    """One depth-first search at a fixed capacity and preorder heuristic.

    The search can be paused and resumed (``resume`` with a higher node
    limit), so that several searches can share a budget without restarting.
    State lives in numpy arrays so that a placement is a fixed handful of
    vectorised operations rather than Python loops over its neighbours and
    sections.
    """

    def __init__(
        self,
        tables: SearchTables,
        capacity: int,
        heuristic: str,
        tie_break: np.ndarray | None = None,
    ) -> None:
        n = tables.problem.num_buffers
        self.t = tables
        self.n = n
        self.capacity = capacity
        self.heuristic = heuristic
        self.tie_break = tie_break
        self.nodes = 0
        # min_offset[b] for unplaced b, _UNSET once b is placed; one more
        # entry, always _UNSET, for the padding of SearchTables.neighbours.
        self.min_offset = np.zeros(n + 1, dtype=np.int64)
        self.min_offset[n] = _UNSET
        self.solution = [-1] * n
        self.total = tables.totals.copy()  # unplaced units per section
        self.cuts = tables.cuts.copy()     # unplaced buffers crossing s | s + 1
        self.outcome: Outcome | None = None  # set once the search has finished
        self._stack: list[_Node | _Split] | None = None
        # The answer of the frame just popped; None while descending into a
        # freshly pushed frame.
        self._returning: bool | None = None

    def resume(self, node_limit: int, deadline: float) -> Outcome:
        """Search on until done, until ``nodes`` reaches ``node_limit``, or
        until ``deadline`` (``time.perf_counter``) has passed."""
        if self.outcome is not None:
            return self.outcome
        if self._stack is None:
            if int(self.total.max(initial=0)) > self.capacity:
                self.outcome = Outcome.INFEASIBLE
                return self.outcome
            zero_cuts = (np.flatnonzero(self.cuts == 0) + 1).tolist()
            self._stack = [_Split(self._split(0, len(self.total), np.arange(self.n), zero_cuts))]
        next_clock = self.nodes + _CLOCK_EVERY
        while self._stack:
            if self.nodes >= node_limit:
                return Outcome.ABORTED
            if self.nodes >= next_clock:
                next_clock = self.nodes + _CLOCK_EVERY
                if time.perf_counter() > deadline:
                    return Outcome.ABORTED
            self._step()
        self.outcome = Outcome.FOUND if self._returning else Outcome.INFEASIBLE
        return self.outcome

    def _step(self) -> None:
        """Advance the depth-first search by one frame transition."""
        assert self._stack is not None
        stack, returning = self._stack, self._returning
        frame = stack[-1]
        if isinstance(frame, _Split):
            if returning is False:
                stack.pop()
                return
            if returning is True:
                frame.index += 1
            self._returning = None
            if frame.index == len(frame.parts):
                stack.pop()
                self._returning = True
                return
            node = self._node(frame.parts[frame.index], last_key=-1)
            if node is None:
                frame.index += 1  # that part had nothing left to place
            else:
                stack.append(node)
            return
        if returning is not None:
            self._undo(frame)
            # A failed buffer that overlaps nothing unplaced changed nothing
            # for the rest, and any later choice would strand it below the
            # canonical order: the whole node fails.
            if returning or frame.hatless:
                stack.pop()
                return
        child = self._advance(frame)
        if child is None:
            stack.pop()
            self._returning = False
        elif child is True:
            stack.pop()  # the last buffer of the partition fitted
            self._returning = True
        else:
            stack.append(child)
            self._returning = None

    def _node(self, part: _Partition, last_key: int) -> _Node | None:
        """The candidates of ``part`` in (minimum offset, rank) order, or None
        when every buffer of ``part`` is placed."""
        self.nodes += 1
        n = self.n
        lows = self.min_offset[part.buffers]  # placed buffers read _UNSET
        min_height = int((lows + self.t.sizes[part.buffers]).min())
        if min_height >= _UNSET:
            return None
        keys = lows * n + part.ranks
        keys.sort()
        # Dominance: no candidate may sit at or above the lowest top some
        # unplaced buffer could reach. Monotone floor: whatever goes next sits
        # at `off` or higher, and each section's unplaced total must stack
        # above that (in the candidate's own sections above its top, which is
        # the same sum), so off + the largest unplaced total must fit.
        largest_total = int(self.total[part.first_section : part.end_section].max())
        cutoff = min(min_height, self.capacity - largest_total + 1)
        # Canonical order: only keys after the one placed last in this partition.
        stranded = int(np.searchsorted(keys, last_key, "right"))
        if stranded and not self._stranded_fit(part, keys[:stranded], last_key // n):
            return _Node(part, [])
        live = keys[stranded : np.searchsorted(keys, cutoff * n)]
        return _Node(part, live.tolist())

    def _stranded_fit(self, part: _Partition, keys: np.ndarray, off: int) -> bool:
        """Whether the buffers passed over by the canonical order still fit.

        A buffer whose key is below the last one placed can no longer go at
        its minimum offset; it must wait until some unplaced neighbour, placed
        at ``off`` or above, lifts it onto its top. So it sits at least at
        ``off`` + its smallest unplaced neighbour (and never, without one).
        Re-check every section floor with those lifts.
        """
        t, cap, min_offset = self.t, self.capacity, self.min_offset
        buffers = part.by_rank_array[keys % self.n]
        neighbours = t.neighbours[buffers]
        sizes = np.where(min_offset[neighbours] < _UNSET, t.sizes_padded[neighbours], _UNSET)
        lift = sizes.min(axis=1)
        if int(lift.max()) >= _UNSET:
            return False
        saved = min_offset[buffers]
        min_offset[buffers] = np.maximum(saved, lift + off)
        low, high = part.first_section, part.end_section
        starts = t.section_starts[low : high + 1]
        floors = np.minimum.reduceat(
            min_offset[t.section_members[starts[0] : starts[-1]]], starts[:-1] - starts[0]
        )
        min_offset[buffers] = saved
        np.minimum(floors, cap, out=floors)
        floors += self.total[low:high]
        return not bool((floors > cap).any())

    def _advance(self, node: _Node) -> _Node | _Split | bool | None:
        """Place the next candidate that passes the checks and return the child
        frame (True when nothing is left to place), or None when none passes."""
        n = self.n
        while node.position < len(node.keys):
            key = node.keys[node.position]
            node.position += 1
            off, r = divmod(key, n)
            b = node.partition.by_rank[r]
            if self._apply(node, b, off):
                first, end = int(self.t.first[b]), int(self.t.end[b])
                if first + 1 < end and not self.cuts[first : end - 1].all():
                    cut_points = (np.flatnonzero(self.cuts[first : end - 1] == 0) + first + 1).tolist()
                    part = node.partition
                    return _Split(
                        self._split(part.first_section, part.end_section, part.buffers, cut_points)
                    )
                child = self._node(node.partition, key)
                if child is None:
                    self._undo(node)
                    return True
                return child
            self._undo(node)
            if node.hatless:
                break  # see _search
        node.position = len(node.keys)
        return None

    def _apply(self, node: _Node, b: int, off: int) -> bool:
        """Place ``b`` at ``off``, logging the changes on ``node``; False if pruned."""
        t, cap, min_offset = self.t, self.capacity, self.min_offset
        size = int(t.sizes[b])
        top = off + size
        node.placed, node.placed_at = b, off
        self.solution[b] = off
        min_offset[b] = _UNSET
        neighbours = t.overlaps[b]
        lows = min_offset[neighbours]
        below = lows < top
        node.raised, node.raised_from = neighbours[below], lows[below]
        min_offset[node.raised] = top  # neighbours must now clear b's top
        node.hatless = int(lows.min(initial=_UNSET)) == _UNSET
        first, end = int(t.first[b]), int(t.end[b])
        self.total[first:end] -= size
        self.cuts[first : end - 1] -= 1
        # Section floors: whatever is still unplaced in a section stacks above
        # the lowest minimum offset there. Sections with nothing unplaced read
        # _UNSET, clipped to the capacity so that they pass.
        low, high = t.hull[b]
        floors = np.minimum.reduceat(min_offset[t.hull_members[b]], t.hull_starts[b])
        np.minimum(floors, cap, out=floors)
        floors += self.total[low:high]
        return not bool((floors > cap).any())

    def _undo(self, node: _Node) -> None:
        """Take back the placement ``_apply`` made on ``node``."""
        b = node.placed
        first, end = int(self.t.first[b]), int(self.t.end[b])
        self.min_offset[node.raised] = node.raised_from
        self.min_offset[b] = node.placed_at
        self.total[first:end] += self.t.sizes[b]
        self.cuts[first : end - 1] += 1
        node.placed = -1

    def _split(
        self, first: int, end: int, buffers: np.ndarray, cut_points: list[int]
    ) -> list[_Partition]:
        """Cut sections [first, end) at ``cut_points`` into pieces with unplaced buffers."""
        bounds = [first, *cut_points, end]
        buffers = buffers[self.min_offset[buffers] < _UNSET]
        starts, ends = self.t.first[buffers], self.t.end[buffers]
        pieces: list[_Partition] = []
        for lo, hi in zip(bounds, bounds[1:]):
            inside = buffers[(starts < hi) & (ends > lo)]
            if inside.size:
                pieces.append(self._ranked(lo, hi, inside))
        return pieces

    def _ranked(self, first: int, end: int, buffers: np.ndarray) -> _Partition:
        """A partition with its buffers ranked by the preorder heuristic.

        Each letter is one descending key, most significant first: W lifetime
        width, A area, T the largest unplaced total among the buffer's
        sections (taken now, so a piece is ranked by what is left in it),
        Z size. Remaining ties go to the lower buffer index, or follow
        ``tie_break`` (a permutation) when one was given.
        """
        sizes = self.t.sizes[buffers].astype(np.float64)
        widths = self.t.width[buffers].astype(np.float64)
        columns = {"W": widths, "A": sizes * widths, "Z": sizes}
        if "T" in self.heuristic:
            # Maximum of total over [first_section, end_section) per buffer.
            padded_total = np.append(self.total, 0)
            bounds = np.stack([self.t.first[buffers], self.t.end[buffers]], axis=1).ravel()
            columns["T"] = np.maximum.reduceat(padded_total, bounds)[::2].astype(np.float64)
        tie_break = self.tie_break[buffers] if self.tie_break is not None else buffers
        keys = [tie_break] + [-columns[letter] for letter in reversed(self.heuristic)]
        order = np.lexsort(keys)
        ranks = np.empty(buffers.size, dtype=np.int64)
        ranks[order] = np.arange(buffers.size)
        return _Partition(first, end, buffers, ranks, buffers[order].tolist(), buffers[order])
