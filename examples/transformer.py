"""The reference transformer workload: 6 post-norm encoder layers trained with SGD in one ir_for.

    model = TransformerEncoder(num_layers=6, d_model=64, num_heads=4, ff_dim=128)
    x     = Feeder of shape (2, 64) filled with 0.3 (an unbatched sequence of 2 tokens)
    res   = model(x).sum() / 1000
    res.backward(); SGD(lr=0.01)    # 500 iterations (--steps) inside ir_for

The same program as benchmarks/reference_model.py. Prints the loss every 20
steps, the parameter count, a checksum (the sum of all parameter values after
training, which must be finite), and the report's compile and run seconds.

    python examples/transformer.py                    # best device, 500 steps
    python examples/transformer.py --device numpy --steps 50 --layers 2 --show-graph
    python examples/transformer.py --steps 20 --export transformer_program    # README: Export
    mpiexec -n 2 python examples/transformer.py --distributed --steps 50   # DDP: same losses

The workload has no batch axis (one sequence), so under --distributed every rank trains on
the same sequence: it shows DDP's gradient all-reduce (the averaged gradient equals each
rank's), not a split batch (examples/mnist.py --distributed splits its batch).
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

import autodiff as ad
from autodiff import nn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--device", default=None, help="numpy, numpy-proc, opencl or cuda (default: best available)")
    parser.add_argument("--profile", action="store_true",
                        help="profile the run: print the per-kernel table and save a Chrome trace (Perfetto)")
    parser.add_argument("--trace", default="trace.json", help="where --profile saves the trace (default: trace.json)")
    parser.add_argument("--show-graph", action="store_true", help="print the traced graph")
    parser.add_argument("--export", metavar="DIR", help="also write the compiled program, before training, to DIR: "
                        "autodiff.load_exported(DIR) runs it without this script (README: Export)")
    parser.add_argument("--distributed", action="store_true",
                        help="DistributedDataParallel over the MPI ranks (launch with mpiexec -n N)")
    args = parser.parse_args()
    if args.distributed:
        ad.distributed.init()

    ad.manual_seed(0)
    d_model, seq = 64, 2
    model = nn.TransformerEncoder(num_layers=args.layers, d_model=d_model, num_heads=4, ff_dim=128)
    net = nn.parallel.DistributedDataParallel(model) if args.distributed else model
    opt = nn.SGD(model.parameters(), lr=args.lr)
    data = np.full((seq, d_model), 0.3, np.float32)

    def train_step(step: ad.Tensor) -> None:
        x = ad.Feeder(lambda: data, (seq, d_model), name="x")
        res = net(x).sum() / 1000
        opt.zero_grad()
        res.backward()
        opt.step()
        ad.Receiver(lambda i, v: print(f"step {int(i) + 1:5d}  loss {float(v):.6f}"), [step, res],
                    name="loss", every=min(20, args.steps))

    ad.ir_for(args.steps, train_step)

    if args.show_graph:
        ad.print_graph()
    start = time.perf_counter()
    compiled = ad.compile(device=args.device, profile=args.profile or None)
    if args.export:
        ad.export(args.export, compiled, names=model)   # keys: the model's state_dict names
    report = compiled.run()
    seconds = time.perf_counter() - start
    if ad.distributed.rank() != 0:
        return
    checksum = sum(float(p.numpy().astype(np.float64).sum()) for p in model.parameters())
    compiled = "" if report.kernels_after_fusion is None else \
        f", {report.kernels_after_fusion} kernels after fusion, arena {report.arena_bytes} bytes"
    print(f"device {report.device}: {args.steps} steps in {seconds:.2f} s{compiled}")
    print(f"compile {report.compile_seconds:.2f} s  run {report.run_seconds:.2f} s  "
          f"{1000 * report.run_seconds / max(args.steps, 1):.3f} ms/step")
    print(f"parameters {model.num_parameters()}  checksum {checksum:.6f}")
    if args.profile:
        print(report.profile_table())
        report.save_trace(args.trace)
        print(f"trace saved to {args.trace}")
    if not math.isfinite(checksum):
        raise SystemExit("the parameters are not finite after training")


if __name__ == "__main__":
    main()
