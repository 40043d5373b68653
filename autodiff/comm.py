"""The host side of data parallelism: which rank this process is, and collectives on numpy
arrays through MPI, each bounded by a timeout.

Every stage may import this (it imports only `errors`): the frontend asks the world size
to shape an all_gather, the executors run the collectives, `nn` shards data by rank. Without
`init()`, or under one process, there is one rank and every collective is the identity, so
nothing here needs mpi4py.

All MPI calls of a run go through one communication thread, in program order: every rank
compiles the same program, so every rank issues the same collectives in the same order
(MPI's rule), while the host thread goes on enqueuing kernels. A collective that does not
complete within `timeout` seconds raises `DistributedError` instead of hanging: a rank that
died or hung leaves the others waiting forever otherwise. The timeout is polled with
non-blocking MPI calls (MPI has no cancellable blocking collective).
"""
from __future__ import annotations

import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import DistributedError

DEFAULT_TIMEOUT = float(os.environ.get("AUTODIFF_DIST_TIMEOUT", "300"))
REDUCE_OPS = ("sum", "mean", "max")
KINDS = ("all_reduce", "broadcast", "all_gather")


@dataclass
class _World:
    comm: object = None            # mpi4py's COMM_WORLD, or None on one process
    rank: int = 0
    size: int = 1
    timeout: float = DEFAULT_TIMEOUT
    worker: ThreadPoolExecutor | None = None
    issued: int = 0                # collectives issued so far (named in errors)
    local_rank: int | None = None  # rank among the processes on this machine, once asked (local_rank())


_WORLD = _World()


def init(timeout: float | None = None) -> tuple[int, int]:
    """Join the MPI world when launched by mpiexec with more than one process; returns
    (rank, world size). With one process (or no mpi4py) it does nothing but return (0, 1)."""
    if timeout is not None:
        _WORLD.timeout = float(timeout)
    if _WORLD.comm is not None or not _launched_by_mpi():
        return _WORLD.rank, _WORLD.size
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise DistributedError("running under mpiexec needs mpi4py: pip install 'autodiff[distributed]'") from e
    comm = MPI.COMM_WORLD
    if comm.size > 1:
        _WORLD.comm, _WORLD.rank, _WORLD.size = comm, comm.rank, comm.size
        _WORLD.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autodiff-comm")
        _abort_on_uncaught_errors()
    return _WORLD.rank, _WORLD.size


def _launched_by_mpi() -> bool:
    """mpiexec (MPICH's hydra, Open MPI) sets these in every rank's environment."""
    return any(name in os.environ for name in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK"))


def _abort_on_uncaught_errors() -> None:
    """A rank that dies of an exception takes the others down at once, naming itself, rather
    than leaving them blocked in their next collective."""
    previous = sys.excepthook

    def hook(kind, value, tb) -> None:
        # the line naming the rank first: the others may finish and end the job while the
        # traceback is still being written (mpiexec then cuts this rank's output short)
        # (the error's own text in that line too: the traceback's last line may be the part cut)
        sys.stderr.write(f"autodiff.distributed: rank {_WORLD.rank} of {_WORLD.size} failed "
                         f"({kind.__name__}: {value}); aborting every rank\n")
        sys.stderr.flush()
        previous(kind, value, tb)
        sys.stderr.flush()
        _WORLD.comm.Abort(1)
    sys.excepthook = hook


def rank() -> int:
    return _WORLD.rank


def world_size() -> int:
    return _WORLD.size


def is_distributed() -> bool:
    return _WORLD.size > 1


def local_rank() -> int:
    """This process's rank among those on its machine (one GPU each): Open MPI's
    OMPI_COMM_WORLD_LOCAL_RANK, MPICH's MPI_LOCALRANKID, or else the rank among the
    processes sharing memory with it (an MPI split); 0 on one process."""
    for name in ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "SLURM_LOCALID"):
        if name in os.environ:
            return int(os.environ[name])
    if _WORLD.comm is None:
        return 0
    if _WORLD.local_rank is None:   # a collective call: made once, by every rank at the same point
        from mpi4py import MPI
        node = _WORLD.comm.Split_type(MPI.COMM_TYPE_SHARED)
        _WORLD.local_rank = node.rank
        node.Free()
    return _WORLD.local_rank


def share_from_root(make: Callable[[], np.ndarray], like: np.ndarray, root: int = 0) -> np.ndarray:
    """`make()` called on rank `root` only, its value on every rank (an NCCL unique id: made
    once, by one rank). `like` gives the shape and dtype the other ranks receive into."""
    value = np.asarray(make(), like.dtype).reshape(like.shape) if _WORLD.rank == root else np.zeros_like(like)
    return run("broadcast", value, root=root)


def set_timeout(seconds: float) -> None:
    """How long a collective may wait for the other ranks before `DistributedError`."""
    _WORLD.timeout = float(seconds)


def timeout() -> float:
    return _WORLD.timeout


# --- collectives on host arrays ------------------------------------------------------------

def start(kind: str, value: np.ndarray | Callable[[], np.ndarray], op: str = "sum", root: int = 0) -> Future:
    """Start a collective on the communication thread; `value` may be a function returning
    the array (it waits for a device read-back still under way, on that thread). The
    Future's result is the collective's value."""
    _WORLD.issued += 1
    number = _WORLD.issued
    if _WORLD.worker is None:
        done: Future = Future()
        try:
            done.set_result(_identity(kind, _resolve(value)))
        except BaseException as e:   # a failed read-back surfaces at wait()
            done.set_exception(e)
        return done
    return _WORLD.worker.submit(_collective, kind, value, op, root, number)


def run(kind: str, value: np.ndarray, op: str = "sum", root: int = 0) -> np.ndarray:
    """A collective, blocking until it is done (or its timeout)."""
    return wait(start(kind, value, op, root))


def wait(future: Future) -> np.ndarray:
    return future.result()


def _resolve(value) -> np.ndarray:
    return value() if callable(value) else value


def _identity(kind: str, value: np.ndarray) -> np.ndarray:
    """A collective of one rank (an all_gather of a 0-d value is a vector of one)."""
    value = np.array(value, copy=True)
    return value.reshape(1) if kind == "all_gather" and value.ndim == 0 else value


def _collective(kind: str, value, op: str, root: int, number: int) -> np.ndarray:
    from mpi4py import MPI
    local = np.array(_resolve(value), order="C")   # (ascontiguousarray would make a 0-d array 1-d)
    comm = _WORLD.comm
    if kind == "all_reduce":
        out = np.empty_like(local)
        mpi_op = MPI.MAX if op == "max" else MPI.SUM
        request = comm.Iallreduce(local, out, op=mpi_op)
    elif kind == "broadcast":
        out = local.copy()
        request = comm.Ibcast(out, root=root)
    elif kind == "all_gather":
        out = np.empty((_WORLD.size,) + local.shape, local.dtype)
        request = comm.Iallgather(local, out)
    else:
        raise DistributedError(f"unknown collective {kind!r}; known: {KINDS}")
    _wait_request(request, f"{kind} #{number} of {local.nbytes} bytes")
    if kind == "all_reduce" and op == "mean":
        out = (out / np.asarray(_WORLD.size, out.dtype)).astype(out.dtype)
    if kind == "all_gather":
        return out.reshape((_WORLD.size * local.shape[0],) + local.shape[1:]) if local.ndim else out
    return out.reshape(local.shape)


def _wait_request(request, what: str) -> None:
    poll_until(request.Test, what)


def poll_until(done: Callable[[], bool], what: str, behind: str = "",
               on_timeout: Callable[[], None] | None = None) -> None:
    """Poll `done()` until it holds: busy at first (small buckets finish in microseconds), then
    sleeping. Past the timeout, `on_timeout()` runs and a DistributedError names this rank,
    `what` (and what it waited `behind`): a rank that died leaves the others waiting forever
    otherwise."""
    deadline = time.monotonic() + _WORLD.timeout
    pause = 0.0
    while not done():
        if time.monotonic() > deadline:
            if on_timeout is not None:
                on_timeout()
            raise DistributedError(
                f"rank {_WORLD.rank}: {what} did not complete within {_WORLD.timeout:g} s{behind}; another rank "
                f"failed, hung or issued different collectives (the timeout: autodiff.distributed.init(timeout=...) "
                f"or AUTODIFF_DIST_TIMEOUT)")
        time.sleep(pause)
        pause = min(0.001, pause + 0.00002)


def barrier() -> None:
    """Every rank reaches this point (bounded by the timeout like any collective)."""
    if _WORLD.worker is not None:
        _WORLD.worker.submit(lambda: _wait_request(_WORLD.comm.Ibarrier(), "barrier")).result()

