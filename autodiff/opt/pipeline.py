"""The graph pass pipeline: an explicit, ordered list of named passes.

`optimize(graph, disable={...})` runs them in order, skipping the disabled names,
timing each and counting nodes before and after. The graph after each pass goes to the
"autodiff.passes" logger at debug level (AUTODIFF_LOG=debug shows it); `dump=True` or the
environment variable AUTODIFF_DUMP_PASSES=1 shows it on stderr without AUTODIFF_LOG.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from ..loggers import pass_dumps
from .checks import drop_index_checks
from .cse import cse
from .inplace import mark_in_place
from .prune import prune
from .rewrite import Graph, copy_graph
from .simplify import simplify


@dataclass(frozen=True)
class GraphPass:
    name: str
    run: Callable[[Graph], Graph]
    why: str
    # a pass that trades a check for speed runs only when this switch is off (disabled)
    only_when_disabled: str | None = None


PIPELINE: list[GraphPass] = [
    GraphPass("drop_index_checks", drop_index_checks, "the user switched index checks off for speed",
              only_when_disabled="index_check"),
    GraphPass("prune", prune, "drop gradients and values no output needs before spending time on them"),
    GraphPass("simplify", simplify, "fold constants, exact identities, movement canonicalization"),
    GraphPass("cse", cse, "compute the forward values the backward pass repeats only once"),
    GraphPass("prune", prune, "drop what simplify and cse left unused"),
    GraphPass("inplace", mark_in_place, "let updates write straight into persistent tensors"),
]
PASS_NAMES = tuple(dict.fromkeys(p.name for p in PIPELINE if p.only_when_disabled is None))
CHECK_SWITCHES = tuple(p.only_when_disabled for p in PIPELINE if p.only_when_disabled)


@dataclass
class PassRecord:
    name: str
    nodes_before: int
    nodes_after: int
    seconds: float


def optimize(graph: Graph, disable: Iterable[str] = (), dump: bool | None = None) -> tuple[Graph, list[PassRecord]]:
    """Run the pipeline; returns the optimized graph and one record per pass run."""
    disable = frozenset(disable)
    if dump is None:
        dump = os.environ.get("AUTODIFF_DUMP_PASSES", "") not in ("", "0")
    with pass_dumps(dump) as log:
        dump = log.isEnabledFor(logging.DEBUG)   # formatting a large graph costs: only when shown
        records: list[PassRecord] = []
        graph = copy_graph(graph)   # passes never see (or change) the traced program itself
        for graph_pass in PIPELINE:
            if graph_pass.name in disable or (graph_pass.only_when_disabled
                                              and graph_pass.only_when_disabled not in disable):
                continue
            before = graph.count()
            start = time.perf_counter()
            graph = graph_pass.run(graph)
            records.append(PassRecord(graph_pass.name, before, graph.count(), time.perf_counter() - start))
            log.info("%s: %d -> %d nodes in %.4f s", graph_pass.name, before, graph.count(), records[-1].seconds)
            if dump:
                from ..ir.text import format_block
                log.debug("--- after %s: %d nodes\n%s", graph_pass.name, graph.count(),
                          "\n".join(format_block(graph.root, show_source=False)))
    return graph, records
