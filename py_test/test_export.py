"""Export: a compiled program written to a folder runs in a fresh process without the model's
code (the loader script below imports only autodiff and numpy) and gives the same losses and
parameters as the compiled program, bit for bit on the device it was exported from."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import autodiff as ad
from autodiff import nn
from conftest import available_devices

ROOT = Path(__file__).resolve().parent.parent
EXPORT_DEVICES = [d for d in available_devices() if d in ("numpy-proc", "opencl")]

# the loader: no model code, only the folder, the Feeders' data and the Receivers
LOADER = """
import json, sys
import numpy as np
import autodiff as ad

folder, data, out = sys.argv[1], sys.argv[2], sys.argv[3]
losses = []
program = ad.load_exported(folder)
params = program.run(feeders={"x": np.load(data)}, receivers={"loss": lambda v: losses.append(v.item())})
np.savez(out, losses=np.array(losses, np.float32), executor=type(program.executor).__name__,
         **{"param:" + k: v for k, v in params.items()})
"""


def run_loader(tmp_path: Path, folder: Path, data: np.ndarray, name: str) -> dict[str, np.ndarray]:
    """Run LOADER in a fresh process on `folder`, feeding `data` one row per call."""
    script, data_file, out = tmp_path / "loader.py", tmp_path / f"{name}_x.npy", tmp_path / f"{name}_out.npz"
    script.write_text(LOADER)
    np.save(data_file, data)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script), str(folder), str(data_file), str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as result:
        return {k: result[k] for k in result.files}


def trace_small(xs: np.ndarray, losses: list[float]) -> nn.Module:
    """A Feeder, a loop, a Receiver, dropout (random bits read the run count) and an Adam update."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Dropout(0.25), nn.Linear(4, 2))
    opt = nn.Adam(model.parameters(), lr=0.05)
    rows = iter(xs)

    def step() -> None:
        x = ad.Feeder(lambda: next(rows), xs.shape[1:], name="x")
        loss = (model(x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ad.Receiver(lambda v: losses.append(v.item()), loss, name="loss")
    ad.ir_for(5, step)
    return model


@pytest.mark.parametrize("device", EXPORT_DEVICES)
def test_exported_program_runs_without_the_model_code(device: str, tmp_path: Path) -> None:
    xs = np.random.default_rng(0).standard_normal((10, 4, 3)).astype(np.float32)
    losses: list[float] = []
    model = trace_small(xs, losses)
    compiled = ad.compile(device=device)
    ad.export(tmp_path / "before", compiled, names=model)
    compiled.run()
    first = (list(losses), {k: v.copy() for k, v in model.state_dict().items()})
    ad.export(tmp_path / "after", compiled, names=model)   # a snapshot: values and run count now
    losses.clear()
    compiled.run()

    # the first run from the folder written before it; the second from the one written between
    for folder, rows, (want_losses, want_params) in (("before", xs[:5], first),
                                                    ("after", xs[5:], (losses, model.state_dict()))):
        got = run_loader(tmp_path, tmp_path / folder, rows, folder)
        # on OpenCL the exported launches run over kernels.cl: nothing rendered again
        assert str(got["executor"]) == ("ExportedOpenCLExecutor" if device == "opencl" else "NumpyProcExecutor")
        assert got["losses"].tolist() == np.array(want_losses, np.float32).tolist()
        for key, value in want_params.items():
            np.testing.assert_array_equal(got["param:" + key], value, err_msg=key)
    assert len(set(first[0]) & set(losses)) == 0   # the second run trained on

    manifest = json.loads((tmp_path / "before" / "manifest.json").read_text())
    assert manifest["feeders"] == [{"name": "x", "shape": [4, 3], "dtype": "float32", "calls_per_run": 5}]
    assert manifest["receivers"][0]["name"] == "loss" and manifest["runs"] == 0
    assert json.loads((tmp_path / "after" / "manifest.json").read_text())["runs"] == 1
    assert {"0.weight", "3.bias"} <= {p["key"] for p in manifest["parameters"]}
    assert (tmp_path / "before" / "kernels.cl").exists() == (device == "opencl")


def test_an_opencl_export_runs_on_numpy_proc_and_on_another_opencl_device(tmp_path: Path) -> None:
    """kernels.json holds the procedural kernels, so another device renders or interprets them."""
    if "opencl" not in EXPORT_DEVICES:
        pytest.skip("OpenCL is not among the test devices")
    xs = np.random.default_rng(1).standard_normal((5, 4, 3)).astype(np.float32)
    losses: list[float] = []
    trace_small(xs, losses)
    compiled = ad.compile(device="opencl")
    ad.export(tmp_path, compiled)
    compiled.run()
    got: list[float] = []
    ad.load_exported(tmp_path, device="numpy-proc").run(feeders={"x": xs}, receivers={"loss": got.append})
    np.testing.assert_allclose(np.array(got, np.float32).ravel(), losses, rtol=1e-5, atol=1e-6)
    # launches made for another OpenCL device: its kernels are rendered again from kernels.json
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["opencl"]["device"] = "some other device"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    got.clear()
    program = ad.load_exported(tmp_path)
    program.run(feeders={"x": xs}, receivers={"loss": got.append})
    assert type(program.executor).__name__ == "OpenCLExecutor"
    assert np.array(got, np.float32).ravel().tolist() == np.array(losses, np.float32).tolist()


@pytest.mark.parametrize("device", EXPORT_DEVICES)
def test_exported_reference_transformer_gives_the_same_final_loss(device: str, tmp_path: Path) -> None:
    """The reference transformer (examples/transformer.py's program) from its folder, in a fresh process."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from reference_model import reference_input, trace_reference_step
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    losses: list[float] = []
    model = trace_reference_step(layers=6, steps=3, losses=losses)
    compiled = ad.compile(device=device)
    ad.export(tmp_path / "transformer", compiled, names=model)
    compiled.run()
    got = run_loader(tmp_path, tmp_path / "transformer", np.stack([reference_input()] * 3), "transformer")
    assert got["losses"][-1] == np.float32(losses[-1])
    assert got["losses"].tolist() == np.array(losses, np.float32).tolist()
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(got["param:" + key], value, err_msg=key)


def test_transformer_example_exports(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "transformer.py"), "--device", "numpy-proc",
                           "--steps", "2", "--layers", "1", "--export", str(tmp_path / "program")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    checksum = float(proc.stdout.split("checksum")[1].split()[0])
    seen: list[tuple[int, float]] = []
    params = ad.load_exported(tmp_path / "program").run(
        feeders={"x": np.full((2, 64), 0.3, np.float32)}, receivers={"loss": lambda i, v: seen.append((int(i), v))})
    assert [i for i, _ in seen] == [1] and "layers.0.linear1.weight" in params
    assert sum(float(v.astype(np.float64).sum()) for v in params.values()) == pytest.approx(checksum, abs=1e-6)


def test_index_checks_travel_with_the_program(tmp_path: Path) -> None:
    """Index checks are part of the program, not the user's Receivers: the loader rebuilds them."""
    first, second = nn.Embedding(5, 2), nn.Embedding(3, 2)
    ids = ad.Feeder(lambda: np.zeros(4, np.int32), (4,), ad.int32, name="ids")
    ad.Receiver(lambda v: None, first(ids).sum() + second(ids).sum(), name="total")
    ad.export(tmp_path, device="numpy-proc")
    assert [r["name"] for r in json.loads((tmp_path / "manifest.json").read_text())["receivers"]] == ["total"]
    program = ad.load_exported(tmp_path)
    totals: list[float] = []
    program.run(feeders={"ids": np.array([0, 1, 2, 2], np.int32)}, receivers={"total": totals.append})
    assert len(totals) == 1
    with pytest.raises(ad.IndexOutOfRangeError, match=r"embedding: index 4 is out of range for size 3"):
        program.run(feeders={"ids": np.array([0, 4, 1, 2], np.int32)}, receivers={"total": None})


# --- errors ---------------------------------------------------------------------------

@pytest.fixture
def exported(tmp_path: Path) -> Path:
    trace_small(np.zeros((5, 4, 3), np.float32), [])
    return ad.export(tmp_path / "program", device="numpy-proc")


def test_missing_folder_and_manifest_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ad.ExportError, match="folder does not exist"):
        ad.load_exported(tmp_path / "nowhere")
    with pytest.raises(ad.ExportError, match="has no manifest.json"):
        ad.load_exported(tmp_path)


def test_an_incomplete_export_is_a_clear_error(exported: Path) -> None:
    (exported / "params.safetensors").unlink()
    with pytest.raises(ad.ExportError, match="lacks params.safetensors: the export is incomplete"):
        ad.load_exported(exported)


def test_wrong_format_version_is_a_clear_error(exported: Path) -> None:
    manifest = json.loads((exported / "manifest.json").read_text())
    manifest["format"] = "autodiff.export/0"
    (exported / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ad.ExportError, match=r"format 'autodiff.export/0'; this autodiff reads 'autodiff.export/1'"):
        ad.load_exported(exported)


def test_missing_or_unknown_feeders_and_receivers_are_named(exported: Path) -> None:
    program = ad.load_exported(exported)
    ones = np.ones((4, 3), np.float32)
    with pytest.raises(ad.ExportError, match=r"no Feeder given for \['x'\]"):
        program.run(receivers={"loss": None})
    with pytest.raises(ad.ExportError, match=r"no Feeder is named \['y'\]"):
        program.run(feeders={"x": ones, "y": ones}, receivers={"loss": None})
    with pytest.raises(ad.ExportError, match=r"no Receiver given for \['loss'\]"):
        program.run(feeders={"x": ones})
    program.run(feeders={"x": ones}, receivers={"loss": None})   # None drops a Receiver's values


def test_feeder_values_of_the_wrong_shape_are_clear_errors(exported: Path) -> None:
    program = ad.load_exported(exported)
    with pytest.raises(ad.FeederError, match=r"Feeder 'x' was given an array of shape \(3, 4, 3\); expected shape "
                                             r"\(4, 3\) \(one value for every call\) or \(5, \*\(4, 3\)\)"):
        program.run(feeders={"x": np.zeros((3, 4, 3), np.float32)}, receivers={"loss": None})
    with pytest.raises(ad.FeederError, match=r"Feeder 'x' returned shape \(4, 2\)"):
        program.run(feeders={"x": lambda: np.zeros((4, 2), np.float32)}, receivers={"loss": None})


def test_what_cannot_be_exported_is_a_clear_error(tmp_path: Path) -> None:
    trace_small(np.zeros((5, 4, 3), np.float32), [])
    with pytest.raises(ad.ExportError, match="procedural IR"):
        ad.export(tmp_path, device="numpy")
    ad.reset()
    ad.Receiver(lambda v: None, ad.Feeder(lambda: np.zeros(2, np.float32), (2,), name="x"), name="r")
    ad.Receiver(lambda v: None, ad.Feeder(lambda: np.zeros(3, np.float32), (3,), name="x"), name="s")
    with pytest.raises(ad.ExportError, match="2 different Feeders are named 'x'"):
        ad.export(tmp_path, device="numpy-proc")
