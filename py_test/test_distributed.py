"""Data parallelism: collectives as graph nodes, DistributedDataParallel, sharded data.

On one process (every device): collectives are identities with the right gradients, they
print in every stage, lower to a start/wait pair with independent kernels in between, and
take part in the memory plan. Under mpiexec (2 and 3 ranks, skipped without mpi4py and
mpiexec): values and gradients against numpy, DDP against one process on the whole batch,
examples/mnist.py --distributed against one process, and a failing rank (killed, raising,
hanging) ending the run on the others within the timeout. Every mpiexec call has a hard
subprocess timeout, so nothing hangs the suite.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import autodiff as ad
from autodiff import comm
from autodiff import distributed as dist
from autodiff import nn
from autodiff.frontend.collectives import all_reduce_flat
from autodiff.proc.ir import KernelCmd

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
HAS_MPI = importlib.util.find_spec("mpi4py") is not None and shutil.which("mpiexec") is not None
needs_mpi = pytest.mark.skipif(not HAS_MPI, reason="needs mpi4py and mpiexec (pip install 'autodiff[distributed]')")
SUBPROCESS_TIMEOUT = 120


# --- one process --------------------------------------------------------------------------

def test_collectives_are_identities_with_torch_gradients(device: str) -> None:
    data = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    x = ad.Tensor(data, name="x")
    got = []
    y = dist.all_reduce(x, "mean") * 3 + dist.broadcast(x).exp() + dist.all_gather(x * x).sum(0)
    bucket = dist.all_reduce(x.sum(1), "sum")
    loss = (y * y).sum() + (bucket * 2).sum()
    loss.backward()
    ad.Receiver(lambda *v: got.extend(a.copy() for a in v), [y, x.grad, dist.all_gather(loss)])
    ad.execute(device=device)
    t = torch.tensor(data, requires_grad=True)
    ty = t * 3 + t.exp() + (t * t).sum(0)
    tloss = (ty * ty).sum() + (t.sum(1) * 2).sum()
    tloss.backward()
    np.testing.assert_allclose(got[0], ty.detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(got[1], t.grad.numpy(), rtol=1e-4)
    assert got[2].shape == (1,) and np.isclose(got[2][0], tloss.item(), rtol=1e-5)


def test_a_bucket_is_one_flat_all_reduce(device: str) -> None:
    a = ad.Tensor(np.ones((2, 2), np.float32), name="a")
    b = ad.Tensor(np.full(3, 2.0, np.float32), name="b")
    flat = all_reduce_flat([a, b * 3], "mean")
    got = []
    ad.Receiver(lambda v: got.append(v.copy()), [flat])
    ad.execute(device=device)
    np.testing.assert_array_equal(got[0], [1, 1, 1, 1, 6, 6, 6])


def test_collective_errors_are_clear() -> None:
    x = ad.Tensor(np.ones(2, np.float32), name="x")
    with pytest.raises(ad.TraceError, match="unknown reduction 'prod'"):
        dist.all_reduce(x, "prod")
    with pytest.raises(ad.TraceError, match="root 1 is not a rank"):
        dist.broadcast(x, root=1)
    with pytest.raises(TypeError, match="op='max'"):
        dist.all_reduce(x, "max").sum().backward()


def test_collectives_print_in_every_stage_and_overlap() -> None:
    """The start comes right after its input, the wait just before the first reader: the
    independent kernel in between is what overlaps the communication."""
    x = ad.Tensor(np.ones((4, 4), np.float32), name="x")

    def body() -> None:
        reduced = dist.all_reduce((x * 2).exp(), "mean")
        other = (x * 3).sum()          # traced after the all_reduce, independent of it
        ad.Receiver(lambda a, b: None, [reduced + other, other])
    ad.ir_for(2, body)
    for stage in ("graph", "opt", "proc", "fused", "memory"):
        text = ad.print_graph(stage, file=open(os.devnull, "w"))
        assert "all_reduce" in text, stage
    compiled = ad.compile(device="numpy-proc")
    loop = compiled.proc.commands[0]
    kinds = [type(c).__name__ for c in loop.body]
    start, wait = kinds.index("CollectiveStartCmd"), kinds.index("CollectiveWaitCmd")
    assert any(isinstance(c, KernelCmd) for c in loop.body[start + 1:wait]), kinds
    out = loop.body[wait].collective.out
    assert out.id in compiled.plan.offsets   # the result lives in the arena like any temporary


def test_results_agree_with_collective_overlap_off(device: str) -> None:
    x = ad.Tensor(np.linspace(-1, 1, 8, dtype=np.float32), name="x")
    got = []
    ad.Receiver(lambda v: got.append(v.copy()), [dist.all_reduce(x.exp()) * (x * 2).sum()])
    ad.execute(device=device)
    ad.execute(device=device, disable={"collective_overlap"})
    np.testing.assert_array_equal(got[0], got[1])


def test_ddp_on_one_process_changes_nothing() -> None:
    model = nn.Linear(3, 2)
    before = [p.numpy().copy() for p in model.parameters()]
    wrapped = nn.parallel.DistributedDataParallel(model)
    x = ad.Tensor(np.ones((4, 3), np.float32), name="inputs")
    wrapped(x).sum().backward()
    assert all(p.grad.node.op.value != "collective" for p in model.parameters())
    np.testing.assert_array_equal(before[0], model.weight.numpy())


@pytest.fixture
def second_of_three_ranks(monkeypatch):
    """This process as rank 1 of 3 for what is decided at trace time (no MPI needed)."""
    monkeypatch.setattr(comm._WORLD, "rank", 1)
    monkeypatch.setattr(comm._WORLD, "size", 3)


def test_data_loader_shards_each_global_batch(second_of_three_ranks) -> None:
    x = np.arange(24, dtype=np.float32).reshape(12, 2)
    y = np.arange(12, dtype=np.int32)
    sharded = nn.DataLoader(x, y, batch_size=6, seed=5)
    whole = nn.DataLoader(x, y, batch_size=6, seed=5, shard=False)
    for _ in range(3):
        xb, yb = sharded.next_batch()
        wx, wy = whole.next_batch()
        np.testing.assert_array_equal(yb, wy[2:4])   # rank 1's slice of the same global batch
        np.testing.assert_array_equal(xb, wx[2:4])
    xf, _ = sharded.feeders()
    assert xf.shape == (2, 2)
    with pytest.raises(ValueError, match="divisible by the 3 ranks"):
        nn.DataLoader(x, y, batch_size=4)


def test_feeder_shard_and_receiver_ranks(second_of_three_ranks) -> None:
    images = ad.Feeder(lambda: np.arange(6, dtype=np.float32), (6,), name="images", shard=True)
    calls: dict[str, list] = {"rank0": [], "all": [], "mine": []}
    ad.Receiver(lambda v: calls["rank0"].append(v), [images])
    ad.Receiver(lambda v: calls["all"].append(v.copy()), [images], ranks="all")
    ad.Receiver(lambda v: calls["mine"].append(v), [images], ranks=[1, 2])
    ad.execute(device="numpy")
    assert calls["rank0"] == [] and len(calls["mine"]) == 1
    np.testing.assert_array_equal(calls["all"][0], [2, 3])


# --- several ranks under mpiexec ------------------------------------------------------------

def _mpiexec(ranks: int, *args: str, timeout: float = SUBPROCESS_TIMEOUT, env: dict | None = None):
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(["mpiexec", "-n", str(ranks), sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=environment, cwd=ROOT)


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_collectives_across_ranks(ranks: int) -> None:
    done = _mpiexec(ranks, str(WORKER), "collectives", "numpy-proc", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(re.findall(r"ok \d", done.stdout)) == [f"ok {r}" for r in range(ranks)]   # lines may interleave


@needs_mpi
def test_ddp_on_three_ranks_equals_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    out = str(tmp_path / "weights")
    one = subprocess.run([sys.executable, str(WORKER), "ddp", "numpy-proc", "60"], capture_output=True, text=True,
                         timeout=SUBPROCESS_TIMEOUT, env={**os.environ, "PYTHONPATH": str(ROOT),
                                                          "AUTODIFF_TEST_OUT": out + "-one"})
    assert one.returncode == 0, one.stderr
    three = _mpiexec(3, str(WORKER), "ddp", "numpy-proc", "60", env={"AUTODIFF_TEST_OUT": out})
    assert three.returncode == 0, three.stdout + three.stderr
    reference = np.load(out + "-one.0.npy")
    for rank in range(3):
        np.testing.assert_allclose(np.load(f"{out}.{rank}.npy"), reference, rtol=1e-5, atol=1e-6)


def _losses(text: str) -> list[float]:
    return [float(line.split()[-1]) for line in text.splitlines() if line.startswith("step")]


@needs_mpi
def test_mnist_distributed_gives_the_one_process_losses() -> None:
    args = ["examples/mnist.py", "--steps", "4", "--log-every", "1", "--device", "numpy"]
    one = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    two = _mpiexec(2, *args, "--distributed")
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert len(_losses(one.stdout)) == 4
    np.testing.assert_allclose(_losses(two.stdout), _losses(one.stdout), rtol=1e-5)


@needs_mpi
@pytest.mark.parametrize("mode, message, timeout", [
    ("raise", "rank 1 of 2 failed", "30"),   # a long timeout: on a loaded machine rank 0's must not come first
    ("hang", "did not complete within 3 s", "3"),
    ("kill", "KILLED|Killed|signal 9|EXIT CODE: 9", "30"),
])
def test_a_failing_rank_ends_the_run_on_the_others(mode: str, message: str, timeout: str) -> None:
    done = _mpiexec(2, str(WORKER), "failure", mode, timeout, timeout=90)
    assert done.returncode != 0
    assert re.search(message, done.stdout + done.stderr), done.stdout + done.stderr


@needs_mpi
@pytest.mark.slow
def test_mnist_distributed_on_opencl() -> None:
    args = ["examples/mnist.py", "--steps", "3", "--log-every", "1", "--device", "opencl"]
    one = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    two = _mpiexec(2, *args, "--distributed", timeout=300)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    np.testing.assert_allclose(_losses(two.stdout), _losses(one.stdout), rtol=1e-5)
