"""Matrix products through the whole compiler: relu(A @ B + bias) as one fused kernel.

    python benchmarks/bench_dot.py [--sizes 256 512 1024 2048] [--device opencl] [--json out.json]
    python benchmarks/bench_dot.py --device cuda --sizes 1024 2048 4096 --no-numpy   # PyTorch on the GPU too

Each case is a program that computes `out.copy_(relu(a @ b + bias))` `reps` times
inside one `ir_for` (the bias, the relu and the store are the matmul kernel's
epilogue). Seconds per product are the difference of a run with 2*reps and a run
with reps products divided by reps, so uploads and read-backs cancel. Beside it:
numpy (`np.maximum(a @ b + bias, 0)`) and PyTorch eager (`relu(addmm)`, on the GPU beside
--device cuda, float32 without TF32 as PyTorch defaults), median of rounds. Shapes: squares, and the products of the transformers' training steps
(a Linear reads its weight transposed; a weight gradient reads A transposed).
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np

import autodiff as ad
from timing import seconds_per_call, seconds_per_iteration

# (label, m, k, n, A stored transposed, B stored transposed); a Linear computes x @ W^T
TRANSFORMER_SHAPES = [
    ("ref qkv (2x64 @ (192x64)^T)", 2, 64, 192, False, True),
    ("ref ff1 (2x64 @ (128x64)^T)", 2, 64, 128, False, True),
    ("large qkv (512x128 @ (384x128)^T)", 512, 128, 384, False, True),
    ("large ff1 (512x128 @ (512x128)^T)", 512, 128, 512, False, True),
    ("large ff2 (512x512 @ (128x512)^T)", 512, 512, 128, False, True),
    ("large dx ff1 (512x512 @ 512x128)", 512, 512, 128, False, False),
    ("large dW ff1 ((512x512)^T @ 512x128)", 512, 512, 128, True, False),
]

# the products of bench_reference.py --shape 32,256,512,2048,4 (8,192 tokens), timed beside a GPU
GPU_SHAPES = [
    ("xl qkv (8192x512 @ (1536x512)^T)", 8192, 512, 1536, False, True),
    ("xl ff1 (8192x512 @ (2048x512)^T)", 8192, 512, 2048, False, True),
    ("xl dx ff1 (8192x2048 @ 2048x512)", 8192, 2048, 512, False, False),
    ("xl dW ff1 ((8192x2048)^T @ 8192x512)", 2048, 8192, 512, True, False),
]


def seconds_autodiff(a: np.ndarray, b: np.ndarray, bias: np.ndarray, a_t: bool, b_t: bool, reps: int,
                     device: str) -> float:
    def program(count: int):
        ad.reset()
        ta, tb = ad.Tensor(a, name="a"), ad.Tensor(b, name="b")
        tbias = ad.Tensor(bias, name="bias")
        m, n = (a.shape[1] if a_t else a.shape[0]), (b.shape[0] if b_t else b.shape[1])
        out = ad.Tensor(np.zeros((m, n), np.float32), name="out")
        ad.ir_for(count, lambda: out.copy_(((ta.T if a_t else ta) @ (tb.T if b_t else tb) + tbias).relu()))
        return ad.compile(device=device)

    return seconds_per_iteration(program, reps, rounds=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--device", default="opencl")
    parser.add_argument("--no-numpy", action="store_true", help="skip numpy (slow beside a GPU's sizes)")
    parser.add_argument("--json")
    args = parser.parse_args()
    import torch
    torch_device = "cuda" if args.device == "cuda" else "cpu"
    synchronize = torch.cuda.synchronize if torch_device == "cuda" else (lambda: None)
    work_per_case = 1e11 if torch_device == "cuda" else 2e9   # flops timed per run of a case
    cases = [(f"square {s}", s, s, s, False, False) for s in args.sizes] + TRANSFORMER_SHAPES
    cases += GPU_SHAPES if torch_device == "cuda" else []
    rng = np.random.default_rng(0)
    rows = []
    for label, m, k, n, a_t, b_t in cases:
        a = rng.standard_normal((k, m) if a_t else (m, k)).astype(np.float32)
        b = rng.standard_normal((n, k) if b_t else (k, n)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        flops = 2 * m * n * k
        reps = max(2, min(200, int(work_per_case / flops)))
        ours = seconds_autodiff(a, b, bias, a_t, b_t, reps, args.device)
        a_view, b_view = (a.T if a_t else a), (b.T if b_t else b)
        numpy_s = (float("nan") if args.no_numpy else
                   seconds_per_call(lambda: np.maximum(a_view @ b_view + bias, 0), reps))
        ta, tb, tbias = (torch.from_numpy(x).to(torch_device) for x in (a, b, bias))
        ta_view, tb_view = (ta.T if a_t else ta), (tb.T if b_t else tb)

        def torch_product() -> None:
            torch.relu(torch.addmm(tbias, ta_view, tb_view))
            synchronize()
        torch_s = seconds_per_call(torch_product, reps)
        rows.append(dict(case=label, m=m, k=k, n=n, autodiff_gflops=flops / ours / 1e9,
                         numpy_gflops=flops / numpy_s / 1e9, torch_gflops=flops / torch_s / 1e9))
    print(f"machine: {platform.machine()}, python {platform.python_version()}, device {args.device}, "
          f"torch on {torch_device}" + (f" ({torch.cuda.get_device_name()})" if torch_device == "cuda" else
                                        f", torch threads {torch.get_num_threads()}"))
    print(f"{'case':<40} {'autodiff':>9} {'numpy':>9} {'torch':>9} {'vs numpy':>9} {'vs torch':>9}  (GFLOP/s)")
    for r in rows:
        print(f"{r['case']:<40} {r['autodiff_gflops']:>9.1f} {r['numpy_gflops']:>9.1f} {r['torch_gflops']:>9.1f} "
              f"{r['autodiff_gflops'] / r['numpy_gflops']:>9.2f} {r['autodiff_gflops'] / r['torch_gflops']:>9.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
