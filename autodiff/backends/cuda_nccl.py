"""Collectives on CUDA through NCCL (CuPy's `cupy.cuda.nccl`): on device memory, on a stream
of their own, with MPI only to exchange the NCCL id.

Start: the collective's sources are copied, device to device on the compute stream, into its
result buffer (at this rank's place: rank * n for an all_gather), and an event is recorded
after the copies; the communication stream waits for that event, runs the NCCL call in place
(a mean: the sum, then a division by the world size on the same stream) and records a second
event. Wait: the compute stream waits for the second event. The host never blocks, and the
kernels enqueued between start and wait overlap the communication.

Why the copies, and why a result buffer of its own outside the arena: the memory plan frees
the sources at the start and gives the result its memory from the wait on (the lifetimes of
the host path, which reads back at the start and writes at the wait), so NCCL reading or
writing arena memory between the two would race the kernels in between. The result buffer is
written only by its collective; the next iteration's copies into it are ordered after this
iteration's readers on the compute stream.

One communicator per process and device, made when the first program with a collective is
compiled: rank 0 makes the unique id and `comm.share_from_root` broadcasts it over MPI. Every
rank compiles the same programs in the same order, so every rank gets there together.
NCCL has no timeout of its own: the executor polls its events and aborts the communicator
once `comm.timeout()` has passed (`DistributedError`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import comm
from ..errors import DistributedError
from ..ir.dtypes import ITEMSIZE
from ..loggers import get_logger
from ..proc.ir import Collective, CollectiveStartCmd, ProcProgram

UNIQUE_ID_BYTES = 128                    # NCCL_UNIQUE_ID_BYTES
_NOT_IMPORTED = object()
DATATYPES = {"float32": "NCCL_FLOAT32", "int32": "NCCL_INT32"}
LOG = get_logger("run")

# (id of the nccl module, device id) -> (the module, kept so its id stays its own; the communicator)
_COMMUNICATORS: dict[tuple[int, int], tuple[Any, Any]] = {}


def nccl_module(cp: Any) -> Any | None:
    """CuPy's NCCL binding, or None (and a log line) when CuPy was built without NCCL or
    the library is missing: collectives then take the host path. A `cp.cuda.nccl` that is
    None (a stand-in for CuPy without NCCL) means none, without importing the real one."""
    nccl = getattr(cp.cuda, "nccl", _NOT_IMPORTED)
    problem = "" if nccl is not None else "cupy.cuda.nccl is None"
    if nccl is _NOT_IMPORTED:
        nccl = None
        try:
            nccl = importlib.import_module("cupy.cuda.nccl")
        except Exception as err:   # ImportError, or a missing libnccl raising at import
            problem = f"{type(err).__name__}: {err}"
    if nccl is not None and not getattr(nccl, "available", True):
        nccl, problem = None, "cupy.cuda.nccl.available is False"
    if nccl is None:
        LOG.info("CUDA collectives go through the host (read back, MPI, write back): CuPy has no NCCL (%s)",
                 problem)
    return nccl


def communicator(nccl: Any, device_id: int) -> Any:
    """This process's NCCL communicator on `device_id`, made once (a collective call: every
    rank makes its own at the same point)."""
    key = (id(nccl), device_id)
    if key not in _COMMUNICATORS:
        unique_id = comm.share_from_root(lambda: unique_id_values(nccl.get_unique_id()),
                                         np.zeros(UNIQUE_ID_BYTES, np.int64))
        try:   # CuPy 14 takes the id as bytes
            made = nccl.NcclCommunicator(comm.world_size(), unique_id.astype(np.int8).tobytes(), comm.rank())
        except TypeError:   # earlier CuPy as a tuple of ints
            made = nccl.NcclCommunicator(comm.world_size(), tuple(int(v) for v in unique_id), comm.rank())
        _COMMUNICATORS[key] = (nccl, made)
    return _COMMUNICATORS[key][1]


def unique_id_values(unique_id: bytes | tuple) -> np.ndarray:
    """NCCL's unique id as its 128 byte values (int64, to travel through MPI): CuPy 14 gives
    bytes, earlier CuPy a tuple of ints."""
    if isinstance(unique_id, (bytes, bytearray)):
        return np.frombuffer(bytes(unique_id), np.int8).astype(np.int64)
    return np.array(unique_id, np.int64)


@dataclass
class NcclCall:
    """One collective, prepared at compile time."""
    collective: Collective
    result: Any                          # a CuPy array of the result's elements, its own allocation
    copies: list[tuple[int, Any, int]]   # (byte offset in result, source Buffer, bytes)
    count: int                           # elements this rank sends (an all_gather's share, else all)
    datatype: int
    done: Any = None                     # the event after the NCCL call of the run under way


class NcclCollectives:
    """A program's collectives through NCCL, for one CUDAExecutor (which owns the streams)."""

    def __init__(self, cp: Any, nccl: Any, device_id: int, program: ProcProgram) -> None:
        self.cp, self.nccl = cp, nccl
        self.communicator = communicator(nccl, device_id)
        self.stream = cp.cuda.Stream(non_blocking=True)   # the communication stream
        self.collectives = [cmd.collective for cmd in program.walk() if isinstance(cmd, CollectiveStartCmd)]
        self.calls: dict[int, NcclCall] = {}
        self.issued = 0
        self.aborted = False

    def allocate(self, device_buffers: dict[int, Any], element_offset: dict[int, int]) -> None:
        """Give each collective's result an allocation of its own (kernels that read it then
        read it there); called before the executor prepares its launches."""
        for c in self.collectives:
            out = c.out
            result = self.cp.empty(max(out.size, 1), dtype=out.dtype)
            device_buffers[out.id], element_offset[out.id] = result, 0
            share = out.size // comm.world_size() if c.kind == "all_gather" else out.size
            at = comm.rank() * share * ITEMSIZE if c.kind == "all_gather" else 0
            copies = []
            for b in c.sources:
                copies.append((at, b, b.nbytes))
                at += b.nbytes
            datatype = getattr(self.nccl, DATATYPES[out.dtype])
            self.calls[id(c)] = NcclCall(c, result, copies, share, datatype)

    def start(self, executor: Any, c: Collective) -> None:
        """Copy the sources in on the compute stream, then the NCCL call on the communication stream."""
        call = self.calls[id(c)]
        if call.count == 0:
            return
        runtime = self.cp.cuda.runtime
        base = call.result.data.ptr
        for at, source, nbytes in call.copies:
            if nbytes:
                runtime.memcpyAsync(base + at, executor._pointer(source), nbytes, runtime.memcpyDeviceToDevice,
                                    executor.stream.ptr)
        ready = executor.stream.record()
        self.stream.wait_event(ready)
        self._call(call)
        call.done = self.stream.record()
        self.issued += 1
        if not executor.overlap_collectives:
            executor.stream.wait_event(call.done)

    def _call(self, call: NcclCall) -> None:
        c, nccl, ptr, stream = call.collective, self.nccl, call.result.data.ptr, self.stream.ptr
        if c.kind == "all_reduce":
            op = nccl.NCCL_MAX if c.op == "max" else nccl.NCCL_SUM
            self.communicator.allReduce(ptr, ptr, call.count, call.datatype, op, stream)
            if c.op == "mean":
                with self.stream:
                    self.cp.divide(call.result, call.result.dtype.type(comm.world_size()), out=call.result)
        elif c.kind == "broadcast":
            self.communicator.broadcast(ptr, ptr, call.count, call.datatype, c.root, stream)
        elif c.kind == "all_gather":   # in place: this rank's share already sits at rank * count
            self.communicator.allGather(ptr + comm.rank() * call.count * ITEMSIZE, ptr, call.count,
                                        call.datatype, stream)
        else:
            raise DistributedError(f"unknown collective {c.kind!r}; known: {comm.KINDS}")

    def wait(self, executor: Any, c: Collective) -> None:
        """The compute stream waits for the NCCL call; the host does not."""
        call = self.calls[id(c)]
        if call.done is not None:
            executor.stream.wait_event(call.done)
            call.done = None

    def block_until(self, event: Any, what: str) -> None:
        """Wait on the host for an event that may sit behind NCCL calls, at most `comm.timeout()`
        seconds: a rank that died leaves NCCL waiting forever otherwise."""
        comm.poll_until(lambda: self.aborted or event.done, what, f" behind {self.issued} NCCL collective(s)",
                        on_timeout=self.abort)

    def abort(self) -> None:
        """The communicator is unusable after a timeout: abort it and make the next program a new one."""
        self.aborted = True
        for key, value in list(_COMMUNICATORS.items()):
            if value[1] is self.communicator:
                del _COMMUNICATORS[key]
        try:
            self.communicator.abort()
        except Exception:
            pass   # the timeout is the error to report
