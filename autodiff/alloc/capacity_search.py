"""Drive the exact search: which capacities to try, with which preorders and budgets.

Two facts shape this driver.

* Search times are heavy-tailed: at one capacity one preorder may finish in a
  few hundred nodes while another wanders for millions. So each capacity is
  attacked by a small portfolio of preorders whose searches take turns, a
  slice of nodes each; a search is paused, never restarted, so solving costs
  about (portfolio size) x (nodes the luckiest preorder needs).
* Tight capacities prune hard, loose ones are quick to satisfy, and on most
  instances the liveness bound itself is achievable. So a probe at the bound
  runs for the whole budget, and alongside it, taking turns with it, a
  descent bisects capacities between the bound and the best plan so far,
  giving each of its probes a bounded share. A plan at the bound ends
  everything; the descent gives a good plan early when the bound is out of
  reach.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .canonical_search import CanonicalSearch, Outcome, SearchTables
from .greedy import height_of
from .sections import SectionedProblem

# Default node budget per second of time budget. Set at the slow end of what
# one core of a current machine does (2-13k nodes/s across the MiniMalloc set)
# so that the node budget, not the clock, normally ends the search and
# results stay deterministic.
NODES_PER_SECOND = 2000

# The portfolio run at each capacity: preorder letters (see
# CanonicalSearch._ranked) and whether ties are broken at random. "TW" leaves
# many ties, so its randomised variant gives genuinely different runs.
# Measured on the MiniMalloc set, every instance is solved at its bound
# fastest by one of the first three; MiniMalloc's third default, WAT, never
# was, but it often is the quickest at the looser capacities of the descent.
BOUND_PORTFOLIO: tuple[tuple[str, bool], ...] = (("TWA", False), ("TAW", False), ("TW", True))
DESCENT_PORTFOLIO: tuple[tuple[str, bool], ...] = (*BOUND_PORTFOLIO, ("WAT", False))

# Turns per round: the bound probe gets two slices for each descent slice.
_BOUND_TURNS = 2

# Capacities (in units) at or above this would overflow the search's keys.
_MAX_CAPACITY = 1 << 39

# A descent probe may use at most this many nodes per buffer, and at most
# 1/_DESCENT_SHARE of the budget: near the best achievable height a probe is
# a lottery ticket, and many small tickets beat a few large ones.
_DESCENT_NODES_PER_BUFFER = 20
_DESCENT_SHARE = 8


@dataclass
class _Probe:
    """The portfolio's searches at one capacity, taking turns."""

    capacity: int
    searches: list[tuple[str, CanonicalSearch]]
    budget: int          # nodes this probe may use before it is given up
    spent: int = 0
    turn: int = 0        # index of the search whose turn is next
    winner: str = ""     # name of the search that finished, once one has

    def run_slice(self, slice_nodes: int, deadline: float) -> Outcome:
        """Run the next search for up to ``slice_nodes`` nodes."""
        name, search = self.searches[self.turn]
        self.turn = (self.turn + 1) % len(self.searches)
        before = search.nodes
        allowed = max(min(slice_nodes, self.budget - self.spent), 0)
        outcome = search.resume(before + allowed, deadline)
        self.spent += search.nodes - before
        if outcome is not Outcome.ABORTED:
            self.winner = name
        return outcome

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.budget

    def plan(self) -> list[int]:
        """The offsets found by the winning search."""
        return next(list(search.solution) for name, search in self.searches if name == self.winner)


def _probe(
    tables: SearchTables,
    capacity: int,
    budget: int,
    seed: int,
    portfolio: tuple[tuple[str, bool], ...] = BOUND_PORTFOLIO,
) -> _Probe:
    rng = np.random.default_rng(seed)
    n = tables.problem.num_buffers
    searches: list[tuple[str, CanonicalSearch]] = []
    for letters, randomised in portfolio:
        tie_break = rng.permutation(n) if randomised else None
        name = f"{letters}~{seed}" if randomised else letters
        searches.append((name, CanonicalSearch(tables, capacity, letters, tie_break)))
    return _Probe(capacity, searches, budget)


def lowest_capacity_plan(
    problem: SectionedProblem,
    upper_bound: int,
    node_budget: int,
    deadline: float,
    seed: int,
    on_plan: Callable[[list[int]], None] | None = None,
) -> tuple[list[int], str] | None:
    """The lowest plan found with height <= ``upper_bound`` (units), or None.

    Stops at the liveness bound, when ``node_budget`` nodes are spent, at
    ``deadline``, or once no capacity below the best plan is left open.
    ``on_plan`` sees every improved plan as it is found.
    """
    if not SearchTables.affordable(problem) or upper_bound >= _MAX_CAPACITY:
        return None  # too large to search; the caller keeps its greedy plan
    tables = SearchTables(problem)
    slice_nodes = 2 * max(problem.num_buffers, 1)
    best: tuple[list[int], str] | None = None
    best_height = upper_bound + 1
    bound = _probe(tables, problem.lower_bound(), node_budget, seed)
    descent: _Probe | None = None
    descent_low = bound.capacity + 1  # the descent has given up on capacities below
    descent_budget = min(node_budget // _DESCENT_SHARE, _DESCENT_NODES_PER_BUFFER * problem.num_buffers)
    descent_budget = max(descent_budget, slice_nodes)
    probes_started = 0
    spent = 0
    turn = 0
    while spent < node_budget and time.perf_counter() < deadline:
        if descent is None and descent_low >= best_height:
            # Every capacity below the best plan was given up on at this
            # probe size: start over above the bound with probes twice as big.
            descent_low = bound.capacity + 1
            descent_budget *= 2
        if descent is None and descent_low < best_height:
            probes_started += 1
            capacity = (descent_low + best_height - 1) // 2
            descent = _probe(tables, capacity, descent_budget, seed + probes_started, DESCENT_PORTFOLIO)
        # The bound probe takes _BOUND_TURNS slices, then the descent one.
        turn = (turn + 1) % (_BOUND_TURNS + 1)
        probe = descent if turn == 0 and descent is not None else bound
        before = probe.spent
        outcome = probe.run_slice(min(slice_nodes, node_budget - spent), deadline)
        spent += probe.spent - before
        if outcome is Outcome.FOUND:
            plan = probe.plan()
            best_height = height_of(problem, plan)
            best = (plan, f"search:{probe.winner}")
            if on_plan is not None:
                on_plan(plan)
            if probe is bound:
                return best
            descent = None
        elif outcome is Outcome.INFEASIBLE:
            # Proven: no plan at this capacity or below. The bound probe
            # moves just above it, the descent above that.
            if probe.capacity + 1 >= best_height:
                return best
            bound = _probe(tables, probe.capacity + 1, node_budget, seed)
            descent_low = max(descent_low, bound.capacity + 1)
            if descent is not None and descent.capacity <= probe.capacity:
                descent = None
        elif probe is descent and probe.exhausted:
            descent_low = probe.capacity + 1
            descent = None
    return best
