"""Matrix products through the whole compiler: relu(A @ B + bias) as one fused kernel.

    python benchmarks/bench_dot.py [--sizes 256 512 1024 2048] [--device opencl] [--json out.json]

Each case is a program that computes `out.copy_(relu(a @ b + bias))` `reps` times
inside one `ir_for` (the bias, the relu and the store are the matmul kernel's
epilogue). Seconds per product are the difference of a run with 2*reps and a run
with reps products divided by reps, so uploads and read-backs cancel. Beside it:
numpy (`np.maximum(a @ b + bias, 0)`) and PyTorch eager (`relu(addmm)`), median of
rounds. Shapes: squares, and the products of the transformers' training steps
("tn": A stored transposed, as in a weight gradient).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

import autodiff as ad

# (label, m, k, n, A stored transposed)
TRANSFORMER_SHAPES = [
    ("ref qkv (2x64 @ 64x192)", 2, 64, 192, False),
    ("ref ff1 (2x64 @ 64x128)", 2, 64, 128, False),
    ("large qkv (512x128 @ 128x384)", 512, 128, 384, False),
    ("large ff1 (512x128 @ 128x512)", 512, 128, 512, False),
    ("large ff2 (512x512 @ 512x128)", 512, 512, 128, False),
    ("large dW ff1 tn (512x512^T @ 512x128)", 512, 512, 128, True),
]


def seconds_autodiff(a: np.ndarray, b: np.ndarray, bias: np.ndarray, transposed: bool, reps: int,
                     device: str) -> float:
    def program(count: int):
        ad.reset()
        ta, tb = ad.Tensor(a, name="a"), ad.Tensor(b, name="b")
        tbias = ad.Tensor(bias, name="bias")
        m, n = (a.shape[1] if transposed else a.shape[0]), b.shape[1]
        out = ad.Tensor(np.zeros((m, n), np.float32), name="out")
        ad.ir_for(count, lambda: out.copy_(((ta.T if transposed else ta) @ tb + tbias).relu()))
        return ad.compile(device=device)

    short, long = program(reps), program(2 * reps)
    short.run()
    long.run()
    rounds = []
    for _ in range(3):
        t = time.perf_counter()
        short.run()
        t_short = time.perf_counter() - t
        t = time.perf_counter()
        long.run()
        rounds.append((time.perf_counter() - t - t_short) / reps)
    return max(statistics.median(rounds), 1e-9)


def seconds_median(fn, reps: int) -> float:
    fn()
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        rounds.append((time.perf_counter() - t) / reps)
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--device", default="opencl")
    parser.add_argument("--json")
    args = parser.parse_args()
    import torch
    cases = [(f"square {s}", s, s, s, False) for s in args.sizes] + TRANSFORMER_SHAPES
    rng = np.random.default_rng(0)
    rows = []
    for label, m, k, n, transposed in cases:
        a = rng.standard_normal((k, m) if transposed else (m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        flops = 2 * m * n * k
        reps = max(2, min(200, int(2e9 / flops)))
        ours = seconds_autodiff(a, b, bias, transposed, reps, args.device)
        a_view = a.T if transposed else a
        numpy_s = seconds_median(lambda: np.maximum(a_view @ b + bias, 0), reps)
        ta, tb, tbias = (torch.from_numpy(x) for x in (a, b, bias))
        ta_view = ta.T if transposed else ta
        torch_s = seconds_median(lambda: torch.relu(torch.addmm(tbias, ta_view, tb)), reps)
        rows.append(dict(case=label, m=m, k=k, n=n, autodiff_gflops=flops / ours / 1e9,
                         numpy_gflops=flops / numpy_s / 1e9, torch_gflops=flops / torch_s / 1e9))
    print(f"machine: {platform.machine()}, python {platform.python_version()}, device {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'case':<40} {'autodiff':>9} {'numpy':>9} {'torch':>9} {'vs numpy':>9} {'vs torch':>9}  (GFLOP/s)")
    for r in rows:
        print(f"{r['case']:<40} {r['autodiff_gflops']:>9.1f} {r['numpy_gflops']:>9.1f} {r['torch_gflops']:>9.1f} "
              f"{r['autodiff_gflops'] / r['numpy_gflops']:>9.2f} {r['autodiff_gflops'] / r['torch_gflops']:>9.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
