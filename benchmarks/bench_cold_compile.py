"""Time to the first step, cold and warm, beside JAX's first call: each measurement in a fresh process.

    python benchmarks/bench_cold_compile.py [--layers 1 6 24] [--large] [--no-jax] [--device opencl]

For each model (the reference transformer at each L; with --large the larger model too):
  cold      trace + compile with every cache empty (PoCL's, pyopencl's and autodiff's)
  warm      the same program in a new process, after the cold one filled autodiff's cache
  new lr    warm, with another learning rate (float constants are kernel arguments)
  new steps warm, with another number of steps (the loop count is host-side)
  in-proc   cold, with `parallel_build` off (every kernel built in this process)
  JAX       jax.jit(step) first call (trace, compile, one step) in a fresh process
Times include importing nothing: each child imports first, then starts the clock.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child_autodiff(config: dict, device: str, disable: list[str]) -> dict:
    sys.path.insert(0, str(HERE))
    import autodiff as ad
    from autodiff.backends import opencl_build
    from reference_model import trace_reference_step
    start = time.perf_counter()
    ad.manual_seed(0)
    trace_reference_step(**config)
    compiled = ad.compile(device=device, disable=set(disable))
    seconds = time.perf_counter() - start
    opencl_build.finish_storing()     # the cache is complete for the next process
    return {"seconds": seconds, "stages": compiled.stage_seconds}


def child_jax(config: dict) -> dict:
    sys.path.insert(0, str(HERE))
    import jax
    import jax.numpy as jnp
    from jax_reference import _encoder
    from reference_model import reference_input
    import torch   # PyTorch's parameter names and initial values, as the other benchmarks
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(config["d_model"], config["heads"], config["ff"], dropout=0.0,
                                             batch_first=True)
    encoder = torch.nn.TransformerEncoder(layer, config["layers"], enable_nested_tensor=False)
    state = {k: v.detach().numpy() for k, v in encoder.state_dict().items()}
    data = reference_input(config["d_model"], config["seq"], config.get("batch"))
    start = time.perf_counter()
    params = {k: jnp.asarray(v) for k, v in state.items()}
    x = jnp.asarray(data)

    def step(params):
        loss, grads = jax.value_and_grad(
            lambda p: _encoder(jnp, jax, p, x, config["layers"], config["heads"]).sum() / 1000)(params)
        return {k: params[k] - config["lr"] * grads[k] for k in params}, loss
    jax.block_until_ready(jax.jit(step)(params))
    return {"seconds": time.perf_counter() - start}


def run_child(kind: str, config: dict, env: dict, device: str, disable: list[str]) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--config", json.dumps(config), "--device", device,
               "--disable", ",".join(disable)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fresh_env() -> dict:
    """Every cache empty: new PoCL and autodiff cache folders, pyopencl's cache off."""
    env = dict(os.environ, POCL_CACHE_DIR=tempfile.mkdtemp(prefix="pocl-"),
               AUTODIFF_CACHE_DIR=tempfile.mkdtemp(prefix="autodiff-"), PYOPENCL_NO_CACHE="1",
               JAX_ENABLE_COMPILATION_CACHE="false")
    env.pop("AUTODIFF_DISABLE", None)
    return env


def measure(name: str, config: dict, device: str, with_jax: bool) -> dict:
    row = {"model": name}
    env = fresh_env()
    cold = run_child("autodiff", config, env, device, [])
    row["cold"] = cold["seconds"]
    row["cold build"] = cold["stages"].get("device build", 0.0)
    row["warm"] = run_child("autodiff", config, env, device, [])["seconds"]
    row["new lr"] = run_child("autodiff", dict(config, lr=config.get("lr", 0.01) * 0.5), env, device, [])["seconds"]
    row["new steps"] = run_child("autodiff", dict(config, steps=config["steps"] + 7), env, device, [])["seconds"]
    row["in-proc"] = run_child("autodiff", config, fresh_env(), device, ["parallel_build"])["seconds"]
    if with_jax:
        jax_config = dict(config, lr=config.get("lr", 0.01))
        jax_config.setdefault("batch", None)
        row["JAX"] = run_child("jax", jax_config, fresh_env(), device, [])["seconds"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="*", default=[1, 6, 24])
    parser.add_argument("--large", action="store_true", help="also the larger model")
    parser.add_argument("--no-jax", action="store_true")
    parser.add_argument("--device", default="opencl")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--disable", default="", help=argparse.SUPPRESS)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.child:
        config = json.loads(args.config)
        result = (child_jax(config) if args.child == "jax" else
                  child_autodiff(config, args.device, [d for d in args.disable.split(",") if d]))
        print(json.dumps(result))
        return
    sys.path.insert(0, str(HERE))
    from reference_model import LARGE
    reference = dict(steps=500, d_model=64, heads=4, ff=128, seq=2)
    models = [(f"reference L={n}", dict(reference, layers=n)) for n in args.layers]
    if args.large:
        models.append(("larger (b8 s64 d128)", dict(LARGE)))
    try:
        import jax  # noqa: F401
        with_jax = not args.no_jax
    except ImportError:
        with_jax = False
    rows = [measure(name, config, args.device, with_jax) for name, config in models]
    columns = ["cold", "cold build", "warm", "new lr", "new steps", "in-proc"] + (["JAX"] if with_jax else [])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}, device {args.device}; seconds to a compiled program (JAX: to its first step)")
    print(f"{'model':<22}" + "".join(f"{c:>11}" for c in columns) + (f"{'cold/JAX':>10}" if with_jax else ""))
    for r in rows:
        print(f"{r['model']:<22}" + "".join(f"{r[c]:>11.2f}" for c in columns)
              + (f"{r['cold'] / r['JAX']:>10.2f}" if with_jax else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
