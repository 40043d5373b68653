"""ms per training step of examples/mnist.py's MLP in the three modes, on one device.

    python benchmarks/bench_eager.py [--device opencl] [--steps 60] [--features 784]

Rows: the `ir_for` program (traced once, run as one loop: per iteration, from a run of
2*steps minus a run of steps), `ad.jit` (the step compiled once, one run per call), and the
interactive loop of examples/mnist_eager.py (the step traced again every iteration, its run
found in the structural compile cache). The interactive row splits its time into tracing
the step in Python, the cache's walk and key (lazy.py, structural.py) and the run itself
(uploads, launches, downloads), measured with the steps run synchronously
(AUTODIFF_SYNC_STEPS=1); by default a step runs in the background while Python traces the
next. The compile count is the cache's misses over the loop.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import autodiff as ad
import autodiff.nn.functional as F
from autodiff import nn
from autodiff.frontend import lazy
from timing import loop_sample, seconds_per_iteration

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from mnist import load_data  # noqa: E402


def make_model(features: int) -> tuple[nn.Module, nn.Optimizer]:
    ad.manual_seed(0)
    model = nn.Sequential(nn.Linear(features, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))
    return model, nn.SGD(model.parameters(), lr=0.1, momentum=0.9)


def ir_for_ms(x: np.ndarray, y: np.ndarray, batch: int, steps: int, device: str) -> float:
    return seconds_per_iteration(ir_for_program(x, y, batch, device), steps, rounds=3) * 1e3


def ir_for_program(x: np.ndarray, y: np.ndarray, batch: int, device: str) -> Callable[[int], Any]:
    """The `ir_for` program of `count` training steps, compiled (for timing.seconds_per_iteration)."""
    rng = np.random.default_rng(0)

    def program(count: int):
        ad.reset()
        model, opt = make_model(x.shape[1])
        labels: dict[str, np.ndarray] = {}

        def images() -> np.ndarray:
            picks = rng.integers(0, len(x), batch)
            labels["y"] = y[picks]
            return x[picks]

        def body() -> None:
            loss = F.cross_entropy(model(ad.Feeder(images, (batch, x.shape[1]))),
                                   ad.Feeder(lambda: labels["y"], (batch,), np.int32))
            loss.backward()
            opt.step()
            opt.zero_grad()
        ad.ir_for(count, body)
        return ad.compile(device=device)
    return program


def jit_ms(x: np.ndarray, y: np.ndarray, batch: int, steps: int, device: str) -> float:
    ad.reset()
    model, opt = make_model(x.shape[1])
    rng = np.random.default_rng(0)

    @ad.jit(device=device)
    def train_step(images, labels):
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    def step() -> None:
        picks = rng.integers(0, len(x), batch)
        train_step(x[picks], y[picks])
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1e3


def interactive_step(model: nn.Module, opt: nn.Optimizer, x: np.ndarray, y: np.ndarray, batch: int,
                     rng: np.random.Generator) -> ad.Tensor:
    """One step of the interactive loop (examples/mnist_eager.py's), traced; returns its loss."""
    picks = rng.integers(0, len(x), batch)
    loss = F.cross_entropy(model(ad.Tensor(x[picks], requires_grad=False)),
                           ad.Tensor(y[picks], requires_grad=False))
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss


def interactive_ms(x: np.ndarray, y: np.ndarray, batch: int, steps: int,
                   background: bool) -> tuple[float, float, float, int]:
    """(total, cache walk and key, run) ms per step, and the compiles over the loop."""
    ad.reset()
    model, opt = make_model(x.shape[1])
    rng = np.random.default_rng(0)
    spent = {"prepare": 0.0, "run": 0.0}
    originals = lazy.prepare, lazy.run_prepared

    def timed(name: str, fn):
        def wrapper(*args):
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                spent[name] += time.perf_counter() - start
        return wrapper
    lazy.prepare, lazy.run_prepared = timed("prepare", originals[0]), timed("run", originals[1])
    os.environ.pop("AUTODIFF_SYNC_STEPS", None)
    if not background:
        os.environ["AUTODIFF_SYNC_STEPS"] = "1"
    try:
        ad.clear_compile_cache()
        start = time.perf_counter()
        for step in range(steps + 1):
            if step == 1:   # the first step compiles: the steady state starts after it
                start = time.perf_counter()
                spent.update(prepare=0.0, run=0.0)
            loss = interactive_step(model, opt, x, y, batch, rng)
            if step % 20 == 0:
                loss.item()
        ad.execute()   # run the last step (a cache hit: the same part as every step)
        total = (time.perf_counter() - start) / steps * 1e3
    finally:
        lazy.prepare, lazy.run_prepared = originals
        os.environ.pop("AUTODIFF_SYNC_STEPS", None)
    per = {k: v / steps * 1e3 for k, v in spent.items()}
    return total, per["prepare"], per["run"], ad.compile_cache_info().misses


def interleaved_ratios(x: np.ndarray, y: np.ndarray, batch: int, steps: int, device: str,
                       rounds: int) -> list[tuple[float, float]]:
    """(ir_for, interactive) ms/step measured in turn, `rounds` times in one process: the
    machine's state changes from minute to minute, so each ratio compares neighbours."""
    program = ir_for_program(x, y, batch, device)
    short, long = program(steps), program(2 * steps)
    short.run()
    long.run()
    ad.reset()
    model, opt = make_model(x.shape[1])
    rng = np.random.default_rng(0)

    def interactive(count: int) -> None:
        for _ in range(count):
            loss = interactive_step(model, opt, x, y, batch, rng)
        loss.item()
    interactive(3)
    out = []
    for _ in range(rounds):
        looped = loop_sample(short, long, steps) * 1e3
        t = time.perf_counter()
        interactive(steps)
        out.append((looped, (time.perf_counter() - t) / steps * 1e3))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--features", type=int, default=None,
                        help="zero-pad the digits' 64 features to this many (784: MNIST's MLP; default 64)")
    parser.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                        help="only ir_for against the interactive loop, measured in turn ROUNDS times")
    args = parser.parse_args()
    device = args.device or ad.default_device()
    ad.set_default_device(device)
    x, y, _, _ = load_data(None)
    if args.features and args.features > x.shape[1]:
        x = np.pad(x, ((0, 0), (0, args.features - x.shape[1])))
    batch = min(args.batch, len(x))
    if args.interleave:
        pairs = interleaved_ratios(x, y, batch, args.steps, device, args.interleave)
        print(f"device {device}, MLP {x.shape[1]}-512-256-10, batch {batch}, {args.steps} steps per round")
        print(f"{'round':>5} {'ir_for':>8} {'interactive':>12} {'ratio':>6}")
        for i, (looped, eager) in enumerate(pairs):
            print(f"{i:5d} {looped:8.2f} {eager:12.2f} {eager / looped:5.2f}x")
        ratios = sorted(eager / looped for looped, eager in pairs)
        print(f"median ratio {statistics.median(ratios):.2f}x (min {ratios[0]:.2f}x, max {ratios[-1]:.2f}x)")
        return
    looped = ir_for_ms(x, y, batch, args.steps, device)
    jitted = jit_ms(x, y, batch, args.steps, device)
    synchronous, key, run, _ = interactive_ms(x, y, batch, args.steps, background=False)
    total, _, _, compiles = interactive_ms(x, y, batch, args.steps, background=True)
    print(f"device {device}, MLP {x.shape[1]}-512-256-10, batch {batch}, {args.steps} steps")
    print(f"{'mode':<26} {'ms/step':>8} {'vs ir_for':>9}")
    rows = (("ir_for", looped), ("jit", jitted), ("interactive", total),
            ("interactive, synchronous", synchronous))
    for name, ms in rows:
        print(f"{name:<26} {ms:8.2f} {ms / looped:8.2f}x")
    print(f"interactive, synchronous: trace and walk {synchronous - key - run:.2f} ms, cache key "
          f"{key:.2f} ms, run {run:.2f} ms per step; interactive: {compiles} compile(s) over "
          f"{args.steps + 1} steps")


if __name__ == "__main__":
    main()
