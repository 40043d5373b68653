"""The small training programs of the examples: autodiff vs PyTorch eager and JAX (issue 16).

    python benchmarks/bench_small.py [--steps N] [--device opencl] [--no-jax] [--json out.json]
    python benchmarks/bench_small.py --profile      # also autodiff's host and device ms per iteration

- mnist: the MLP of examples/mnist.py, Linear(F, 512)-ReLU-Linear(512, 256)-ReLU-Linear(256, 10),
  cross-entropy, SGD lr 0.1 momentum 0.9, batch 512, 300 steps; F = 784 (MNIST's images,
  `--features 64` is sklearn's digits, the example's default data).
- linear: examples/linear.py, Linear(255, 255)-Sigmoid-Linear(255, 255) on (2, 255), loss the
  sum of the outputs, SGD lr 0.01, 1000 steps.

Every step trains on the same host batch (fixed seeded data, `mnist_program` says which:
the benchmark measures the step, not a data pipeline). autodiff runs the steps in one `ir_for` and takes the batch
through Feeders as the examples do, so it copies the batch in every step; PyTorch and JAX
keep it where it is. Every framework starts from autodiff's initial weights; the final
loss (the last step's, before its update) is printed beside the time, and the run checks
that the frameworks agree on it. Columns as bench_reference.py: compile seconds (PyTorch:
its first step), steady ms per step (autodiff and JAX's fori_loop: the whole run / steps;
PyTorch eager and JAX jit(step): the median step), speedup vs PyTorch eager, final loss.
On a busy machine PyTorch's threads wait for each other (`--torch-threads 1` helps there).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import autodiff as ad  # noqa: E402
import autodiff.nn.functional as F  # noqa: E402
from autodiff import nn  # noqa: E402
from bench_reference import jax_available, print_rows  # noqa: E402
from timing import wait_for_kernel_storing  # noqa: E402

# final losses of the frameworks agree to this tolerance, |a - b| <= ATOL + RTOL |b| (float32,
# hundreds of steps; mnist's loss ends near 1e-3)
LOSS_RTOL, LOSS_ATOL = 1e-3, 1e-5


@dataclass
class Program:
    """One small training program, as every framework builds it."""
    name: str
    steps: int
    lr: float
    momentum: float
    layers: list[tuple[int, int]]    # (in, out) of each Linear
    activation: str                  # between the Linears: "relu" or "sigmoid"
    loss: str                        # "cross_entropy" (with labels) or "sum"
    images: np.ndarray
    labels: np.ndarray | None


def mnist_program(steps: int, features: int, batch: int = 512) -> Program:
    """MNIST-like data: 15% of the pixels lit, labels from a fixed random linear teacher, so
    the loss falls as on real data. (Uniform noise with random labels is chaotic at lr 0.1,
    momentum 0.9: PyTorch in float32 and in float64 end 10% apart after 300 steps.)"""
    rng = np.random.default_rng(0)
    images = ((rng.random((batch, features)) < 0.15) * rng.random((batch, features))).astype(np.float32)
    labels = (images @ rng.standard_normal((features, 10)).astype(np.float32)).argmax(1).astype(np.int32)
    return Program("mnist", steps, 0.1, 0.9, [(features, 512), (512, 256), (256, 10)], "relu", "cross_entropy",
                   images, labels)


def linear_program(steps: int) -> Program:
    data = np.random.default_rng(0).standard_normal((2, 255)).astype(np.float32)
    return Program("linear", steps, 0.01, 0.0, [(255, 255), (255, 255)], "sigmoid", "sum", data, None)


# --- autodiff -----------------------------------------------------------------------------
def run_autodiff(p: Program, device: str, profile: bool) -> tuple[dict[str, np.ndarray], dict]:
    """The program traced as the example traces it, compiled and run once; also the initial
    weights (the other frameworks start from them). `profile`: a second, profiled run gives
    the host and device milliseconds per iteration of the loop (`loop`)."""
    ad.reset()
    ad.manual_seed(0)
    start = time.perf_counter()
    act = nn.ReLU if p.activation == "relu" else nn.Sigmoid
    modules: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(p.layers):
        modules += [nn.Linear(fan_in, fan_out)] + ([act()] if i < len(p.layers) - 1 else [])
    model = nn.Sequential(*modules)
    state = model.state_dict()
    opt = nn.SGD(model.parameters(), lr=p.lr, momentum=p.momentum)
    losses: list[float] = []

    def step() -> None:
        x = ad.Feeder(lambda: p.images, p.images.shape, name="images")
        if p.labels is None:
            loss = model(x).sum()
        else:
            labels = ad.Feeder(lambda: p.labels, p.labels.shape, np.int32, name="labels")
            loss = F.cross_entropy(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ad.Receiver(lambda v: losses.append(float(v)), [loss], name="loss", every=p.steps)

    ad.ir_for(p.steps, step)
    compiled = ad.compile(device=device)
    compile_s = time.perf_counter() - start
    report = compiled.run()
    wait_for_kernel_storing()   # else it builds beside the profiled run and the next framework
    row = dict(framework=f"autodiff {device}", compile_s=compile_s, ms_per_step=1000 * report.run_seconds / p.steps,
               final_loss=losses[-1], launches_per_step=report.kernels_launched / p.steps)
    if profile:
        profiled = compiled.run(profile=True).profile
        row["loop"] = profiled.loops()[0].to_dict()
        row["loop_line"] = profiled.loop_lines()[0]
    return state, row


# --- PyTorch eager ------------------------------------------------------------------------
def run_torch(p: Program, state: dict[str, np.ndarray], threads: int | None) -> dict:
    import torch
    if threads:
        torch.set_num_threads(threads)
    act = torch.nn.ReLU if p.activation == "relu" else torch.nn.Sigmoid
    modules: list[torch.nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(p.layers):
        modules += [torch.nn.Linear(fan_in, fan_out)] + ([act()] if i < len(p.layers) - 1 else [])
    model = torch.nn.Sequential(*modules)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
    opt = torch.optim.SGD(model.parameters(), lr=p.lr, momentum=p.momentum)
    x = torch.from_numpy(p.images)
    y = None if p.labels is None else torch.from_numpy(p.labels).long()

    def step() -> torch.Tensor:
        opt.zero_grad()
        out = model(x)
        loss = out.sum() if y is None else torch.nn.functional.cross_entropy(out, y)
        loss.backward()
        opt.step()
        return loss

    start = time.perf_counter()
    loss = step()
    first = time.perf_counter() - start
    times = []
    for _ in range(p.steps - 1):
        t = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t)
    return dict(framework="torch eager", compile_s=first, ms_per_step=1000 * statistics.median(times),
                final_loss=float(loss.detach()))


# --- JAX ----------------------------------------------------------------------------------
def jax_step(p: Program) -> Callable[[Any], Any]:
    """One training step `(params, momentum buffers) -> (same, loss)`: SGD as PyTorch's (the
    buffers start at zero, so the first step's buffer is the gradient)."""
    import jax
    import jax.numpy as jnp
    x = jnp.asarray(p.images)
    y = None if p.labels is None else jnp.asarray(p.labels)
    act = jax.nn.relu if p.activation == "relu" else jax.nn.sigmoid

    def loss_fn(params: dict) -> Any:
        h = x
        for i in range(len(p.layers)):
            h = h @ params[f"{2 * i}.weight"].T + params[f"{2 * i}.bias"]
            if i < len(p.layers) - 1:
                h = act(h)
        if y is None:
            return h.sum()
        return -jnp.take_along_axis(jax.nn.log_softmax(h), y[:, None], axis=1).mean()

    def step(carry: tuple[dict, dict]) -> tuple[tuple[dict, dict], Any]:
        params, buffers = carry
        loss, grads = jax.value_and_grad(loss_fn)(params)
        buffers = {k: p.momentum * buffers[k] + grads[k] for k in params}
        return ({k: params[k] - p.lr * buffers[k] for k in params}, buffers), loss
    return step


def run_jax(p: Program, state: dict[str, np.ndarray], fori_loop: bool) -> dict:
    import jax.numpy as jnp
    from jax_reference import time_jax
    params = {k: jnp.asarray(v) for k, v in state.items()}
    buffers = {k: jnp.zeros_like(v) for k, v in params.items()}
    return time_jax(jax_step(p), (params, buffers), p.steps, fori_loop)


# --- the table ----------------------------------------------------------------------------
def machine() -> str:
    """CPU model, cores and the OpenCL device autodiff picks (where there is one)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        from autodiff.backends.opencl import choose_device
        opencl = choose_device().name.strip()
    except Exception as err:   # no OpenCL here: say why, the rest still runs
        opencl = f"none ({str(err).splitlines()[0]})"
    return f"{cpu}, {os.cpu_count()} cores; OpenCL device: {opencl}"


def check_losses(rows: list[dict]) -> list[str]:
    """The programs whose frameworks disagree on the final loss (beyond LOSS_RTOL), as lines."""
    problems = []
    for r in rows:
        ours = next(o for o in rows if o["program"] == r["program"])["final_loss"]
        if abs(r["final_loss"] - ours) > LOSS_ATOL + LOSS_RTOL * abs(ours):
            problems.append(f"{r['program']}: {r['framework']} final loss {r['final_loss']:.6f}, "
                            f"autodiff {ours:.6f}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help="steps of both programs (default: the examples', 300 and 1000)")
    parser.add_argument("--features", type=int, default=784, help="mnist's input features (64: sklearn digits)")
    parser.add_argument("--device", default="opencl")
    parser.add_argument("--no-jax", action="store_true", help="skip JAX")
    parser.add_argument("--torch-threads", type=int, help="torch.set_num_threads (default: PyTorch's own)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile autodiff's loop: host and device ms per iteration")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    with_jax = not args.no_jax and jax_available()
    programs = [mnist_program(args.steps or 300, args.features), linear_program(args.steps or 1000)]
    rows = []
    for p in programs:
        state, ours = run_autodiff(p, args.device, args.profile)
        results = [ours, run_torch(p, state, args.torch_threads)]
        if with_jax:
            results += [run_jax(p, state, fori_loop) for fori_loop in (False, True)]
        for r in results:
            r.update(program=p.name, steps=p.steps, vs_eager=results[1]["ms_per_step"] / r["ms_per_step"])
        rows += results
    print(f"machine: {machine()}; python {platform.python_version()}"
          + ("" if with_jax else "; JAX not installed or skipped"))
    print(f"mnist: batch 512, features {args.features}, {programs[0].steps} steps; "
          f"linear: (2, 255), {programs[1].steps} steps")
    print_rows(rows, "program", "program")
    for r in rows:
        if "loop_line" in r:
            print(f"{r['program']} {r['framework']}, profiled: {r['loop_line']}")
    problems = check_losses(rows)
    print(f"final losses agree (to {LOSS_ATOL:g} + {LOSS_RTOL:g} x autodiff's)" if not problems else
          "FINAL LOSSES DISAGREE: " + "; ".join(problems))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
