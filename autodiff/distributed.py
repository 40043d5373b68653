"""Data-parallel training over MPI ranks: `init()`, `rank()`, `world_size()` and the
collectives as graph nodes (`all_reduce`, `broadcast`, `all_gather`).

Launch with `mpiexec -n N python train.py`; every rank traces and compiles the same program,
each on its own share of the data (`nn.DataLoader` shards by rank), and the collectives make
their values agree. With one process every collective is the identity and `init()` does
nothing, so the same script runs unchanged without MPI.
"""
from __future__ import annotations

from .comm import barrier, is_distributed, rank, set_timeout, timeout, world_size
from .comm import init as _init
from .frontend.collectives import all_gather, all_reduce, broadcast

__all__ = ["init", "rank", "world_size", "is_distributed", "all_reduce", "broadcast", "all_gather",
           "barrier", "set_timeout", "timeout"]


def init(timeout: float | None = None) -> tuple[int, int]:
    """Join the MPI world when launched by mpiexec (a no-op with one process); returns
    (rank, world size). `timeout`: seconds a collective may wait for the other ranks before
    `DistributedError` (default 300, or AUTODIFF_DIST_TIMEOUT)."""
    return _init(timeout)
