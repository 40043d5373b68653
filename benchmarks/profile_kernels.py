"""Where the time of one training step goes: every launch of the reference model's loop
body timed by OpenCL profiling events, grouped by kernel function.

    python benchmarks/profile_kernels.py [--large] [--layers 6] [--top 25] [--disable vectorize]

The program is compiled and run once (so every buffer holds real values), then the
launches of one loop iteration are enqueued again, `--rounds` times, on a profiling
queue of the same context; each launch's device time is its event's end - start. The
sum is kernel time only: host work, Feeders and Receivers are not in it.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402

import autodiff as ad  # noqa: E402
from reference_model import LARGE, trace_reference_step  # noqa: E402


def body_launches(steps: list[tuple]) -> list:
    """The launches of the first loop's body (nested loops included, once each)."""
    for step in steps:
        if step[0] == "loop":
            out, stack = [], list(reversed(step[2]))
            while stack:
                s = stack.pop()
                if s[0] == "launch":
                    out.append(s[1])
                elif s[0] == "loop":
                    stack.extend(reversed(s[2]))
            return out
    return [s[1] for s in steps if s[0] == "launch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", action="store_true")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--disable", nargs="*", default=[])
    args = parser.parse_args()
    import pyopencl as cl

    config = dict(LARGE, steps=2) if args.large else {"layers": args.layers, "steps": 2}
    trace_reference_step(**config)
    compiled = ad.compile(device="opencl", disable=set(args.disable))
    compiled.run()
    executor = compiled.executor
    queue = cl.CommandQueue(executor.context, properties=cl.command_queue_properties.PROFILING_ENABLE)
    launches = body_launches(executor.steps)
    for launch in launches:      # variables of the loop index: iteration 0
        for position, _ in launch.var_args:
            launch.kernel.set_arg(position, np.int32(0))
    seconds: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for _ in range(args.rounds):
        events = [(launch.kernel.function_name,
                   cl.enqueue_nd_range_kernel(queue, launch.kernel, launch.global_size, launch.local_size))
                  for launch in launches]
        queue.finish()
        for name, event in events:
            seconds[name] += (event.profile.end - event.profile.start) * 1e-9 / args.rounds
            count[name] += 1
    total = sum(seconds.values())
    print(f"{len(launches)} launches per step, kernel time {total * 1e3:.3f} ms per step "
          f"({executor.device.name}; disable={sorted(args.disable)})")
    print(f"{'ms/step':>8} {'share':>6} {'launches':>8}  kernel")
    for name, s in sorted(seconds.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"{s * 1e3:8.3f} {s / total:6.1%} {count[name] // args.rounds:8d}  {name}")


if __name__ == "__main__":
    main()
