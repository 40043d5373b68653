"""Benchmark the memory planner on the MiniMalloc "challenging" instances.

Each instance has a plan of height 1,048,576 (its file name in the original
set); plain greedy by size is 31-44% above. Usage:

    python benchmarks/bench_placement.py [--budget SECONDS] [--nodes N] [--json PATH]

Columns: lower bound, plain greedy and our height over the bound, our height
over 1,048,576, planning seconds, seconds until the plan first reached
1,048,576 or less ("-" if never), and the stage that made the final plan.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from autodiff.alloc import Lifetime, place_buffers, validate_placement
from autodiff.alloc.greedy import GREEDY_ORDERINGS, lowest_fit_offsets
from autodiff.alloc.sections import build_sectioned_problem

KNOWN_HEIGHT = 1_048_576
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "minimalloc"


def load_instance(path: Path) -> list[Lifetime]:
    """Read an ``id,lower,upper,size`` CSV into buffers."""
    with path.open(newline="") as f:
        return [
            Lifetime(int(row["id"]), int(row["lower"]), int(row["upper"]), int(row["size"]))
            for row in csv.DictReader(f)
        ]


def greedy_by_size_height(buffers: list[Lifetime]) -> int:
    """Height of plain greedy: decreasing size, each at the lowest offset that fits."""
    problem = build_sectioned_problem(
        [b.start for b in buffers], [b.end for b in buffers], [b.size for b in buffers], 1
    )
    offsets = lowest_fit_offsets(problem, GREEDY_ORDERINGS["size"](problem))
    return max(off * problem.unit + b.size for off, b in zip(offsets, buffers))


def run(
    data: Path, budget: float, nodes: int | None, names: list[str], seed: int
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for path in sorted(data.glob("*.csv")):
        if names and path.stem not in names:
            continue
        buffers = load_instance(path)
        plan = place_buffers(buffers, alignment=1, time_budget_s=budget, seed=seed, node_budget=nodes)
        validate_placement(buffers, plan.offsets, alignment=1)
        reached = [t for t, height in plan.progress if height <= KNOWN_HEIGHT]
        rows.append(
            {
                "instance": path.stem,
                "buffers": len(buffers),
                "lower_bound": plan.lower_bound,
                "greedy_over_bound": greedy_by_size_height(buffers) / plan.lower_bound,
                "height": plan.height,
                "height_over_bound": plan.height / plan.lower_bound,
                "height_over_known": plan.height / KNOWN_HEIGHT,
                "seconds": plan.seconds,
                "seconds_to_known": reached[0] if reached else None,
                "strategy": plan.strategy,
            }
        )
        print_row(rows[-1])
    return rows


def print_header() -> None:
    print(
        f"{'inst':<5}{'bufs':>5}{'bound':>10}{'greedy/lb':>10}{'ours/lb':>9}"
        f"{'height':>10}{'ours/2^20':>10}{'seconds':>9}{'t<=2^20':>9}  strategy"
    )


def print_row(row: dict[str, object]) -> None:
    print(
        f"{row['instance']:<5}{row['buffers']:>5}{row['lower_bound']:>10,}"
        f"{row['greedy_over_bound']:>10.3f}{row['height_over_bound']:>9.4f}"
        f"{row['height']:>10,}{row['height_over_known']:>10.4f}{row['seconds']:>9.2f}"
        f"{_seconds(row['seconds_to_known']):>9}  {row['strategy']}",
        flush=True,
    )


def _seconds(value: object) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0, help="time budget per instance, seconds")
    parser.add_argument("--nodes", type=int, help="search node budget (default: from --budget)")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of CSVs")
    parser.add_argument("--only", default="", help="comma-separated instance names")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"no data at {args.data}", file=sys.stderr)
        return 1
    print_header()
    names = [n for n in args.only.split(",") if n]
    rows = run(args.data, args.budget, args.nodes, names, args.seed)
    solved = sum(1 for r in rows if r["height_over_known"] <= 1.0)
    total = sum(float(r["seconds"]) for r in rows)  # type: ignore[arg-type]
    print(f"{solved}/{len(rows)} at or below {KNOWN_HEIGHT:,}; {total:.1f} s in all")
    if args.json:
        summary = {"budget_s": args.budget, "nodes": args.nodes, "seed": args.seed, "rows": rows}
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
