"""CUDA collectives through NCCL, on the emulated GPU of test_cuda.py with a one-rank NCCL.

Checks that the CUDA executor, given `cupy.cuda.nccl`, issues each collective as one NCCL call
on its communication stream with the right count, datatype and op (a mean: the sum, then a
division on the same stream), in the right order of events: the sources copied on the compute
stream, an event after them that the communication stream waits for, the call, an event after
it that the compute stream waits for before the first kernel reading the result, with the
kernels in between enqueued before that wait (they overlap). Values: against numpy for
all_reduce sum/mean/max, broadcast, all_gather and a multi-buffer bucket, and a DDP training
run against numpy-proc. Also the "nccl" switch and a CuPy without NCCL (the host path, said in
a log line only), and NCCL's timeout.

Under mpiexec (2 and 3 ranks; skipped without mpi4py and mpiexec), `nccl_worker.py` runs
distributed_worker's scenarios on the emulated GPU with an NCCL made of MPI calls: the CUDA
executor's NCCL path across ranks (the id exchange, all_gather shares, the mean's division,
broadcast roots, DDP against one process on the whole batch). Real NCCL needs GPUs: TODO.md
has the command for a multi-GPU machine.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import autodiff as ad
import autodiff.nn.functional as F
from autodiff import comm, nn
from autodiff import distributed as dist
from autodiff.backends import cuda_nccl
from autodiff.backends.cuda import CUDAExecutor, default_device
from autodiff.errors import DistributedError
from autodiff.frontend.collectives import all_reduce_flat
from test_cuda import EmulatedCuPy, FakeNccl, compile_proc, run_against_numpy_proc, trace_effects

pytestmark = pytest.mark.skipif(shutil.which("g++") is None,
                                reason="g++ is not installed: the emulated GPU compiles kernels with it")

X = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
Y = np.array([4.0, -1.0, 0.5], np.float32)
COUNTS = np.array([3, -7], np.int32)


@pytest.fixture
def emulated(monkeypatch, tmp_path) -> EmulatedCuPy:
    """The emulated GPU with a one-rank NCCL, as `cupy`; communicators made afresh."""
    emulator = EmulatedCuPy(str(tmp_path), nccl=True)
    monkeypatch.setitem(sys.modules, "cupy", emulator)
    monkeypatch.setattr(cuda_nccl, "_COMMUNICATORS", {})
    return emulator


def trace_collectives(got: list) -> None:
    """Each collective on a kernel's output, independent kernels before the first reader."""
    p = ad.Tensor(X, name="p")
    q = ad.Tensor(Y, name="q")
    n = ad.Tensor(COUNTS, name="n", requires_grad=False)
    x, y = p * 2 + 1, q - 1
    results = [dist.all_reduce(x, "sum"), dist.all_reduce(x, "mean"), dist.all_reduce(x, "max"),
               dist.broadcast(x), dist.all_gather(x), all_reduce_flat([x, y], "mean"),
               dist.all_reduce(n * 3, "sum")]
    busy = (p.exp() * 3).sum() + (q * q).sum()      # nothing here reads a collective
    got_busy = busy * 1
    ad.Receiver(lambda *v: got.append(("results", [np.array(a) for a in v])), results + [got_busy],
                name="results")


def expected_collectives() -> list[np.ndarray]:
    x, y = X * 2 + 1, Y - 1
    return [x, x, x, x, x, np.concatenate([x.reshape(-1), y]), COUNTS * 3]


def executor_for(trace, got: list, disable: frozenset[str] = frozenset()) -> tuple[Any, CUDAExecutor]:
    program, compiled = compile_proc(trace, got)
    compiled.executor = CUDAExecutor(compiled.proc, compiled.plan, disable)
    return compiled, compiled.executor


def nccl_calls(emulator: EmulatedCuPy) -> list[tuple]:
    return [entry for entry in emulator.log if entry[0] == "nccl"]


def test_collectives_are_nccl_calls_with_numpy_values(emulated: EmulatedCuPy) -> None:
    got: list = []
    compiled, executor = executor_for(trace_collectives, got)
    compiled.run()
    values = got[0][1]
    for k, (value, want) in enumerate(zip(values, expected_collectives())):
        assert value.dtype == want.dtype, k
        np.testing.assert_allclose(value.reshape(-1), want.reshape(-1), rtol=1e-6, err_msg=f"collective {k}")
    comm_stream = executor.nccl.stream.ptr
    calls = [(name, stream, count, datatype, extra) for _, name, stream, count, datatype, extra
             in nccl_calls(emulated)]
    f32, i32, add, most = FakeNccl.NCCL_FLOAT32, FakeNccl.NCCL_INT32, FakeNccl.NCCL_SUM, FakeNccl.NCCL_MAX
    assert sorted(calls, key=str) == sorted([
        ("allReduce", comm_stream, 6, f32, add), ("allReduce", comm_stream, 6, f32, add),
        ("allReduce", comm_stream, 6, f32, most), ("broadcast", comm_stream, 6, f32, 0),
        ("allGather", comm_stream, 6, f32, None), ("allReduce", comm_stream, 9, f32, add),
        ("allReduce", comm_stream, 2, i32, add)], key=str)
    divides = [entry for entry in emulated.log if entry[0] == "divide"]
    assert len(divides) == 2 and all(stream is executor.nccl.stream for _, stream in divides), "means"
    no_host_copies = [e for e in emulated.log if e[0] == "copy" and e[2] != emulated.cuda.runtime.memcpyDeviceToDevice]
    persistent = sum(1 for b in compiled.proc.buffers if b.kind == "persistent" and b.nbytes)
    receiver = len(compiled.proc.buffers)   # an upper bound: the Receiver's read-backs
    assert len(no_host_copies) <= 2 * persistent + receiver, "collectives copy on the device only"
    check_event_order(emulated, executor)


def check_event_order(emulator: EmulatedCuPy, executor: CUDAExecutor) -> None:
    """For every NCCL call: the communication stream waited for an event recorded on the compute
    stream after the sources' device copies; an event recorded on the communication stream after
    the call is waited for by the compute stream before the first launch reading the result."""
    log, compute, comm_stream = emulator.log, executor.stream, executor.nccl.stream
    results = {call.result.data.ptr: call for call in executor.nccl.calls.values()}
    overlapped = 0
    for at, entry in enumerate(log):
        if entry[0] != "nccl":
            continue
        waited = next(e for e in reversed(log[:at]) if e[0] == "wait_event")
        assert waited[1] is comm_stream
        recorded = next(k for k in range(at) if log[k][0] == "record" and log[k][2] is waited[2])
        assert log[recorded][1] is compute, "the sources' event is on the compute stream"
        assert log[recorded - 1][:3] == ("copy", compute.ptr, emulator.cuda.runtime.memcpyDeviceToDevice), \
            "after the sources' device copies"
        done = next(k for k in range(at + 1, len(log)) if log[k][0] == "record")
        assert log[done][1] is comm_stream
        joined = next(k for k in range(done, len(log)) if log[k][0] == "wait_event" and log[k][2] is log[done][2])
        assert log[joined][1] is compute
        result = next(p for p in results if results[p].collective.name == _called(executor, at, log))
        readers = [k for k in range(at, len(log)) if _reads(log[k], result, results[result].collective.out.nbytes)]
        assert readers and readers[0] > joined, "the result read before the compute stream waits for it"
        overlapped += any(log[k][0] == "launch" for k in range(done, joined))
    assert overlapped, "kernels were enqueued between a start and its wait"


def _reads(entry: tuple, pointer: int, nbytes: int) -> bool:
    """A launch with the buffer among its arguments, or a copy out of it (a Receiver's)."""
    if entry[0] == "launch":
        return pointer in entry[2]
    return entry[0] == "copy" and pointer <= entry[3] < pointer + nbytes


def _called(executor: CUDAExecutor, at: int, log: list) -> str:
    """The collective whose NCCL call is log[at]: the n-th call is the n-th started."""
    n = sum(1 for entry in log[:at] if entry[0] == "nccl")
    starts = [cmd.collective.name for cmd in executor.program.walk() if type(cmd).__name__ == "CollectiveStartCmd"]
    return starts[n % len(starts)]


def test_effects_program_matches_numpy_proc(emulated: EmulatedCuPy) -> None:
    """Feeders, random numbers and an all_reduce in a loop, the collective through NCCL."""
    executor = run_against_numpy_proc(trace_effects, CUDAExecutor)
    assert executor.nccl is not None and len(nccl_calls(emulated)) == 3 * 2, "the all_reduce and its VJP's"
    check_event_order(emulated, executor)


def trace_ddp(got: list, steps: int = 3) -> None:
    """An MLP in DistributedDataParallel trained by SGD on fed batches (one bucket per parameter)."""
    rng = np.random.default_rng(7)
    xs = rng.standard_normal((steps, 8, 5)).astype(np.float32)
    ys = rng.integers(0, 3, (steps, 8)).astype(np.int32)
    at = {"x": 0, "y": 0}

    def batch(key: str, data: np.ndarray):
        def next_batch() -> np.ndarray:
            at[key] += 1
            return data[(at[key] - 1) % steps]
        return next_batch

    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    ddp = _ddp(model, bucket_cap_mb=1e-5)
    got.append(("ddp", ddp))   # keeps the hook alive while tracing; removed before the comparison
    opt = nn.SGD(ddp.parameters(), lr=0.1, momentum=0.9)

    def step() -> None:
        loss = F.cross_entropy(ddp(ad.Feeder(batch("x", xs), (8, 5), name="x")),
                               ad.Feeder(batch("y", ys), (8,), np.int32, name="y"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        ad.Receiver(lambda v: got.append(("loss", [np.array(v)])), [loss], name="loss")
    ad.ir_for(steps, step)
    got.pop(0)
    trace_ddp.keep = ddp


def _ddp(model: nn.Module, bucket_cap_mb: float) -> nn.parallel.DistributedDataParallel:
    """DDP as under mpiexec (its hook installed), on this one process: the gradients' mean over
    one rank is the gradient, so the values are those of numpy-proc."""
    real = comm.world_size
    comm.world_size = lambda: 2
    try:
        return nn.parallel.DistributedDataParallel(model, bucket_cap_mb=bucket_cap_mb)
    finally:
        comm.world_size = real


def test_ddp_training_through_nccl_matches_numpy_proc(emulated: EmulatedCuPy) -> None:
    executor = run_against_numpy_proc(trace_ddp, CUDAExecutor)
    calls = nccl_calls(emulated)
    assert len(calls) == 3 * 4, "one all_reduce per parameter's bucket per step"
    assert {(c[1], c[4], c[5]) for c in calls} == {("allReduce", FakeNccl.NCCL_FLOAT32, FakeNccl.NCCL_SUM)}
    assert sorted({c[3] for c in calls}) == [3, 6, 18, 30], "each bucket's element count"
    assert sum(1 for e in emulated.log if e[0] == "divide") == len(calls), "a mean: sum, then divide"
    check_event_order(emulated, executor)


def test_overlap_off_joins_at_the_start(emulated: EmulatedCuPy) -> None:
    got: list = []
    compiled, executor = executor_for(trace_collectives, got, frozenset({"collective_overlap"}))
    compiled.run()
    log = emulated.log
    for at, entry in enumerate(log):
        if entry[0] == "nccl":
            done = next(k for k in range(at + 1, len(log)) if log[k][0] == "record")
            follows = next(e for e in log[done + 1:] if e[0] != "divide")
            assert follows[0] == "wait_event" and follows[1] is executor.stream and follows[2] is log[done][2]
    np.testing.assert_allclose(got[0][1][0], expected_collectives()[0])


def test_nccl_switch_off_takes_the_host_path(emulated: EmulatedCuPy) -> None:
    got: list = []
    compiled, executor = executor_for(trace_collectives, got, frozenset({"nccl"}))
    compiled.run()
    assert executor.nccl is None and not nccl_calls(emulated)
    for value, want in zip(got[0][1], expected_collectives()):
        np.testing.assert_allclose(value.reshape(-1), want.reshape(-1), rtol=1e-6)


def test_cupy_without_nccl_takes_the_host_path_and_says_so_on_request(monkeypatch, tmp_path, caplog,
                                                                       capsys) -> None:
    emulator = EmulatedCuPy(str(tmp_path))
    monkeypatch.setitem(sys.modules, "cupy", emulator)
    got: list = []
    with caplog.at_level(logging.INFO, logger="autodiff.run"):
        compiled, executor = executor_for(trace_collectives, got)
    compiled.run()
    assert executor.nccl is None
    assert any("CuPy has no NCCL" in r.getMessage() for r in caplog.records)
    assert capsys.readouterr() == ("", ""), "nothing printed"
    for value, want in zip(got[0][1], expected_collectives()):
        np.testing.assert_allclose(value.reshape(-1), want.reshape(-1), rtol=1e-6)


def test_a_hung_nccl_call_times_out_and_aborts(emulated: EmulatedCuPy, monkeypatch) -> None:
    monkeypatch.setattr(comm._WORLD, "timeout", 0.05)
    got: list = []
    compiled, executor = executor_for(trace_collectives, got)
    never = type("Never", (), {"done": False, "synchronize": lambda self: None})
    monkeypatch.setattr(executor.nccl.stream, "record", lambda: never())
    with pytest.raises(DistributedError, match=r"rank 0: .* did not complete within 0.05 s behind \d+ NCCL"):
        compiled.run()
    assert executor.nccl.communicator.aborted and not cuda_nccl._COMMUNICATORS


def test_local_rank_picks_the_device(monkeypatch) -> None:
    for name in ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "SLURM_LOCALID",
                 "AUTODIFF_CUDA_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    cp = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 2)))
    assert comm.local_rank() == 0 and default_device(cp) == 0
    monkeypatch.setenv("MPI_LOCALRANKID", "3")      # MPICH's
    assert comm.local_rank() == 3 and default_device(cp) == 0, "one process: device 0"
    monkeypatch.setattr(comm._WORLD, "size", 4)
    assert default_device(cp) == 1, "local rank 3 of 2 GPUs"
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "2")   # Open MPI's comes first
    assert comm.local_rank() == 2 and default_device(cp) == 0
    monkeypatch.setenv("AUTODIFF_CUDA_DEVICE", "1")
    assert default_device(cp) == 1


def test_share_from_root_on_one_process() -> None:
    made = []
    value = comm.share_from_root(lambda: made.append(1) or np.arange(4), np.zeros(4, np.int64))
    assert made == [1] and value.dtype == np.int64 and value.tolist() == [0, 1, 2, 3]


# --- several ranks under mpiexec: the emulated GPU, NCCL made of MPI ----------------------------

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "nccl_worker.py"
HAS_MPI = importlib.util.find_spec("mpi4py") is not None and shutil.which("mpiexec") is not None
needs_mpi = pytest.mark.skipif(not HAS_MPI, reason="needs mpi4py and mpiexec (pip install 'autodiff[distributed]')")
SUBPROCESS_TIMEOUT = 180


def _mpiexec(ranks: int, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(["mpiexec", "-n", str(ranks), sys.executable, str(WORKER), *args], capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT, env=environment, cwd=ROOT)


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_nccl_collectives_across_ranks(ranks: int) -> None:
    done = _mpiexec(ranks, "collectives", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(re.findall(r"ok \d", done.stdout)) == [f"ok {r}" for r in range(ranks)]
    # 2 iterations of 9 collectives (the forward's and their VJPs'), all through NCCL; on the host the id only
    assert sorted(re.findall(r"rank \d: nccl calls 18, host collectives 1", done.stdout)) == [
        f"rank {r}: nccl calls 18, host collectives 1" for r in range(ranks)], done.stdout


@needs_mpi
@pytest.mark.slow
def test_ddp_through_nccl_on_three_ranks_equals_one_process(tmp_path: Path) -> None:
    out = str(tmp_path / "weights")
    one = subprocess.run([sys.executable, str(WORKER.parent / "distributed_worker.py"), "ddp", "numpy-proc", "60"],
                         capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "AUTODIFF_TEST_OUT": out + "-one"})
    assert one.returncode == 0, one.stderr
    three = _mpiexec(3, "ddp", "60", env={"AUTODIFF_TEST_OUT": out})
    assert three.returncode == 0, three.stdout + three.stderr
    assert len(re.findall(r"nccl calls 16,", three.stdout)) == 3, "4 steps of 4 buckets"
    reference = np.load(out + "-one.0.npy")
    for rank in range(3):
        np.testing.assert_allclose(np.load(f"{out}.{rank}.npy"), reference, rtol=1e-5, atol=1e-6)
