"""The profiler: a profiled run computes what an unprofiled one does, its table counts every
launch, and its trace is valid Chrome trace-event JSON (what Perfetto and chrome://tracing read)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import autodiff as ad
from autodiff import nn
from autodiff.backends import host
from autodiff.ir.ops import Op
from autodiff.profiler import kernel_cost

ROOT = Path(__file__).resolve().parent.parent
STEPS, BATCH = 3, 5


def check_trace(path: Path) -> list[dict[str, Any]]:
    """The trace's events, after checking Chrome's trace-event format: every event has name,
    ph, ts, pid and tid; complete events a positive dur; every thread used is named."""
    trace = json.loads(path.read_text())
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    assert events
    for event in events:
        missing = [key for key in ("name", "ph", "ts", "pid", "tid") if key not in event]
        assert not missing, f"{event} lacks {missing}"
        assert event["ph"] in ("X", "M"), event
        assert isinstance(event["ts"], (int, float)) and event["ts"] >= 0, event
        if event["ph"] == "X":
            assert isinstance(event["dur"], (int, float)) and event["dur"] > 0, event
    named = {e["tid"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    used = {e["tid"] for e in events if e["ph"] == "X"}
    assert used <= named, f"threads without a name: {used - named}"
    return [e for e in events if e["ph"] == "X"]


def trace_training() -> tuple[nn.Module, list[float], dict[str, int]]:
    """A small training program: an ir_for of STEPS steps with a Feeder and a Receiver."""
    data = np.random.default_rng(3).standard_normal((STEPS, BATCH, 4)).astype(np.float32)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = nn.SGD(model.parameters(), lr=0.1)
    losses: list[float] = []
    fed = {"x": 0}

    def feed() -> np.ndarray:
        fed["x"] += 1
        return data[(fed["x"] - 1) % STEPS]

    def step() -> None:
        x = ad.Feeder(feed, (BATCH, 4), name="x")
        loss = (model(x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ad.Receiver(lambda v: losses.append(float(v)), [loss], name="loss")
    ad.ir_for(STEPS, step)
    return model, losses, fed


def test_profiled_run_equals_plain_run_and_traces_every_launch(device: str, tmp_path: Path) -> None:
    model, losses, fed = trace_training()
    compiled = ad.compile(device=device)
    initial = model.state_dict()
    plain = compiled.run()
    assert plain.profile is None
    plain_losses, plain_state = list(losses), model.state_dict()

    model.load_state_dict(initial)
    losses.clear()
    report = compiled.run(profile=True)
    assert losses == plain_losses and len(losses) == STEPS
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, plain_state[name], err_msg=name)
    # the off path is back: no launch wrapper left on the executor, no recorder in host
    overrides = {"launch", "feed", "upload", "download", "_run_kernel", "_run_block", "run_iteration",
                 "run_loop", "wait", "finish", "deliver", "_run_loop", "_run_commands", "_receive"}
    assert not overrides & set(vars(compiled.executor))
    assert host.recorder is None
    assert compiled.run().profile is None

    profile = report.profile
    rows = profile.rows()
    spans = check_trace(report.save_trace(tmp_path / "trace.json"))
    launches = [e for e in spans if e["cat"] in ("kernel", "op")]
    assert sum(r.calls for r in rows) == len(launches) == len(profile.launches())
    for r in rows:
        assert r.calls == sum(1 for e in launches if e["name"] == r.name), r.name
        assert r.total_seconds > 0 and r.mean_seconds == pytest.approx(r.total_seconds / r.calls)
    assert sum(r.share for r in rows) == pytest.approx(1.0)
    if device == "numpy":
        # every node evaluated is an op span, a Feeder or Receiver call, or a loop
        host_calls = [e for e in spans if e["cat"] in ("feeder", "receiver", "loop")]
        assert len(launches) + len(host_calls) == report.ops_executed
        assert {e["name"] for e in launches} <= {op.value for op in Op}
    else:
        assert sum(r.calls for r in rows) == report.kernels_launched > 0
        compiled_names = set(compiled.kernels) if compiled.kernels else {k.name for k in compiled.proc.kernels()}
        assert {e["name"] for e in launches} <= compiled_names
        assert all(e["args"]["nodes"] and e["args"]["bytes"] > 0 for e in launches)
    assert sum(1 for e in spans if e["cat"] == "feeder") == STEPS
    assert sum(1 for e in spans if e["cat"] == "receiver") == STEPS
    assert {"passes", "device build", "run"} <= {e["name"] for e in spans}

    table = report.profile_table()
    assert "calls" in table and rows[0].name in table
    assert str(report.profile) == profile.table()
    summary = str(report)
    assert f"device {device}" in summary and "ms per iteration" in summary and "compile" in summary
    as_dict = json.loads(json.dumps(report.to_dict()))
    assert as_dict["iterations"] == STEPS and len(as_dict["profile"]["kernels"]) == len(rows)


def test_kernels_launched_one_by_one_are_profiled(device: str) -> None:
    """Without megakernels every kernel is its own launch (OpenCL and CUDA map each launch
    back to its kernel): one row per compiled kernel function, STEPS calls each."""
    if device not in ("opencl", "cuda"):
        pytest.skip("the device backends' single-kernel launches")
    trace_training()
    compiled = ad.compile(device=device, disable={"megakernel"})
    report = compiled.run(profile=True)
    rows = report.profile.rows()
    assert {r.calls for r in rows} == {STEPS} and sum(r.calls for r in rows) == report.kernels_launched
    assert {r.name for r in rows} <= set(compiled.kernels)
    assert all(r.nodes for r in rows)


def test_each_outermost_loop_splits_host_and_device_time(device: str) -> None:
    """Two loops (training, then an evaluation loop with a nested loop): per loop its iterations
    and the host, device and wall time of an iteration; every launch and Feeder copy belongs to
    one of them (nothing runs outside the loops but the uploads and downloads), and the device
    and the host each fit in the wall time."""
    if device == "numpy":
        pytest.skip("the numpy device times a loop as one span, with no host/device split")
    model, _, _ = trace_training()
    seen: list[float] = []
    probe = ad.Tensor(np.ones((BATCH, 4), np.float32), name="probe", requires_grad=False)

    def evaluate() -> None:
        ad.ir_for(2, lambda: ad.Receiver(lambda v: seen.append(float(v)), [model(probe).sum()], name="eval"))
    ad.ir_for(3, evaluate)
    report = ad.compile(device=device).run(profile=True)
    profile = report.profile
    loops = profile.loops()
    assert [(t.name, t.iterations) for t in loops] == [("loop 0", STEPS), ("loop 1", 3)] and len(seen) == 6
    for t in loops:
        assert 0 < t.host_seconds < t.wall_seconds, t
        assert 0 < t.device_seconds <= t.wall_seconds, t
        if device == "numpy-proc":   # the host runs the kernels itself: the two take turns
            assert t.host_seconds + t.device_seconds <= t.wall_seconds, t
    assert loops[0].wall_seconds + loops[1].wall_seconds < profile.run_seconds
    in_loops = [s for s in profile.spans if s.category in ("kernel", "copy") and
                not s.name.startswith(("upload ", "download "))]
    # OpenCL may run several iterations per launch: one kernel span per launch, all in the loops
    assert len([s for s in in_loops if s.category == "kernel"]) == report.kernels_launched > 0
    assert sum(t.device_seconds for t in loops) == pytest.approx(sum(s.duration for s in in_loops), rel=1e-9)

    line = (f"loop 0: {STEPS} iterations, host {loops[0].host_ms_per_iteration:.3f} ms/iter, "
            f"device {loops[0].device_ms_per_iteration:.3f} ms/iter, wall {loops[0].wall_ms_per_iteration:.3f} ms/iter")
    assert line in report.profile_table() and line in str(report)
    as_dict = json.loads(json.dumps(report.to_dict()))["profile"]["loops"]
    assert [d["iterations"] for d in as_dict] == [STEPS, 3]
    assert as_dict[1]["wall_ms_per_iteration"] == pytest.approx(loops[1].wall_seconds * 1e3 / 3)


def test_feeder_calls_are_host_spans(tmp_path: Path) -> None:
    """Each Feeder call is one span: STEPS of them, on the host or the feeder thread's track."""
    _, _, fed = trace_training()
    report = ad.execute(device="numpy", profile=True)
    feeders = [s for s in report.profile.spans if s.category == "feeder"]
    assert len(feeders) == fed["x"] == STEPS
    assert all(s.name == "Feeder x" and s.track == "host" for s in feeders)


def test_environment_variable_profiles_and_writes_the_trace(monkeypatch, tmp_path: Path) -> None:
    trace_training()
    path = tmp_path / "env_trace.json"
    monkeypatch.setenv("AUTODIFF_PROFILE", str(path))
    report = ad.execute(device="numpy-proc")
    assert report.profile is not None and report.profile.rows()
    assert check_trace(path)


def test_unprofiled_report_says_how_to_profile() -> None:
    trace_training()
    report = ad.execute(device="numpy")
    assert report.profile is None and "profiled" not in str(report)
    with pytest.raises(ValueError, match="profile=True"):
        report.profile_table()


def test_kernel_cost_of_a_product() -> None:
    """A (M, K) @ (K, N) kernel: 2 M N K operations less the first add of each sum; bytes
    of both operands and the output, each moved once."""
    m, k, n = 3, 7, 5
    x = ad.Tensor(np.ones((m, k), np.float32), name="x")
    w = ad.Tensor(np.ones((k, n), np.float32), name="w")
    ad.Receiver(lambda v: None, [x @ w], name="y")
    compiled = ad.compile(device="numpy-proc")
    buffers = {b.id: b for b in compiled.proc.buffers}
    products = [kn for kn in compiled.proc.kernels() if kn.out.shape == (m, n)]
    assert len(products) == 1
    moved, flops = kernel_cost(products[0], buffers)
    assert flops == (2 * k - 1) * m * n
    assert moved == 4 * (m * k + k * n + m * n)


def test_example_with_profile_writes_a_trace(tmp_path: Path) -> None:
    """examples/linear.py --profile: its usual output, then the table; the trace is valid."""
    trace = tmp_path / "linear_trace.json"
    env = dict(os.environ)
    env.pop("AUTODIFF_DEVICE", None)
    env.pop("AUTODIFF_PROFILE", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])   # this autodiff
    command = [sys.executable, str(ROOT / "examples" / "linear.py"), "--device", "numpy", "--steps", "2",
               "--profile", "--trace", str(trace), "--out", str(tmp_path / "linear.safetensors")]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-4000:]
    assert "checksum" in proc.stdout and "GFLOP/s" in proc.stdout and f"trace saved to {trace}" in proc.stdout
    spans = check_trace(trace)
    assert sum(1 for e in spans if e["name"] == "dot") >= 2 * 2   # two steps, two layers
    assert sum(1 for e in spans if e["cat"] == "receiver") >= 1


@pytest.mark.slow
def test_bench_small_agrees_with_torch_and_jax_and_splits_the_loop(tmp_path: Path) -> None:
    """benchmarks/bench_small.py, tiny, on numpy-proc: the frameworks' final losses agree (it
    exits 1 otherwise) and --profile gives each program's loop split."""
    out = tmp_path / "small.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_small.py"), "--steps", "2", "--features", "16",
               "--device", "numpy-proc", "--profile", "--json", str(out)]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "final losses agree" in proc.stdout and proc.stdout.count("loop 0: 2 iterations") == 2
    rows = json.loads(out.read_text())
    assert {r["program"] for r in rows} == {"mnist", "linear"} and any(r["framework"] == "torch eager" for r in rows)
    assert all(r["ms_per_step"] > 0 and np.isfinite(r["final_loss"]) for r in rows)
    loops = [r["loop"] for r in rows if r["framework"] == "autodiff numpy-proc"]
    assert len(loops) == 2 and all(0 < t["device_seconds"] <= t["wall_seconds"] for t in loops)


@pytest.mark.parametrize("script, args", [("mnist.py", ("--batch", "64")), ("transformer.py", ("--layers", "1")),
                                          ("char_lm.py", ("--sample", "1")), ("cnn_digits.py", ()),
                                          ("seq2seq.py", ())])
def test_every_example_profiles_on_numpy(script: str, args: tuple[str, ...], tmp_path: Path) -> None:
    """Each example with --profile: exit 0, nothing on stderr, the table, a valid trace."""
    trace = tmp_path / "trace.json"
    env = dict(os.environ)
    env.pop("AUTODIFF_DEVICE", None)
    env.pop("AUTODIFF_PROFILE", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    command = [sys.executable, str(ROOT / "examples" / script), "--device", "numpy", "--steps", "2",
               "--profile", "--trace", str(trace), *args]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-4000:]
    assert "GFLOP/s" in proc.stdout and f"trace saved to {trace}" in proc.stdout
    spans = check_trace(trace)
    assert any(e.get("cat") == "receiver" for e in spans)
