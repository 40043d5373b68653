"""Per-kernel launch overhead in the replayed loop (OpenCL).

    python benchmarks/bench_launch.py [--kernels 32] [--reps 2000]

The program updates `--kernels` separate persistent tensors of 64 floats in place
(`t.mul_(0.999)`: one tiny kernel each, nothing to fuse) inside one `ir_for`. Time per
launch is the difference of a run of 2*reps and of reps iterations, divided by
reps * kernels: the host's enqueue work and the device's per-launch cost together (the
kernels themselves do nearly nothing). Rows: one launch per kernel (megakernels off),
and the default, where the runs of small kernels become one megakernel launch per piece.
"""
from __future__ import annotations

import argparse
import platform

import numpy as np

import autodiff as ad
from timing import seconds_per_iteration


def launch_cost(kernels: int, reps: int, disable: set[str]) -> tuple[float, int]:
    def program(count: int):
        ad.reset()
        tensors = [ad.Tensor(np.ones(64, np.float32), name=f"t{n}") for n in range(kernels)]

        def body() -> None:
            for t in tensors:
                t.mul_(0.999)
        ad.ir_for(count, body)
        return ad.compile(device="opencl", disable=disable)

    seconds = seconds_per_iteration(program, reps)
    counted = program(reps)
    counted.run()
    return seconds, counted.executor.kernels_launched // reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernels", type=int, default=32)
    parser.add_argument("--reps", type=int, default=2000)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}; {args.kernels} kernels of 64 floats per iteration, {args.reps} reps")
    print(f"{'variant':28} {'launches/iter':>13} {'us/iter':>9} {'us/launch':>10} {'us/kernel':>10}")
    for label, disable in [("one launch per kernel", {"megakernel"}), ("megakernels (default)", set())]:
        seconds, launches = launch_cost(args.kernels, args.reps, disable)
        print(f"{label:28} {launches:13d} {seconds * 1e6:9.1f} {seconds * 1e6 / max(launches, 1):10.2f} "
              f"{seconds * 1e6 / args.kernels:10.2f}")


if __name__ == "__main__":
    main()
