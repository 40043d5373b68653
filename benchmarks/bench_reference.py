"""The reference transformer benchmark: autodiff vs PyTorch eager, torch.compile and JAX.

    python benchmarks/bench_reference.py [--layers 1 2 4 6] [--steps 500] [--no-compile] [--no-jax] [--json out.json]
    python benchmarks/bench_reference.py --large        # batch 8, seq 64, d 128, ff 512, 2 layers, 200 steps
    python benchmarks/bench_reference.py --large --repeat 5   # every framework 5 times in turn, medians

L post-norm encoder layers (d_model 64, 4 heads, ff 128, ReLU, no dropout), input
(2, 64) filled with 0.3, loss = sum(output) / 1000, SGD lr 0.01; every framework
starts from the same weights. Columns: first call / compile seconds, steady ms per
step (autodiff and JAX's fori_loop: the whole run / steps; the others: median step),
final loss. JAX and tinygrad run when installed (pip install -e ".[bench]"; tinygrad
picks its device, DEV=CPU needs clang). Kernel caches (PoCL's, inductor's, JAX's,
tinygrad's) are whatever this machine has: run twice to see warm numbers.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import autodiff as ad  # noqa: E402
from reference_model import LARGE, reference_input, shape_config, trace_reference_step  # noqa: E402
from timing import wait_for_kernel_storing  # noqa: E402


def run_autodiff(config: dict, device: str) -> tuple[dict, dict]:
    ad.reset()
    ad.manual_seed(0)
    losses: list[float] = []
    steps = config["steps"]
    start = time.perf_counter()
    model = trace_reference_step(**config, losses=losses)
    state = model.state_dict()
    compiled = ad.compile(device=device)
    compile_s = time.perf_counter() - start
    report = compiled.run()
    wait_for_kernel_storing()   # else it builds beside the next framework's timed steps
    return state, dict(framework=f"autodiff {device}", compile_s=compile_s,
                       ms_per_step=1000 * report.run_seconds / steps, final_loss=losses[-1],
                       kernels=report.kernels_after_fusion, launches_per_step=report.kernels_launched / steps)


def run_torch(state: dict, config: dict, compiled: bool, device: str = "cpu") -> dict:
    """PyTorch on `device` ("cpu", or "cuda" beside autodiff's CUDA backend); on a GPU each
    step is timed to its end (synchronized), as JAX's steps are (block_until_ready)."""
    import torch
    torch.manual_seed(0)
    steps = config["steps"]
    layer = torch.nn.TransformerEncoderLayer(config["d_model"], config["heads"], config["ff"], dropout=0.0,
                                             batch_first=True)
    model = torch.nn.TransformerEncoder(layer, config["layers"], enable_nested_tensor=False)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.from_numpy(reference_input(config["d_model"], config["seq"], config.get("batch"))).to(device)
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def step() -> torch.Tensor:
        opt.zero_grad()
        loss = model(x).sum() / 1000
        loss.backward()
        opt.step()
        return loss

    fn = torch.compile(step) if compiled else step
    start = time.perf_counter()
    loss = fn()
    synchronize()
    first = time.perf_counter() - start
    times = []
    for _ in range(steps - 1):
        t = time.perf_counter()
        loss = fn()
        synchronize()
        times.append(time.perf_counter() - t)
    name = "torch.compile" if compiled else "torch eager"
    return dict(framework=name if device == "cpu" else f"{name} {device}", compile_s=first,
                ms_per_step=1000 * statistics.median(times), final_loss=float(loss.detach()))


def jax_available() -> bool:
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


def tinygrad_available() -> bool:
    """tinygrad imports and has a device (DEV=CPU needs clang)."""
    try:
        from tinygrad import Device, Tensor
        (Tensor([1.0]) + 1).numpy()
        return bool(Device.DEFAULT)
    except Exception:
        return False


def print_rows(rows: list[dict], key: str, title: str) -> None:
    """The results table (shared with bench_small.py): `key` of each row first, under `title`."""
    width = max([len(title)] + [len(str(r[key])) for r in rows])
    names = max([18] + [len(r["framework"]) for r in rows])
    print(f"{title:>{width}} {'framework':<{names}} {'compile s':>9} {'ms/step':>8} {'speedup vs eager':>16} "
          f"{'final loss':>12}")
    for r in rows:
        print(f"{r[key]:>{width}} {r['framework']:<{names}} {r['compile_s']:>9.2f} {r['ms_per_step']:>8.3f} "
              f"{r['vs_eager']:>16.2f} {r['final_loss']:>12.6f}")


def run_frameworks(config: dict, args: argparse.Namespace, with_jax: bool, with_tinygrad: bool) -> list[dict]:
    """One row per framework, autodiff first and torch eager second."""
    state, ours = run_autodiff(config, args.device)
    results = [ours, run_torch(state, config, False, args.torch_device)]
    if not args.no_compile:
        results.append(run_torch(state, config, True, args.torch_device))
    if with_jax:
        from jax_reference import run_jax
        data = reference_input(config["d_model"], config["seq"], config.get("batch"))
        for fori_loop in (False, True):
            results.append(run_jax(state, data, config["layers"], config["heads"], config["steps"], 0.01,
                                   fori_loop))
    if with_tinygrad:
        from tinygrad_reference import run_tinygrad
        data = reference_input(config["d_model"], config["seq"], config.get("batch"))
        results.append(run_tinygrad(state, data, config["layers"], config["heads"], config["steps"], 0.01))
    return results


def median_of_repeats(repeats: list[list[dict]]) -> list[dict]:
    """Each framework's row of the first repeat, with the median ms/step over the repeats and
    their range (`ms_range`); compile seconds are the first repeat's (the later ones are warm)."""
    rows = []
    for position, first in enumerate(repeats[0]):
        times = [repeat[position]["ms_per_step"] for repeat in repeats]
        rows.append(dict(first, ms_per_step=statistics.median(times), ms_range=(min(times), max(times))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2, 4, 6])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--large", action="store_true", help="the larger model (its own layers and steps)")
    parser.add_argument("--device", default="opencl")
    parser.add_argument("--torch-device", help="PyTorch's device (default: cuda beside --device cuda, else cpu)")
    parser.add_argument("--shape", metavar="B,S,D,FF,L",
                        help="another model: batch, sequence, d_model, ff and layers (4 heads; --steps steps)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile)")
    parser.add_argument("--no-jax", action="store_true", help="skip JAX")
    parser.add_argument("--no-tinygrad", action="store_true", help="skip tinygrad")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every framework this many times in turn and report each one's median "
                             "(a noisy machine slows the frameworks alike only when they alternate)")
    parser.add_argument("--json")
    args = parser.parse_args()
    args.torch_device = args.torch_device or ("cuda" if args.device == "cuda" else "cpu")
    if args.shape:
        configs = [shape_config(args.shape, args.steps)]
    else:
        configs = ([dict(LARGE)] if args.large else
                   [dict(layers=n, steps=args.steps, d_model=64, heads=4, ff=128, seq=2) for n in args.layers])
    with_jax = not args.no_jax and jax_available()
    with_tinygrad = not args.no_tinygrad and tinygrad_available()
    rows = []
    for config in configs:
        results = median_of_repeats([run_frameworks(config, args, with_jax, with_tinygrad)
                                     for _ in range(args.repeat)])
        eager_ms = results[1]["ms_per_step"]
        for r in results:
            r.update(layers=config["layers"], vs_eager=eager_ms / r["ms_per_step"])
            rows.append(r)
    first = configs[0]
    shape = (f"batch {first['batch']}, seq {first['seq']}, d {first['d_model']}, ff {first['ff']}"
             if "batch" in first else "(2, 64), d 64, ff 128")
    print(f"machine: {platform.machine()}, {platform.python_version()}; {shape}; steps {configs[0]['steps']}"
          + ("" if with_jax else "; JAX not installed") + ("" if with_tinygrad else "; tinygrad not available"))
    print_rows(rows, "layers", "L")
    if args.repeat > 1:
        print(f"ms/step: the median of {args.repeat} repeats, the frameworks in turn; ranges: "
              + "; ".join(f"{r['framework']} {r['ms_range'][0]:.3f}-{r['ms_range'][1]:.3f}" for r in rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
