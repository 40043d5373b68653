"""autodiff's kernel binary cache, parallel builds and quiet builds.

The cache is filled by a background worker and read by later processes, so the
end-to-end tests run the program in subprocesses with their own AUTODIFF_CACHE_DIR.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import autodiff as ad
from autodiff.backends import kernel_cache, opencl_build
from autodiff.backends.opencl import opencl_available

ROOT = Path(__file__).resolve().parent.parent
needs_opencl = pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")

# a small training program: forward, backward and an SGD update in a loop; prints what it
# computed and how the device build went, as JSON
PROGRAM = """
import json, sys
import numpy as np
import autodiff as ad
from autodiff.backends import opencl_build

disable = set(sys.argv[1].split(",")) - {""}
rng = np.random.default_rng(0)
w = ad.Tensor(rng.standard_normal((16, 8)).astype(np.float32), name="w")
data = rng.standard_normal((4, 16)).astype(np.float32)
losses = []
def step():
    x = ad.Feeder(lambda: data, shape=data.shape, name="x")
    loss = (x @ w).tanh().exp().sum()
    w.grad = None
    loss.backward()
    w.sub_(w.grad * 0.01)
    ad.Receiver(lambda v: losses.append(float(v)), [loss], name="loss")
ad.ir_for(3, step)
compiled = ad.compile(device="opencl", disable=disable)
compiled.run()
opencl_build.finish_storing()
built = compiled.executor.built
print(json.dumps({"losses": losses, "w": w.numpy().tolist(), "groups": built.groups, "cached": built.cached}))
"""


def run_program(cache: Path, disable: str = "") -> dict:
    env = dict(os.environ, AUTODIFF_CACHE_DIR=str(cache))
    env.pop("AUTODIFF_DISABLE", None)
    proc = subprocess.run([sys.executable, "-c", PROGRAM, disable], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr == "", f"a successful build and run wrote to stderr:\n{proc.stderr}"
    return json.loads(proc.stdout)


@needs_opencl
def test_a_second_process_loads_every_program_from_the_cache_and_damaged_entries_are_rebuilt(tmp_path, monkeypatch):
    first = run_program(tmp_path)
    assert first["cached"] == 0 and first["groups"] >= 1
    entries = sorted(tmp_path.glob("*.bin"))
    assert entries, "nothing was stored"
    second = run_program(tmp_path)
    assert second["cached"] == second["groups"]
    assert second["losses"] == first["losses"] and second["w"] == first["w"]   # the same binary: bit-equal
    # a flipped payload byte fails the checksum: the entry is dropped and the program rebuilt
    for entry in sorted(tmp_path.glob("*.bin")):
        data = bytearray(entry.read_bytes())
        data[-10] ^= 0xFF
        entry.write_bytes(bytes(data))
    third = run_program(tmp_path)
    assert third["cached"] == 0 and third["losses"] == first["losses"]
    # a well-formed entry whose payload is not a binary of this device: rebuilt, never a crash
    monkeypatch.setenv("AUTODIFF_CACHE_DIR", str(tmp_path))
    for entry in sorted(tmp_path.glob("*.bin")):
        kernel_cache.store(entry.stem, b"not a program binary")
    fourth = run_program(tmp_path)
    assert fourth["cached"] == 0 and fourth["losses"] == first["losses"]


@needs_opencl
def test_switched_off_the_cache_is_neither_read_nor_written(tmp_path):
    result = run_program(tmp_path, "kernel_cache")
    assert result["cached"] == 0
    assert not list(tmp_path.glob("*.bin")) or all(p.read_bytes().endswith(b"builds")
                                                    for p in tmp_path.glob("*.bin"))   # only the device probe


def test_entries_round_trip_and_damaged_ones_read_as_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTODIFF_CACHE_DIR", str(tmp_path))
    key = kernel_cache.entry_key("source", "options")
    assert kernel_cache.entry_key("sourceo", "ptions") != key        # parts are length-prefixed
    assert kernel_cache.load(key) is None
    kernel_cache.store(key, b"payload" * 100)
    assert kernel_cache.load(key) == b"payload" * 100
    path = tmp_path / (key + kernel_cache.SUFFIX)
    path.write_bytes(path.read_bytes()[:-5])                         # truncated
    assert kernel_cache.load(key) is None and not path.exists()
    path.write_bytes(b"garbage")                                     # not a cache file at all
    assert kernel_cache.load(key) is None and not path.exists()


def test_pruning_drops_the_least_recently_used_and_clear_empties(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTODIFF_CACHE_DIR", str(tmp_path))
    keys = [kernel_cache.entry_key(str(n)) for n in range(4)]
    for age, key in enumerate(keys):
        kernel_cache.store(key, bytes(1000))
        os.utime(tmp_path / (key + kernel_cache.SUFFIX), (1000 + age, 1000 + age))
    kernel_cache.load(keys[0])                                       # used now: kept
    kernel_cache.prune(limit=2 * 1100)
    assert [kernel_cache.load(k) is not None for k in keys] == [True, False, False, True]
    assert kernel_cache.clear() == 2 and kernel_cache.entries() == []
    out = subprocess.run([sys.executable, "-m", "autodiff.backends.kernel_cache", "info"], cwd=ROOT,
                         env=dict(os.environ), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and re.search(r"0 entries", out.stdout), out


def test_groups_have_about_equal_source_and_do_not_depend_on_order_of_sizes():
    kernels = [(f"k{n}", "x" * size) for n, size in enumerate([50, 10, 40, 30, 20, 60])]
    groups = opencl_build.split(kernels, 3)
    assert sorted(sum(len(body) for _, body in g) for g in groups) == [70, 70, 70]
    for group in groups:                                             # program order kept in each group
        assert [name for name, _ in group] == sorted((name for name, _ in group), key=lambda n: int(n[1:]))
    assert opencl_build.group_count([10_000] * 3, cores=8) == 1      # small programs: one group
    assert opencl_build.group_count([40_000] * 5, cores=2) == 2
    assert opencl_build.group_count([40_000] * 5, cores=1) == 1
    assert opencl_build.group_count([150_000, 40_000, 40_000], cores=8) == 1   # one kernel dominates


def _mlp_program(seed: int) -> tuple[list, np.ndarray]:
    rng = np.random.default_rng(seed)
    w1 = ad.Tensor(rng.standard_normal((32, 64)).astype(np.float32) * 0.1, name="w1")
    w2 = ad.Tensor(rng.standard_normal((64, 8)).astype(np.float32) * 0.1, name="w2")
    data = rng.standard_normal((16, 32)).astype(np.float32)
    losses: list[float] = []

    def step():
        x = ad.Feeder(lambda: data, shape=data.shape, name="x")
        loss = ad.nn.functional.log_softmax((x @ w1).relu() @ w2, -1).sum()
        for w in (w1, w2):
            w.grad = None
        loss.backward()
        for w in (w1, w2):
            w.sub_(w.grad * 0.01)
        ad.Receiver(lambda v: losses.append(float(v)), [loss], name="loss")
    ad.ir_for(3, step)
    return losses, w2


@needs_opencl
@pytest.mark.parametrize("disable", [set(), {"parallel_build"}], ids=["parallel", "in-process"])
def test_programs_built_by_worker_processes_compute_what_the_numpy_device_does(disable, monkeypatch, tmp_path):
    monkeypatch.setenv("AUTODIFF_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(opencl_build, "GROUP_CHARS", 1)               # every kernel its own group
    monkeypatch.setattr(opencl_build, "available_cores", lambda: 3)
    results = {}
    for device in ("numpy", "opencl"):
        ad.reset()
        losses, w2 = _mlp_program(0)
        compiled = ad.compile(device=device, disable=disable | {"megakernel"})   # several kernels
        compiled.run()
        results[device] = (losses, w2.numpy())
        if device == "opencl":
            built = compiled.executor.built
            if disable:
                assert (built.groups, built.workers) == (1, 0)
            else:
                assert built.groups >= 2 and built.workers == built.groups
    opencl_build.finish_storing()
    np.testing.assert_allclose(results["opencl"][0], results["numpy"][0], rtol=1e-4)
    np.testing.assert_allclose(results["opencl"][1], results["numpy"][1], rtol=1e-4, atol=1e-6)


@needs_opencl
def test_build_seconds_are_reported_by_part():
    ad.reset()
    _mlp_program(1)
    compiled = ad.compile(device="opencl", disable={"kernel_cache"})
    parts = [k for k in compiled.stage_seconds if k.startswith("device build: ")]
    assert {"device build: render", "device build: build", "device build: first launches"} <= set(parts)
    assert sum(compiled.stage_seconds[k] for k in parts) <= compiled.stage_seconds["device build"] + 1e-3


def test_readme_ten_lines_run_quietly_on_every_device():
    """README's first Python block runs with nothing on stderr, on each device here."""
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    devices = ["numpy", "numpy-proc"] + (["opencl"] if opencl_available() else [])
    for device in devices:
        env = dict(os.environ, AUTODIFF_DEVICE=device)
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stderr == "", f"{device}: {proc.stderr}"
        assert len(proc.stdout.splitlines()) >= 3, proc.stdout   # two losses, then w


@needs_opencl
@pytest.mark.parametrize("broken", ["no interpreter", "worker dies"])
def test_a_worker_that_cannot_start_or_dies_leaves_the_build_to_this_process(broken, monkeypatch, tmp_path):
    monkeypatch.setenv("AUTODIFF_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(opencl_build, "GROUP_CHARS", 1)
    monkeypatch.setattr(opencl_build, "available_cores", lambda: 3)
    if broken == "no interpreter":
        monkeypatch.setattr(opencl_build.sys, "executable", str(tmp_path / "no-such-python"))
    else:
        monkeypatch.setattr(opencl_build, "WORKER", str(tmp_path / "no-such-worker.py"))
    ad.reset()
    losses, w2 = _mlp_program(2)
    ad.compile(device="opencl", disable={"megakernel"}).run()
    got = (list(losses), w2.numpy())
    ad.reset()
    losses, w2 = _mlp_program(2)
    ad.execute(device="numpy")
    np.testing.assert_allclose(got[0], losses, rtol=1e-4)
    np.testing.assert_allclose(got[1], w2.numpy(), rtol=1e-4, atol=1e-6)
