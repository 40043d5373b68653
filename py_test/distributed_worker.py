"""Run by py_test/test_distributed.py under `mpiexec -n N`: one scenario per call, checked
inside every rank (an assertion fails the rank, and mpiexec with it)."""
from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np

import autodiff as ad
from autodiff import distributed as dist
from autodiff import nn


def collectives(device: str) -> None:
    """Values and gradients of every collective, against numpy over the ranks' inputs."""
    rank, world = dist.rank(), dist.world_size()
    inputs = [np.arange(6, dtype=np.float32).reshape(2, 3) * (r + 1) - r for r in range(world)]
    x = ad.Tensor(inputs[rank], name="x")
    got: list[list[np.ndarray]] = []

    def body() -> None:
        outs = [dist.all_reduce(x), dist.all_reduce(x, "mean"), dist.all_reduce(x, "max"),
                dist.broadcast(x, root=world - 1), dist.all_gather(x)]
        loss = sum(((o * o).sum() for o in (outs[0], outs[3], outs[4])), dist.all_reduce(x * x, "mean").sum())
        loss.backward()
        ad.Receiver(lambda *v: got.append([a.copy() for a in v]), outs + [x.grad], ranks="all")
        x.grad = None
    ad.ir_for(2, body)
    ad.execute(device=device)
    total = sum(inputs)
    expect = [total, total / world, np.maximum.reduce(inputs), inputs[-1], np.concatenate(inputs)]
    # d/dx_r of the sum over ranks of each rank's loss
    grad = 2 * world * total + (rank == world - 1) * 2 * world * inputs[-1] + 2 * world * inputs[rank] \
        + 2 * inputs[rank]
    for value, want in zip(got[-1], expect + [grad]):
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-5)
    print(f"ok {rank}")


def ddp(device: str) -> None:
    """DDP with a tiny bucket cap (several buckets): the ranks start from rank 0's weights and
    end with equal weights, those of one process training on the whole batch; a checkpoint
    saved (by rank 0) loads on every rank."""
    rank, world = dist.rank(), dist.world_size()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 5)).astype(np.float32)
    y = rng.integers(0, 3, 12).astype(np.int32)
    ad.manual_seed(rank)                       # different initial weights: the broadcast evens them
    model = nn.parallel.DistributedDataParallel(
        nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)), bucket_cap_mb=100 / 2 ** 20)
    assert len(model.module.parameters()) == 4
    opt = nn.SGD(model.parameters(), lr=0.5, momentum=0.9)
    loader = nn.DataLoader(x, y, batch_size=6, seed=3)   # 6 global rows: 3 per rank on 2, 2 on 3

    def step() -> None:
        xb, yb = loader.feeders()
        loss = nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ad.ir_for(4, step)
    ad.execute(device=device)
    assert world == 1 or len(model.buckets) >= 2, model.buckets
    weights = np.concatenate([p.numpy().ravel() for p in model.parameters()])
    np.save(os.environ["AUTODIFF_TEST_OUT"] + f".{rank}.npy", weights)
    # rank 0 writes the checkpoint; every rank returns once it is written and loads it
    path = os.environ["AUTODIFF_TEST_OUT"] + ".safetensors"
    ad.save(path, model)
    loaded = ad.load(path)
    np.testing.assert_array_equal(np.concatenate([loaded[k].ravel() for k, _ in model.named_parameters()]), weights)
    print(f"ok {rank}")


def failure(mode: str) -> None:
    """Rank 1 fails at iteration 2 of a loop of all_reduces: killed, raising or hanging."""
    rank = dist.rank()
    x = ad.Tensor(np.ones(3, np.float32), name="x")

    def fail(i: np.ndarray) -> None:
        if rank == 1 and int(i) == 2:
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "raise":
                raise RuntimeError("rank 1 gives up")
            time.sleep(1000)

    def body(i: ad.Tensor) -> None:
        x.assign(dist.all_reduce(x, "mean") + 1)
        ad.Receiver(fail, [i], ranks="all")
    ad.ir_for(50, body)
    ad.execute(device="numpy-proc")


if __name__ == "__main__":
    scenario, argument, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    dist.init(timeout=timeout)
    {"collectives": collectives, "ddp": ddp, "failure": failure}[scenario](argument)
