"""The examples run end to end: each is a subprocess with few steps, its printed output checked.

Each example runs on the numpy reference device and on OpenCL where a platform
is found. Runs are cached per (example, device, arguments), so the tests that
compare devices reuse the runs of the per-device tests. The step counts keep
the model shapes of the examples' defaults, so OpenCL kernels compiled by an
earlier run of an example (PoCL caches them) are reused here.
"""
from __future__ import annotations

import functools
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autodiff.backends.opencl import opencl_available

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMEOUT_S = 600


def example_devices() -> list[str]:
    """numpy, plus opencl when available; AUTODIFF_TEST_DEVICES=numpy,opencl narrows it."""
    devices = ["numpy"] + (["opencl"] if opencl_available() else [])
    wanted = os.environ.get("AUTODIFF_TEST_DEVICES")
    return [d for d in devices if d in wanted.split(",")] if wanted else devices


DEVICES = example_devices()
needs_two_devices = pytest.mark.skipif(len(DEVICES) < 2, reason="needs numpy and opencl (no OpenCL platform here)")


@functools.lru_cache(maxsize=None)
def run_example(script: str, device: str, *args: str) -> str:
    """Run examples/<script> on `device` with `args`; returns its stdout (fails on a nonzero exit)."""
    env = dict(os.environ)
    env.pop("AUTODIFF_DEVICE", None)   # --device decides
    command = [sys.executable, str(EXAMPLES / script), "--device", device, *args]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, (f"{' '.join(command)} exited with {proc.returncode}\n"
                                  f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")
    # a successful compile and run writes nothing to stderr (no compiler output, no warnings)
    assert proc.stderr == "", f"{' '.join(command)} wrote to stderr:\n{proc.stderr[-4000:]}"
    return proc.stdout


def step_losses(output: str) -> list[float]:
    """The `step N  loss X` lines, in order."""
    return [float(m.group(2)) for m in re.finditer(r"^step\s+(\d+)\s+loss\s+(\S+)$", output, re.M)]


def number_after(label: str, output: str) -> float:
    """The number printed after `label` (the last occurrence)."""
    found = re.findall(rf"{label}\s+(-?[\d.]+(?:e[-+]?\d+)?|nan|-?inf)", output)
    assert found, f"no '{label}' in the output:\n{output[-2000:]}"
    return float(found[-1])


def assert_decreasing(losses: list[float]) -> None:
    assert len(losses) >= 2, f"expected at least two loss lines, got {losses}"
    assert all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < losses[0], f"the loss did not decrease: {losses}"


# --- linear.py ---------------------------------------------------------------
LINEAR_STEPS = "60"


def linear_output(device: str, out: Path) -> str:
    return run_example("linear.py", device, "--steps", LINEAR_STEPS, "--out", str(out / f"linear_{device}.safetensors"))


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("examples")


@pytest.mark.parametrize("device", DEVICES)
def test_linear_trains_and_saves(device, out_dir):
    import autodiff as ad
    output = linear_output(device, out_dir)
    assert_decreasing(step_losses(output))
    checksum = number_after("checksum", output)
    assert math.isfinite(checksum) and math.isfinite(number_after("final loss", output))
    saved = ad.load(out_dir / f"linear_{device}.safetensors")
    assert sorted(saved) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert saved["0.weight"].shape == (255, 255)
    total = sum(float(v.astype(np.float64).sum()) for v in saved.values())
    assert total == pytest.approx(checksum, rel=1e-6, abs=1e-3)


@needs_two_devices
def test_linear_same_checksum_on_devices(out_dir):
    numpy_out, opencl_out = (linear_output(d, out_dir) for d in ("numpy", "opencl"))
    for label in ("checksum", "final loss"):
        assert number_after(label, opencl_out) == pytest.approx(number_after(label, numpy_out), rel=1e-3)


# --- transformer.py ----------------------------------------------------------
TRANSFORMER_ARGS = ("--steps", "20")


@pytest.mark.parametrize("device", DEVICES)
def test_transformer_trains(device):
    output = run_example("transformer.py", device, *TRANSFORMER_ARGS)
    assert number_after("parameters", output) == 6 * (4 * 64 * 64 + 4 * 64 + 2 * 64 * 128 + 128 + 64 + 4 * 64)
    assert math.isfinite(number_after("checksum", output))
    assert len(step_losses(output)) == 1
    assert re.search(r"compile\s+[\d.]+ s\s+run\s+[\d.]+ s\s+[\d.]+ ms/step", output)


@needs_two_devices
def test_transformer_same_checksum_on_devices():
    numpy_out, opencl_out = (run_example("transformer.py", d, *TRANSFORMER_ARGS) for d in ("numpy", "opencl"))
    assert number_after("checksum", opencl_out) == pytest.approx(number_after("checksum", numpy_out), rel=1e-3)


# --- char_lm.py --------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_char_lm_trains_and_samples(device):
    output = run_example("char_lm.py", device, "--steps", "40", "--sample", "30")
    assert_decreasing(step_losses(output))
    sample = output.split("--- sample ---\n", 1)[1].rsplit("\n---\n", 1)[0]
    assert len(sample) == 30, repr(sample)
    assert "final loss" in output


# --- mnist.py ----------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_mnist_trains(device):
    output = run_example("mnist.py", device, "--steps", "40", "--batch", "128")
    assert_decreasing(step_losses(output))
    assert 0.0 <= number_after("test accuracy", output) <= 1.0


@pytest.mark.parametrize("device", [pytest.param(d, marks=pytest.mark.slow) if d != "numpy" else d
                                    for d in DEVICES])
def test_mnist_default_steps_reaches_95_percent(device):
    """Default steps and batch: ~10-40 s on numpy; minutes on PoCL (hence slow there)."""
    output = run_example("mnist.py", device)
    assert number_after("test accuracy", output) >= 0.95


# --- cnn_digits.py -----------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_cnn_digits_trains_with_batchnorm(device):
    """A CNN with BatchNorm2d: the loss falls and the eval forward (running statistics) is
    far above chance (10%) after 60 steps."""
    output = run_example("cnn_digits.py", device, "--steps", "60")
    assert_decreasing(step_losses(output))
    assert number_after("test accuracy", output) >= 0.6


@needs_two_devices
def test_cnn_digits_same_accuracy_on_devices():
    numpy_out, opencl_out = (run_example("cnn_digits.py", d, "--steps", "60") for d in ("numpy", "opencl"))
    assert step_losses(opencl_out) == pytest.approx(step_losses(numpy_out), rel=1e-2, abs=1e-3)


# --- seq2seq.py --------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_seq2seq_trains_with_padding_masks_and_a_schedule(device):
    """Encoder-decoder with key padding masks, ignore_index and warmup-cosine on the device:
    the loss falls, and the printed rate follows the schedule (warmup 6 steps, then cosine
    to 0 at step 60)."""
    output = run_example("seq2seq.py", device, "--steps", "60")
    assert_decreasing(step_losses(output.replace("  lr", "\nlr")))
    rates = [float(r) for r in re.findall(r"lr (\S+)$", output, re.M)]
    assert rates[-1] == pytest.approx(0.0, abs=1e-9) and rates[0] == pytest.approx(
        3e-3 * 0.5 * (1 + math.cos(math.pi * 14 / 54)), rel=5e-3)   # printed to 3 digits
    assert 0.0 <= number_after("token accuracy", output) <= 1.0


@needs_two_devices
def test_seq2seq_same_losses_on_devices():
    numpy_out, opencl_out = (run_example("seq2seq.py", d, "--steps", "60") for d in ("numpy", "opencl"))
    assert step_losses(opencl_out.replace("  lr", "\nlr")) == pytest.approx(
        step_losses(numpy_out.replace("  lr", "\nlr")), rel=1e-2, abs=1e-3)


# --- --show-graph ------------------------------------------------------------
@pytest.mark.parametrize("script, args", [("linear.py", ()), ("transformer.py", ("--layers", "1")),
                                          ("char_lm.py", ("--sample", "1")), ("mnist.py", ())])
def test_show_graph_prints_the_graph(script, args, tmp_path):
    extra = ("--out", str(tmp_path / "p.safetensors")) if script == "linear.py" else ()
    output = run_example(script, "numpy", "--steps", "1", "--show-graph", *args, *extra)
    assert re.search(r"^graph: \d+ nodes, \d+ persistent tensors", output, re.M), output[:500]
    assert re.search(r"= for %\d+ in range\(0, 1, 1\)", output), output[:2000]


# --- mnist_eager.py ----------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_mnist_eager_matches_the_ir_for_version_and_compiles_once(device):
    """The plain Python loop (a read every 20 steps) trains as the ir_for program does, and
    compiles its step once (the other compile is the evaluation)."""
    eager = run_example("mnist_eager.py", device, "--steps", "40", "--batch", "128", "--profile")
    looped = run_example("mnist.py", device, "--steps", "40", "--batch", "128")
    assert_decreasing(step_losses(eager))
    assert step_losses(eager)[-1] == pytest.approx(step_losses(looped)[-1], rel=1e-3)
    assert number_after("test accuracy", eager) == pytest.approx(number_after("test accuracy", looped), abs=1e-3)
    assert "compile cache: 2 compiles, 39 hits" in eager
