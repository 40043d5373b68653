"""Compile time by stage for the reference transformer program, L = 1 ... 24 layers.

    python benchmarks/bench_compile.py [--layers 1 2 4 6 12 24] [--large] [--kernels N] [--device opencl]
                                       [--repeat 1] [--json out.json]

Stages measured: trace (running the Python once), graph passes, lowering to the
procedural IR, fusion, memory planning and the device build (rendering, the OpenCL
build, warm-up launches). Seconds are the median of --repeat runs. The device build
depends on PoCL's on-disk kernel cache: the first run of a new program is cold, later
ones warm (clear ~/.cache/pocl to measure cold). 'ms/layer' shows whether the cost
grows linearly; 'built' counts the distinct kernel functions the device built. The
device build's parts (render, cache load, parallel build, build, first launches) are in
the second table. --kernels N lists the N slowest first launches with their source size
(with autodiff's kernel cache and PoCL's warm, every first launch is quick: set
AUTODIFF_DISABLE=kernel_cache,parallel_build and an empty POCL_CACHE_DIR to see a cold one).
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
from reference_model import LARGE, trace_reference_step  # noqa: E402


STAGES = ["trace"] + [stage.name for stage in COMPILE_STAGES]   # every stage the compiler times


def measure(layers: int | str, device: str) -> dict:
    ad.reset()
    ad.manual_seed(0)
    start = time.perf_counter()
    if layers == "large":
        trace_reference_step(**LARGE)
    else:
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
    row["parts"] = {k.split(": ", 1)[1]: v for k, v in compiled.stage_seconds.items() if ": " in k}
    sizes = {r.name: len(r.source) for r in executor.rendered_program.rendered}
    row["first_launches"] = sorted(((s, name, sizes.get(name, 0)) for name, s in
                                    getattr(executor, "first_launch_seconds", {}).items()), reverse=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="*", default=[1, 2, 4, 6, 12, 24])
    parser.add_argument("--large", action="store_true", help="also the larger model (batch 8, seq 64, d 128)")
    parser.add_argument("--kernels", type=int, default=0, help="list the N slowest first launches per model")
    parser.add_argument("--device", default="opencl")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()
    rows = []
    for layers in list(args.layers) + (["large"] if args.large else []):
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
              + f" {r['total_s']:>8.3f} {1000 * r['total_s'] / (LARGE['layers'] if r['layers'] == 'large' else r['layers']):>9.1f}")
    parts = list(dict.fromkeys(p for r in rows for p in r["parts"]))
    if parts:
        print("\ndevice build by part, seconds (first run of each)")
        print(f"{'L':>5} " + " ".join(f"{p:>15}" for p in parts))
        for r in rows:
            print(f"{r['layers']:>5} " + " ".join(f"{r['parts'].get(p, 0.0):>15.3f}" for p in parts))
    for r in rows if args.kernels else []:
        print(f"\nL = {r['layers']}: the {args.kernels} slowest first launches (s, kernel, source characters)")
        for seconds, name, chars in r["first_launches"][:args.kernels]:
            print(f"  {seconds:8.3f}  {name:<48} {chars:>8}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
