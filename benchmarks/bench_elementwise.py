"""Elementwise kernels: explicit float vectors (vector.py) against scalar code.

    python benchmarks/bench_elementwise.py [--rows 4096] [--device opencl]

Each case is a program that computes `out.copy_(expression)` `reps` times inside one
`ir_for` (one fused kernel per iteration). Milliseconds per kernel are the difference
of a run with 2*reps and a run with reps iterations divided by reps, so uploads and
read-backs cancel. Columns: autodiff with vectors (the default), with
`disable={"vectorize"}`, PyTorch eager (one op at a time, out of place) and
torch.compile (one fused loop), median of rounds; ratios are time / autodiff's.
"""
from __future__ import annotations

import argparse
import platform
from typing import Callable

import numpy as np

import autodiff as ad
from timing import seconds_per_call, seconds_per_iteration


def _cases(rows: int, cols: int) -> list[tuple[str, list[tuple[int, ...]], Callable]]:
    """(label, input shapes, fn(*inputs)) with fn written once for autodiff and torch tensors."""
    def gelu(x):
        return 0.5 * x * (1.0 + (0.7978845608 * (x + 0.044715 * x * x * x)).tanh())
    return [
        ("relu(x + bias)", [(rows, cols), (cols,)], lambda x, b: (x + b).relu()),
        ("exp(x - rowmax)", [(rows, cols), (rows, 1)], lambda x, m: (x - m).exp()),
        ("adam step p - lr*m/(sqrt(v)+eps)", [(rows, cols)] * 3, lambda p, m, v: p - 0.001 * m / (v.sqrt() + 1e-8)),
        ("gelu (tanh)", [(rows, cols)], gelu),
    ]


def ms_autodiff(fn: Callable, inputs: list[np.ndarray], reps: int, disable: set[str]) -> float:
    def program(count: int):
        ad.reset()
        tensors = [ad.Tensor(x, name=f"in{n}") for n, x in enumerate(inputs)]
        out = ad.Tensor(np.zeros(inputs[0].shape, np.float32), name="out")
        ad.ir_for(count, lambda: out.copy_(fn(*tensors)))
        return ad.compile(device=ARGS.device, disable=disable)

    return seconds_per_iteration(program, reps) * 1e3


def main() -> None:
    import torch
    rng = np.random.default_rng(0)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {ARGS.rows} x {ARGS.cols} floats, {ARGS.reps} reps")
    header = f"{'case':36} {'vectors ms':>10} {'scalar':>8} {'eager':>8} {'compile':>8}   ratios scalar/eager/compile"
    print(header)
    for label, shapes, fn in _cases(ARGS.rows, ARGS.cols):
        inputs = [rng.random(shape, dtype=np.float32) + 0.5 for shape in shapes]
        vectors = ms_autodiff(fn, inputs, ARGS.reps, set())
        scalar = ms_autodiff(fn, inputs, ARGS.reps, {"vectorize"})
        tensors = [torch.from_numpy(x) for x in inputs]
        eager = seconds_per_call(lambda: fn(*tensors), ARGS.reps) * 1e3
        compiled_fn = torch.compile(fn)
        compiled = seconds_per_call(lambda: compiled_fn(*tensors), ARGS.reps) * 1e3
        print(f"{label:36} {vectors:10.3f} {scalar:8.3f} {eager:8.3f} {compiled:8.3f}   "
              f"{scalar / vectors:.2f} / {eager / vectors:.2f} / {compiled / vectors:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=256)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--device", default="opencl")
    ARGS = parser.parse_args()
    main()
