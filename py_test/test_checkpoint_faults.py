"""Checkpoint faults: damaged, foreign or mismatched files raise clear errors and change nothing."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import autodiff as ad
from autodiff import CheckpointError, checkpoint, nn
from autodiff.errors import TraceError
from autodiff.nn.data import DataLoader
from autodiff.nn.optim import Adam

ROOT = Path(__file__).resolve().parent.parent


def _model_and_optim() -> tuple[nn.Module, Adam]:
    """A model and an Adam whose state is not all zeros (so an overwrite would show)."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    opt = Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(5)
    opt.load_state_dict({k: (rng.standard_normal(v.shape).astype(v.dtype) if v.dtype == np.float32
                             else np.array(7, v.dtype)) for k, v in checkpoint.flatten(opt).items()})
    return model, opt


def _values(**objects) -> dict[str, np.ndarray]:
    return checkpoint.flatten(objects)


def _assert_unchanged(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> None:
    assert sorted(before) == sorted(after)
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


def _saved(tmp_path: Path) -> Path:
    """A checkpoint of another model and optimizer (other values than _model_and_optim's)."""
    ad.manual_seed(123)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    path = tmp_path / "run.safetensors"
    checkpoint.save(path, {"model": model, "optim": Adam(model.parameters()), "epoch": np.array(3)})
    return path


# --- 1. truncated or corrupted files -------------------------------------------
@pytest.mark.parametrize("keep", [0, 5, 8, 40, -1])
def test_truncated_file_names_the_path_and_the_damage(tmp_path: Path, keep: int) -> None:
    path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:keep if keep >= 0 else len(data) + keep])
    with pytest.raises(CheckpointError, match="truncated") as info:
        checkpoint.load(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_corrupted_header_names_the_path(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[9] ^= 0xFF   # inside the JSON header
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"checkpoint {path}.*(corrupted|damaged)"):
        checkpoint.load(path)


# --- 2. checksums --------------------------------------------------------------
def test_flipped_payload_byte_names_the_path_and_the_tensor(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01   # the last byte of the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"corrupted: tensor '[\w.]+' has CRC-32") as info:
        checkpoint.load(path)
    assert str(path) in str(info.value)
    model, opt = _model_and_optim()
    before = _values(model=model, optim=opt)
    with pytest.raises(CheckpointError):
        checkpoint.restore(path, model=model, optim=opt)
    _assert_unchanged(before, _values(model=model, optim=opt))


def test_every_tensor_has_a_checksum(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as f:
        metadata, keys = f.metadata(), list(f.keys())
    assert sorted(k[len("crc32:"):] for k in metadata if k.startswith("crc32:")) == sorted(keys)


def test_files_without_checksums_still_load(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    path = tmp_path / "other_tool.safetensors"
    save_file({k: np.array(v) for k, v in model.state_dict().items()}, str(path))   # no metadata at all
    other = nn.Linear(3, 2)
    checkpoint.restore(path, other)
    _assert_unchanged(model.state_dict(), other.state_dict())


# --- 3. all or nothing -----------------------------------------------------------
def test_restore_with_a_missing_optimizer_key_changes_nothing(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    flat = checkpoint.load(path)
    del flat["optim.state.3.exp_avg_sq"]
    save_file(flat, str(path))
    model, opt = _model_and_optim()
    before = _values(model=model, optim=opt)
    with pytest.raises(KeyError, match="state.3.exp_avg_sq") as info:
        checkpoint.restore(path, model=model, optim=opt)
    _assert_unchanged(before, _values(model=model, optim=opt))
    assert str(path) in str(info.value)


def test_restore_with_a_missing_name_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "model_only.safetensors"
    model, opt = _model_and_optim()
    checkpoint.save(path, {"model": nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))})
    before = _values(model=model, optim=opt)
    with pytest.raises(KeyError, match="nothing saved under 'optim'"):
        checkpoint.restore(path, model=model, optim=opt)
    _assert_unchanged(before, _values(model=model, optim=opt))


def test_restore_with_a_shape_mismatch_in_the_last_layer_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "wide.safetensors"
    wide = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 5))
    checkpoint.save(path, {"model": wide, "optim": Adam(wide.parameters())})
    model, opt = _model_and_optim()
    before = _values(model=model, optim=opt)
    with pytest.raises(TraceError, match="shape"):
        checkpoint.restore(path, model=model, optim=opt)
    _assert_unchanged(before, _values(model=model, optim=opt))


def test_restore_rolls_back_objects_loaded_without_a_check(tmp_path: Path) -> None:
    """DataLoaders are loaded directly: when the second fails, the first is put back, and the
    model and optimizer are never written."""
    path = _saved(tmp_path)
    flat = checkpoint.load(path)
    save_file({**flat, "data.batches_drawn": np.array(4, np.int64),
               "data2.batches_drawn": np.array(4, np.int64), "data2.extra": np.array(1)}, str(path))
    model, opt = _model_and_optim()
    loaders = [DataLoader(np.zeros((8, 3), np.float32), np.zeros((8, 2), np.float32), batch_size=2)
               for _ in range(2)]
    before = _values(model=model, optim=opt, data=loaders[0], data2=loaders[1])
    with pytest.raises(KeyError, match="batches_drawn"):
        checkpoint.restore(path, model=model, optim=opt, data=loaders[0], data2=loaders[1])
    _assert_unchanged(before, _values(model=model, optim=opt, data=loaders[0], data2=loaders[1]))


def test_load_state_dict_checks_every_key_before_writing() -> None:
    model, opt = _model_and_optim()
    before = _values(model=model, optim=opt)
    state = model.state_dict()
    state["2.bias"] = np.zeros(5, np.float32)   # the last parameter: the others would be written first
    with pytest.raises(TraceError, match="shape"):
        model.load_state_dict({k: v + 1 for k, v in state.items()})
    optim_state = {k: v + 1 for k, v in checkpoint.flatten(opt).items()}
    optim_state["state.3.exp_avg_sq"] = np.zeros(7, np.float32)
    with pytest.raises(TraceError, match="shape"):
        opt.load_state_dict(optim_state)
    with pytest.raises(KeyError, match="unexpected"):
        opt.load_state_dict({**{k: v + 1 for k, v in checkpoint.flatten(opt).items()}, "nope": np.zeros(1)})
    _assert_unchanged(before, _values(model=model, optim=opt))


# --- 4. foreign formats --------------------------------------------------------
def test_pickle_is_recognised_whatever_its_extension(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"   # the extension lies: the bytes decide
    with open(path, "wb") as f:
        pickle.dump({"weight": np.zeros(3)}, f, protocol=4)
    with pytest.raises(CheckpointError, match="pickle.*torch.load") as info:
        checkpoint.load(path)
    assert str(path) in str(info.value) and "load_state_dict" in str(info.value)


def test_zip_is_recognised_as_torch_save(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"not really")
    with pytest.raises(CheckpointError, match=r"zip archive \(written by torch.save.*torch.load"):
        checkpoint.load(path)


def test_torch_save_file_gets_the_conversion_hint(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(CheckpointError, match="torch.load") as info:
        checkpoint.restore(path, nn.Linear(3, 2))
    # the hint works: torch.load, then load_state_dict
    model = nn.Linear(3, 2)
    model.load_state_dict(torch.load(path, weights_only=True))
    assert "weights_only=True" in str(info.value)


def test_a_header_length_that_looks_like_a_pickle_still_loads(tmp_path: Path) -> None:
    """640 bytes of header start the file with b"\\x80\\x02", a pickle's first bytes: safetensors decides."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode().ljust(640)
    path = tmp_path / "w.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + np.array([1, 2], np.float32).tobytes())
    assert path.read_bytes()[:2] == b"\x80\x02"
    np.testing.assert_array_equal(checkpoint.load(path)["w"], [1, 2])


# --- interrupted saves -----------------------------------------------------------
def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _saved(tmp_path)
    good = path.read_bytes()

    def crash(tensors, filename, metadata=None) -> None:
        Path(filename).write_bytes(b"\x10\x00\x00")   # a few bytes, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, nn.Linear(3, 2))
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]   # no partial file left


# --- 5. examples/linear.py writes into the working directory ---------------------
def test_linear_example_saves_into_the_working_directory(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("AUTODIFF_DEVICE", None)
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "linear.py"), "--device", "numpy",
                           "--steps", "1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(checkpoint.load(tmp_path / "linear.safetensors")) == ["0.bias", "0.weight", "2.bias", "2.weight"]
