"""The reference program: a two-layer sigmoid MLP trained with SGD for 1000 steps in one ir_for.

    model = Sequential(Linear(255, 255), Sigmoid(), Linear(255, 255))
    x     = Feeder of shape (2, 255): the same seeded random batch every step
    res   = model(x).sum()          # the loss: the plain sum of the outputs
    res.backward(); SGD(lr=0.01)    # 1000 iterations (--steps) inside ir_for

The loss is the reference program's `sum()`, kept as is: it has no minimum, so
it keeps falling (about linearly once the output bias dominates) but stays
finite for any sensible number of steps. On the last iteration a Receiver
(`every=steps`) copies every parameter to the host, and they are written with
`ad.save` (safetensors) to `--out` (default: linear.safetensors in the working
directory). The script prints the loss every 20 steps, then the final loss and
a checksum (the sum of all parameter values).

    python examples/linear.py                         # best device, 1000 steps
    python examples/linear.py --device numpy --steps 100 --show-graph
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import autodiff as ad
from autodiff import nn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--device", default=None, help="numpy, numpy-proc, opencl or cuda (default: best available)")
    parser.add_argument("--profile", action="store_true",
                        help="profile the run: print the per-kernel table and save a Chrome trace (Perfetto)")
    parser.add_argument("--trace", default="trace.json", help="where --profile saves the trace (default: trace.json)")
    parser.add_argument("--out", default="linear.safetensors",
                        help="where to save the trained parameters (default: linear.safetensors in the "
                             "working directory)")
    parser.add_argument("--show-graph", action="store_true", help="print the traced graph")
    args = parser.parse_args()

    ad.manual_seed(0)
    data = np.random.default_rng(0).standard_normal((2, 255)).astype(np.float32)
    model = nn.Sequential(nn.Linear(255, 255), nn.Sigmoid(), nn.Linear(255, 255))
    opt = nn.SGD(model.parameters(), lr=args.lr)
    names = [name for name, _ in model.named_parameters()]
    saved: dict[str, np.ndarray] = {}
    final: list[float] = []

    def finish(loss: np.ndarray, *values: np.ndarray) -> None:
        final.append(float(loss))
        saved.update(zip(names, values))
        ad.save(args.out, saved)

    def train_step(step: ad.Tensor) -> None:
        x = ad.Feeder(lambda: data, (2, 255), name="x")
        res = model(x).sum()
        opt.zero_grad()
        res.backward()
        opt.step()
        ad.Receiver(lambda i, v: print(f"step {int(i) + 1:5d}  loss {float(v):.4f}"), [step, res],
                    name="loss", every=min(20, args.steps))
        # the parameters are read after opt.step(): the values the last iteration leaves
        ad.Receiver(finish, [res] + model.parameters(), name="final", every=args.steps)

    ad.ir_for(args.steps, train_step)

    if args.show_graph:
        ad.print_graph()
    start = time.perf_counter()
    report = ad.execute(device=args.device, profile=args.profile or None)
    seconds = time.perf_counter() - start
    checksum = sum(float(v.astype(np.float64).sum()) for v in saved.values())
    print(f"device {report.device}: {args.steps} steps in {seconds:.2f} s "
          f"(compile {report.compile_seconds:.2f} s, run {report.run_seconds:.2f} s)")
    print(f"saved {len(saved)} parameters to {args.out}")
    # the final loss is the last step's (computed before that step's update)
    print(f"final loss {final[0]:.6f}  checksum {checksum:.6f}")
    if args.profile:
        print(report.profile_table())
        report.save_trace(args.trace)
        print(f"trace saved to {args.trace}")


if __name__ == "__main__":
    main()
