"""Compile time by stage for the reference transformer program, L = 1 ... 24 layers.

    python benchmarks/bench_compile.py [--layers 1 2 4 6 12 24] [--repeat 3] [--json out.json]

Stages measured: trace (running the Python once), each graph pass. Seconds are the
median of --repeat runs; 'per layer' shows whether the cost grows linearly.
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
from autodiff.opt import Graph, optimize  # noqa: E402
from reference_model import trace_reference_step  # noqa: E402


def measure(layers: int) -> dict:
    ad.reset()
    ad.manual_seed(0)
    start = time.perf_counter()
    trace_reference_step(layers, steps=500)
    trace_seconds = time.perf_counter() - start
    program = ad.current_program()
    _, records = optimize(Graph(program.root, program.variables))
    row = {"layers": layers, "nodes": records[0].nodes_before, "nodes_optimized": records[-1].nodes_after,
           "trace_s": trace_seconds}
    for r in records:
        key = f"{r.name}_s"
        row[key] = row.get(key, 0.0) + r.seconds
    row["passes_s"] = sum(r.seconds for r in records)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2, 4, 6, 12, 24])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()
    rows = []
    for layers in args.layers:
        runs = [measure(layers) for _ in range(args.repeat)]
        row = {k: (statistics.median(r[k] for r in runs) if k.endswith("_s") else runs[0][k]) for k in runs[0]}
        rows.append(row)
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"{'L':>3} {'nodes':>6} {'opt':>6} {'trace s':>8} {'passes s':>9} {'prune':>7} {'simplify':>9} "
          f"{'cse':>7} {'inplace':>8} {'ms/layer':>9}")
    for r in rows:
        total = r["trace_s"] + r["passes_s"]
        print(f"{r['layers']:>3} {r['nodes']:>6} {r['nodes_optimized']:>6} {r['trace_s']:>8.3f} "
              f"{r['passes_s']:>9.3f} {r['prune_s']:>7.3f} {r['simplify_s']:>9.3f} {r['cse_s']:>7.3f} "
              f"{r['inplace_s']:>8.3f} {1000 * total / r['layers']:>9.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
