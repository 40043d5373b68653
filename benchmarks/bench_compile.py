"""Compile time by stage for the reference transformer program, L = 1 ... 24 layers.

    python benchmarks/bench_compile.py [--layers 1 2 4 6 12 24] [--device opencl] [--repeat 1] [--json out.json]

Stages measured: trace (running the Python once), graph passes, lowering to the
procedural IR, fusion, memory planning and the device build (rendering, the OpenCL
build, warm-up launches). Seconds are the median of --repeat runs. The device build
depends on PoCL's on-disk kernel cache: the first run of a new program is cold, later
ones warm (clear ~/.cache/pocl to measure cold). 'ms/layer' shows whether the cost
grows linearly; 'built' counts the distinct kernel functions the device built.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
import sys

sys.path.insert(0, str(Path(__file__).resolve().parent))

import autodiff as ad  # noqa: E402
from autodiff.compiler import STAGES as COMPILE_STAGES  # noqa: E402
from reference_model import trace_reference_step  # noqa: E402


STAGES = ["trace"] + [stage.name for stage in COMPILE_STAGES]   # every stage the compiler times


def measure(layers: int, device: str) -> dict:
    ad.reset()
    ad.manual_seed(0)
    start = time.perf_counter()
    trace_reference_step(layers, steps=500)
    trace_seconds = time.perf_counter() - start
    compiled = ad.compile(device=device)
    executor = compiled.executor
    row = {"layers": layers, "nodes": compiled.pass_records[0].nodes_before,
           "nodes_optimized": compiled.pass_records[-1].nodes_after,
           "kernels": compiled.kernels_after_fusion, "built": len({r.body for r in executor.rendered_program.rendered}),
           "trace_s": trace_seconds}
    for stage in STAGES[1:]:
        row[f"{stage}_s"] = compiled.stage_seconds.get(stage, 0.0)
    row["total_s"] = sum(row[f"{stage}_s"] for stage in STAGES)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2, 4, 6, 12, 24])
    parser.add_argument("--device", default="opencl")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()
    rows = []
    for layers in args.layers:
        runs = [measure(layers, args.device) for _ in range(args.repeat)]
        row = {k: (statistics.median(r[k] for r in runs) if k.endswith("_s") else runs[0][k]) for k in runs[0]}
        rows.append(row)
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"device {args.device}")
    print(f"{'L':>3} {'nodes':>6} {'opt':>6} {'kernels':>8} {'built':>6} "
          + " ".join(f"{s + ' s':>{max(8, len(s) + 2)}}" for s in STAGES) + f" {'total s':>8} {'ms/layer':>9}")
    for r in rows:
        print(f"{r['layers']:>3} {r['nodes']:>6} {r['nodes_optimized']:>6} {r['kernels']:>8} {r['built']:>6} "
              + " ".join(f"{r[s + '_s']:>{max(8, len(s) + 2)}.3f}" for s in STAGES)
              + f" {r['total_s']:>8.3f} {1000 * r['total_s'] / r['layers']:>9.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
