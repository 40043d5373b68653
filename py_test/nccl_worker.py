"""Run by py_test/test_nccl.py under `mpiexec -n N`: a scenario of distributed_worker.py on
device "cuda", where `cupy` is test_cuda's emulated GPU and its `cuda.nccl` an NCCL made of MPI
calls on host memory (`MpiNccl`). This runs the CUDA executor's NCCL path across real ranks
without a GPU: the unique id exchanged over MPI, each rank's share of an all_gather, the mean's
division by the world size, a broadcast's root; not NCCL itself or the streams' asynchrony."""
from __future__ import annotations

import ctypes
import os
import sys
import tempfile
import types
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_cuda import EmulatedCuPy  # noqa: E402


class MpiNccl(types.SimpleNamespace):
    """`cupy.cuda.nccl` whose communicator runs each call at once as the MPI collective NCCL
    defines it, on a duplicate of COMM_WORLD (so it never meets comm.py's own collectives)."""
    NCCL_INT32, NCCL_FLOAT32, NCCL_SUM, NCCL_MAX = 2, 7, 0, 2
    DTYPES = {2: np.int32, 7: np.float32}

    def __init__(self) -> None:
        super().__init__()
        from mpi4py import MPI
        self.calls = 0
        fake = self

        def array(pointer: int, count: int, datatype: int) -> np.ndarray:
            dtype = np.dtype(fake.DTYPES[datatype])
            return np.frombuffer((ctypes.c_char * (count * dtype.itemsize)).from_address(pointer), dtype)

        class NcclCommunicator:
            def __init__(self, ndev: int, commId: tuple, rank: int) -> None:  # noqa: N803 - CuPy's name
                if not isinstance(commId, tuple):   # as the typed argument of CuPy before 14
                    raise TypeError(f"Argument 'commId' has incorrect type (expected tuple, got {type(commId)})")
                world = MPI.COMM_WORLD
                assert ndev == world.size and rank == world.rank, (ndev, rank)
                ids = world.allgather(tuple(commId))
                assert len(commId) == 128 and all(i == ids[0] for i in ids), "one id, rank 0's, on every rank"
                self.comm = world.Dup()

            def allReduce(self, sendbuf: int, recvbuf: int, count: int, datatype: int, op: int,  # noqa: N802
                          stream: int) -> None:
                fake.calls += 1
                recv = array(recvbuf, count, datatype)
                send = MPI.IN_PLACE if sendbuf == recvbuf else array(sendbuf, count, datatype)
                self.comm.Allreduce(send, recv, op=MPI.MAX if op == fake.NCCL_MAX else MPI.SUM)

            def broadcast(self, sendbuf: int, recvbuf: int, count: int, datatype: int, root: int,  # noqa: N802
                          stream: int) -> None:
                fake.calls += 1
                recv = array(recvbuf, count, datatype)
                if sendbuf != recvbuf and self.comm.rank == root:
                    recv[:] = array(sendbuf, count, datatype)
                self.comm.Bcast(recv, root=root)

            def allGather(self, sendbuf: int, recvbuf: int, count: int, datatype: int,  # noqa: N802
                          stream: int) -> None:
                fake.calls += 1
                itemsize = np.dtype(fake.DTYPES[datatype]).itemsize
                assert sendbuf == recvbuf + self.comm.rank * count * itemsize, "in place, at this rank's share"
                self.comm.Allgather(MPI.IN_PLACE, array(recvbuf, count * self.comm.size, datatype))

            def abort(self) -> None:
                pass

        self.NcclCommunicator = NcclCommunicator

    @staticmethod
    def get_unique_id() -> tuple:
        from mpi4py import MPI
        assert MPI.COMM_WORLD.rank == 0, "only rank 0 makes the id"
        return tuple(int(v) for v in np.random.default_rng().integers(-128, 128, 128))


def install(folder: str) -> tuple[EmulatedCuPy, MpiNccl]:
    emulator = EmulatedCuPy(folder)
    emulator.cuda.nccl = nccl = MpiNccl()
    sys.modules["cupy"] = emulator
    return emulator, nccl


if __name__ == "__main__":
    scenario, timeout = sys.argv[1], float(sys.argv[2])
    with tempfile.TemporaryDirectory() as folder:
        emulator, nccl = install(folder)
        import autodiff as ad   # noqa: E402 - after cupy is the emulator
        from autodiff import distributed as dist
        import distributed_worker
        dist.init(timeout=timeout)
        getattr(distributed_worker, scenario)("cuda")
        from autodiff import comm
        # comm's own collectives: the NCCL id, and DDP's broadcast of the initial state (on the host)
        print(f"rank {dist.rank()}: nccl calls {nccl.calls}, host collectives {comm._WORLD.issued}")
