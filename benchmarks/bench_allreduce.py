"""All-reduce cost on this machine, the ring model's prediction, and DDP's overlap.

    python benchmarks/bench_allreduce.py            # relaunches itself under mpiexec -n 2
    mpiexec -n 4 python benchmarks/bench_allreduce.py --sizes 1,4

Prints, on rank 0: (1) the host all-reduce time of 1-64 MB buckets (comm.py: MPI
Iallreduce on the communication thread, as a DDP bucket runs) beside the ring model
t(N) = 2 (N-1) (latency + bytes / (N bandwidth)) with the latency and bandwidth fitted to
the 2-rank measurements; (2) the bytes DDP all-reduces per step for the benchmark models;
(3) a DDP training step of an MLP on the chosen device with the all-reduce overlapping the
backward pass, beside the same step with "collective_overlap" off (each bucket's all-reduce
waited for as soon as it starts), and one process's step on its half batch (no all-reduce).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import autodiff as ad  # noqa: E402
from autodiff import comm, nn  # noqa: E402
from autodiff import distributed as dist  # noqa: E402

MB = 1024 * 1024


def allreduce_seconds(nbytes: int, repeats: int) -> float:
    value = np.ones(nbytes // 4, np.float32)
    comm.run("all_reduce", value)   # warm: MPI sets up its buffers once
    times = []
    for _ in range(repeats):
        comm.barrier()
        start = time.perf_counter()
        comm.run("all_reduce", value)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def ring_fit(sizes: list[int], seconds: list[float], world: int) -> tuple[float, float]:
    """(latency s, bandwidth B/s) of t = 2 (N-1) (latency + bytes / (N bandwidth)) by least
    squares on relative errors (each size weighs alike, not the largest most)."""
    steps = 2 * (world - 1)
    weight = 1 / np.array(seconds)
    a = np.array([[steps, steps * s / world] for s in sizes], np.float64) * weight[:, None]
    (latency, per_byte), *_ = np.linalg.lstsq(a, np.ones(len(sizes)), rcond=None)
    return max(latency, 0.0), 1.0 / max(per_byte, 1e-15)


def ring_seconds(nbytes: int, world: int, latency: float, bandwidth: float) -> float:
    return 2 * (world - 1) * (latency + nbytes / (world * bandwidth))


def model_bytes() -> dict[str, int]:
    """Gradient bytes per step (every parameter, float32) of the models the examples train."""
    models = {
        "examples/mnist.py MLP (64-512-256-10)": nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 256),
                                                               nn.ReLU(), nn.Linear(256, 10)),
        "MNIST-size MLP (784-1024-1024-10)": nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024),
                                                           nn.ReLU(), nn.Linear(1024, 10)),
        "transformer encoder (d=128, 2 layers)": nn.TransformerEncoder(
            nn.TransformerEncoderLayer(128, 4, 512, dropout=0.0, batch_first=True), 2),
    }
    return {name: sum(p.numpy().nbytes for p in m.parameters()) for name, m in models.items()}


def ddp_step(device: str, steps: int, batch: int, overlap: bool, wrap: bool, bucket_mb: float):
    """The compiled training loop of the MNIST-size MLP (under DDP where `wrap`)."""
    ad.reset()
    ad.manual_seed(0)
    rng = np.random.default_rng(dist.rank())
    model = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
    if wrap:
        model = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=bucket_mb)
    opt = nn.SGD(model.parameters(), lr=0.01)
    x = rng.standard_normal((batch, 784)).astype(np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)

    def step() -> None:
        xb = ad.Feeder(lambda: x, x.shape, name="x")
        yb = ad.Feeder(lambda: y, y.shape, np.int32, name="y")
        loss = nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ad.ir_for(steps, step)
    return ad.compile(device=device, disable=set() if overlap else {"collective_overlap"})


def interleaved_seconds(programs: dict, steps: int, rounds: int) -> dict[str, float]:
    """Seconds per step of each program, the best of `rounds` runs taken in turn (the machine's
    other load then weighs on all of them alike)."""
    best = {name: float("inf") for name in programs}
    for _ in range(rounds):
        for name, compiled in programs.items():
            comm.barrier()
            start = time.perf_counter()
            compiled.run()
            best[name] = min(best[name], (time.perf_counter() - start) / steps)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,4,16,64", help="bucket sizes in MB")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="opencl")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128, help="global batch of the DDP step")
    parser.add_argument("--bucket-mb", type=float, default=2.0, help="DDP bucket cap of the overlap run")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each DDP program, in turn")
    parser.add_argument("--ranks", type=int, default=2, help="ranks when relaunching under mpiexec")
    args = parser.parse_args()
    if not comm._launched_by_mpi():
        if shutil.which("mpiexec") is None:
            sys.exit("needs mpiexec: pip install 'autodiff[distributed]'")
        sys.exit(subprocess.call(["mpiexec", "-n", str(args.ranks), sys.executable, *sys.argv]))
    rank, world = dist.init(timeout=600)
    sizes = [int(float(s) * MB) for s in args.sizes.split(",")]
    measured = [allreduce_seconds(n, args.repeats) for n in sizes]
    latency, bandwidth = ring_fit(sizes, measured, world)
    if rank == 0:
        print(f"all-reduce on {world} ranks (host, MPI through comm.py; median of {args.repeats})")
        print(f"ring fit: latency {latency * 1e6:.1f} us, bandwidth {bandwidth / 1e9:.2f} GB/s per link")
        print(f"{'bucket':>8} {'measured':>10} " + " ".join(f"{'ring N=' + str(n):>10}" for n in (2, 4, 8, 16, 64)))
        for n, t in zip(sizes, measured):
            predicted = " ".join(f"{ring_seconds(n, k, latency, bandwidth) * 1e3:>8.2f}ms" for k in (2, 4, 8, 16, 64))
            print(f"{n / MB:>6.0f}MB {t * 1e3:>8.2f}ms {predicted}")
        print("\ngradient bytes all-reduced per step")
        for name, nbytes in model_bytes().items():
            print(f"  {name:<40} {nbytes / MB:8.2f} MB   ring N={world}: "
                  f"{ring_seconds(nbytes, world, latency, bandwidth) * 1e3:.2f} ms")
    half = args.batch // world
    programs = {
        "DDP, all-reduce overlapping the backward": ddp_step(args.device, args.steps, half, True, True, args.bucket_mb),
        "DDP, collective_overlap off (serial)": ddp_step(args.device, args.steps, half, False, True, args.bucket_mb),
        "no all-reduce (each rank alone, same half batch)": ddp_step(args.device, args.steps, half, True, False,
                                                                     args.bucket_mb),
    }
    timings = interleaved_seconds(programs, args.steps, args.rounds)
    if rank == 0:
        print(f"\nMLP 784-1024-1024-10 step on {args.device}, {world} ranks x {half} rows, buckets of "
              f"{args.bucket_mb:g} MB")
        for name, seconds in timings.items():
            print(f"  {name:<50} {seconds * 1e3:8.2f} ms/step")


if __name__ == "__main__":
    main()
