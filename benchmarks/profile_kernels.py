"""Where the time of one training step goes: the reference model's run profiled per kernel.

    python benchmarks/profile_kernels.py [--large | --shape B,S,D,FF,L] [--layers 6] [--rounds 20] [--top 25]
                                         [--disable vectorize] [--device opencl] [--trace trace.json]

The reference program is traced with `--rounds` loop iterations, compiled, run once (so
the kernels are warm), then run again with `profile=True` (autodiff/profiler.py: each
launch's device time from an OpenCL profiling event). The table is the profiler's, per
kernel function; the first line gives the kernel time per step. Kernel time only: host
work, Feeders and Receivers are in the trace (`--trace`), not in the per-step sum.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import autodiff as ad  # noqa: E402
from reference_model import LARGE, shape_config, trace_reference_step  # noqa: E402
from timing import wait_for_kernel_storing  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", action="store_true")
    parser.add_argument("--shape", metavar="B,S,D,FF,L", help="another model (as bench_reference.py's)")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=20, help="training steps profiled")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--disable", nargs="*", default=[])
    parser.add_argument("--device", default="opencl")
    parser.add_argument("--trace", help="also write the run's Chrome trace (Perfetto) here")
    args = parser.parse_args()

    config = (shape_config(args.shape, args.rounds) if args.shape else dict(LARGE) if args.large
              else {"layers": args.layers})
    trace_reference_step(**dict(config, steps=args.rounds))
    compiled = ad.compile(device=args.device, disable=set(args.disable))
    compiled.run()
    wait_for_kernel_storing()   # else it builds beside the profiled run
    report = compiled.run(profile=True)
    profile = report.profile
    launches = sum(row.calls for row in profile.rows())
    print(f"{launches / args.rounds:.0f} launches per step, kernel time "
          f"{profile.kernel_seconds() * 1e3 / args.rounds:.3f} ms per step ({report.device}; "
          f"disable={sorted(args.disable)})")
    print(report.profile_table(args.top))
    if args.trace:
        report.save_trace(args.trace)
        print(f"trace written to {args.trace}")


if __name__ == "__main__":
    main()
