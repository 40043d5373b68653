"""Memory and kernels per training step for the examples' programs and the reference model.

    python benchmarks/bench_memory.py [--json out.json]

For each program: kernels before / after fusion, arena bytes, the liveness lower bound,
bytes with no reuse at all, persistent bytes, and the time the planner took.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import autodiff as ad  # noqa: E402
import autodiff.nn.functional as F  # noqa: E402
from autodiff import nn  # noqa: E402
from reference_model import LARGE, trace_reference_step  # noqa: E402


def mlp_program(features: int = 64, batch: int = 512) -> None:
    """examples/mnist.py's training step (digits-sized input)."""
    model = nn.Sequential(nn.Linear(features, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = nn.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step():
        x = ad.Feeder(lambda: np.zeros((batch, features), np.float32), (batch, features), name="x")
        y = ad.Feeder(lambda: np.zeros(batch, np.int32), (batch,), np.int32, name="y")
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ad.Receiver(lambda v: None, [loss], name="loss", every=20)

    ad.ir_for(10, step)


def linear_program() -> None:
    """examples/linear.py's program: Linear(255, 255) - Sigmoid - Linear(255, 255), SGD."""
    model = nn.Sequential(nn.Linear(255, 255), nn.Sigmoid(), nn.Linear(255, 255))
    opt = nn.SGD(model.parameters(), lr=0.01)

    def step():
        x = ad.Feeder(lambda: np.zeros((2, 255), np.float32), (2, 255), name="x")
        res = model(x).sum()
        opt.zero_grad()
        res.backward()
        opt.step()

    ad.ir_for(10, step)


PROGRAMS = {
    "mlp (mnist.py, digits)": mlp_program,
    "linear.py": linear_program,
    "transformer L=1": lambda: trace_reference_step(1, steps=10),
    "transformer L=6": lambda: trace_reference_step(6, steps=10),
    "larger transformer": lambda: trace_reference_step(**dict(LARGE, steps=10)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    for name, build in PROGRAMS.items():
        ad.reset()
        ad.manual_seed(0)
        build()
        compiled = ad.compile(device="numpy-proc")
        plan = compiled.plan
        rows.append(dict(program=name, kernels_before=compiled.kernels_before_fusion,
                         kernels_after=compiled.kernels_after_fusion, arena=plan.arena_bytes,
                         lower_bound=plan.lower_bound_bytes, no_reuse=plan.no_reuse_bytes,
                         persistent=plan.persistent_bytes, planner_s=plan.seconds))
    print(f"{'program':<24} {'kernels':>13} {'arena':>10} {'lower bd':>10} {'arena/lb':>8} "
          f"{'no reuse':>10} {'persistent':>10} {'plan s':>7}")
    for r in rows:
        print(f"{r['program']:<24} {r['kernels_before']:>5} -> {r['kernels_after']:<5} {r['arena']:>10} "
              f"{r['lower_bound']:>10} {r['arena'] / max(r['lower_bound'], 1):>8.3f} {r['no_reuse']:>10} "
              f"{r['persistent']:>10} {r['planner_s']:>7.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
