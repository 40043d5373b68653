"""Transformer shapes beyond the benchmark's two: autodiff beside PyTorch eager (issue 14).

    python benchmarks/bench_shapes.py [--steps 30] [--device opencl] [--only 0 3] [--profile] [--json out.json]

Each row is a stack of `nn.TransformerEncoderLayer(d, 4 heads, ff, dropout=0,
batch_first=True, activation, norm_first)` trained with SGD (lr 0.01) on a fixed
(batch, seq, d) input, loss = mean(output ** 2) (pre-norm stacks diverge
under sum(output)), in both frameworks from the same
weights. The shapes span what issue 14 asks for: batch 4-16, seq 32-128, d 96-256,
ff 4d, 2-4 layers, pre- and post-norm, GELU and ReLU.

Timing: autodiff runs all steps in one `ir_for` with a Receiver of the loss every step;
its ms/step is the second run's time / steps (the first run is a warm-up, as PyTorch's
first step is); PyTorch eager's is the median step after one warm-up step. Compile
seconds are autodiff's trace + compile with whatever caches this machine has. The
last column is the ratio issue 14's target is about (at most 0.8 on every shape).
The final losses of both frameworks are printed and must agree.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import autodiff as ad  # noqa: E402
from autodiff import nn  # noqa: E402
from timing import wait_for_kernel_storing  # noqa: E402

# (batch, seq, d_model, ff, layers, activation, norm_first)
SHAPES = [
    (4, 32, 96, 384, 3, "relu", False),
    (8, 64, 128, 512, 2, "relu", False),
    (8, 64, 128, 512, 2, "gelu", True),
    (16, 32, 128, 512, 2, "relu", True),
    (4, 128, 128, 512, 2, "gelu", False),
    (8, 64, 256, 1024, 2, "gelu", True),
    (16, 128, 256, 1024, 4, "relu", False),
]
HEADS = 4
LR = 0.01


def describe(shape: tuple) -> str:
    batch, seq, d, ff, layers, activation, norm_first = shape
    return f"b{batch} s{seq} d{d} ff{ff} L{layers} {'pre' if norm_first else 'post'} {activation}"


def model_input(shape: tuple) -> np.ndarray:
    batch, seq, d = shape[:3]
    return np.random.default_rng(0).standard_normal((batch, seq, d)).astype(np.float32)


def run_autodiff(shape: tuple, steps: int, device: str, profile: bool = False) -> tuple[dict, dict]:
    batch, seq, d, ff, layers, activation, norm_first = shape
    ad.reset()
    ad.manual_seed(0)
    start = time.perf_counter()
    layer = nn.TransformerEncoderLayer(d, HEADS, ff, dropout=0.0, activation=activation, batch_first=True,
                                       norm_first=norm_first)
    model = nn.TransformerEncoder(layer, layers)
    state = {k: np.array(v) for k, v in model.state_dict().items()}
    opt = nn.SGD(model.parameters(), lr=LR)
    data = model_input(shape)
    losses: list[float] = []

    def step() -> None:
        x = ad.Feeder(lambda: data, data.shape, name="x")
        out = model(x)
        loss = (out * out).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ad.Receiver(lambda v: losses.append(float(v)), [loss], name="loss")

    ad.ir_for(steps, step)
    compiled = ad.compile(device=device)
    compile_s = time.perf_counter() - start
    compiled.run()                       # warm-up: trains the model `steps` steps further
    wait_for_kernel_storing()
    report = compiled.run(profile=profile)
    if profile:
        print(report.profile_table(top=12))
    return state, dict(compile_s=compile_s, ms_per_step=1000 * report.run_seconds / steps,
                       final_loss=losses[steps - 1])   # the warm-up run's last loss: torch's too


def run_torch(shape: tuple, state: dict, steps: int) -> dict:
    import torch
    batch, seq, d, ff, layers, activation, norm_first = shape
    layer = torch.nn.TransformerEncoderLayer(d, HEADS, ff, dropout=0.0, activation=activation, batch_first=True,
                                             norm_first=norm_first)
    model = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    x = torch.from_numpy(model_input(shape))
    times, loss = [], None
    for _ in range(steps):
        t = time.perf_counter()
        opt.zero_grad()
        out = model(x)
        loss = (out * out).mean()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return dict(ms_per_step=1000 * statistics.median(times[1:]), final_loss=float(loss.detach()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", default="opencl")
    parser.add_argument("--only", type=int, nargs="*", help="rows of SHAPES to run (default: all)")
    parser.add_argument("--profile", action="store_true", help="autodiff's timed run profiled, its kernel table")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"device {args.device}, {args.steps} steps, {HEADS} heads")
    print(f"{'shape':<34} {'compile s':>9} {'autodiff ms':>11} {'torch ms':>9} {'ours/torch':>10} "
          f"{'loss (ours)':>12} {'loss (torch)':>12}")
    rows = []
    for index in (args.only if args.only else range(len(SHAPES))):
        shape = SHAPES[index]
        state, ours = run_autodiff(shape, args.steps, args.device, args.profile)
        theirs = run_torch(shape, state, args.steps)
        row = dict(shape=describe(shape), compile_s=ours["compile_s"], autodiff_ms=ours["ms_per_step"],
                   torch_ms=theirs["ms_per_step"], ratio=ours["ms_per_step"] / theirs["ms_per_step"],
                   loss=ours["final_loss"], torch_loss=theirs["final_loss"])
        rows.append(row)
        print(f"{row['shape']:<34} {row['compile_s']:>9.2f} {row['autodiff_ms']:>11.3f} {row['torch_ms']:>9.3f} "
              f"{row['ratio']:>10.2f} {row['loss']:>12.6f} {row['torch_loss']:>12.6f}", flush=True)
        if not np.isclose(row["loss"], row["torch_loss"], rtol=1e-3, atol=1e-4):
            print(f"  the final losses differ: {row['loss']} vs {row['torch_loss']}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
