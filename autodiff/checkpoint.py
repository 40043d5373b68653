"""Checkpoints in the safetensors format: save a run, resume it with identical losses.

What can be saved is anything with `state_dict()` / `load_state_dict()` (a
Module, an Optimizer, a DataLoader), a persistent Tensor, a numpy array, or a
dict of name -> any of those. Keys in the file:

- `save(path, model)`: the object's own state names (`"0.weight"`, ...);
- `save(path, {"model": model, "optim": opt, "epoch": np.array(3)})`: the
  name, a dot, then the object's state names (`"model.0.weight"`,
  `"optim.state.0.exp_avg"`: an optimizer's state tensors as `state.<parameter
  index>.<name>`, its hyper-parameters not); an array or Tensor is stored under its name.

`load(path)` returns these keys and numpy arrays. `restore(path, model)` or
`restore(path, model=model, optim=opt)` loads the values back into the objects
(matching the form `save` was given) for the next `execute()`; every value an
object expects must be in the file.

To resume a run: build the same model and optimizer in a fresh program
(`ad.reset()` or `with ad.Program()`), `restore`, trace the same loop and
execute. Values are read when the program runs, so restoring before or after
tracing the loop are both fine.

Safety: `save` stores a CRC-32 of each tensor's bytes in the file's metadata
and writes through a temporary file renamed over `path` (an interrupted save
keeps the previous checkpoint). `load` raises `CheckpointError` (a ValueError)
naming the path for a truncated or corrupted file, a tensor whose checksum
differs, or a file that is not safetensors (a torch.save pickle or zip); files
without checksums load unchecked. `restore` checks the file and every object's
keys and shapes before writing anything: after any error all values are as
they were. `to_torch(state_dict)` converts a state dict for torch's
`load_state_dict`.
"""
from __future__ import annotations

import json
import os
import zlib
from typing import Any, Callable, Mapping

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from . import comm
from .errors import CheckpointError, TraceError
from .frontend.tensor import Tensor

FORMAT = "autodiff.checkpoint/1"
CHECKSUM_PREFIX = "crc32:"   # metadata key prefix: "crc32:<tensor key>" -> 8 hex digits


def _state_of(obj: Any, what: str) -> dict[str, np.ndarray]:
    if isinstance(obj, Tensor):
        return {"": obj.numpy()}
    if isinstance(obj, np.ndarray) or np.isscalar(obj):
        return {"": np.asarray(obj)}
    if hasattr(obj, "_checkpoint_state"):   # an Optimizer: its nested state_dict, flat
        return obj._checkpoint_state()
    if hasattr(obj, "state_dict"):
        return {k: np.asarray(v) for k, v in obj.state_dict().items()}
    raise TypeError(f"checkpoint: cannot save {what} of type {type(obj).__name__}; expected a Module, "
                    "an Optimizer, a DataLoader, a persistent Tensor, an array, or a dict of them")


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix and key else prefix or key


def flatten(obj: Any) -> dict[str, np.ndarray]:
    """The arrays `save` writes for `obj`, by key (see the module docstring)."""
    if isinstance(obj, Mapping):
        flat: dict[str, np.ndarray] = {}
        for name, value in obj.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"checkpoint: dict keys must be non-empty strings, got {name!r}")
            for key, array in _state_of(value, repr(name)).items():
                flat[_join(name, key)] = array
        return flat
    state = _state_of(obj, "the object")
    if "" in state:
        raise TypeError("checkpoint: a bare array or Tensor needs a name: save(path, {'name': value})")
    return state


def _crc32(array: np.ndarray) -> str:
    """The CRC-32 of the bytes safetensors stores for `array` (C order, little-endian), as 8 hex digits."""
    stored = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).reshape(-1)
    return f"{zlib.crc32(stored.view(np.uint8)):08x}"


def save(path: str | os.PathLike, obj: Any) -> None:
    """Write the state of `obj` (an object or a dict of name -> object) to a safetensors file.

    The metadata holds a CRC-32 per tensor (`crc32:<key>`), checked by `load`. The file is
    written next to `path` and then renamed over it, so an interrupted save leaves the
    previous checkpoint intact instead of a truncated one.

    Under data parallelism (autodiff.distributed) rank 0 writes the file and every rank
    returns once it is written, so that every rank may `load` it next (the ranks hold the
    same state: DistributedDataParallel keeps them equal).
    """
    if comm.rank() == 0:
        _save(path, obj)
    comm.barrier()


def _save(path: str | os.PathLike, obj: Any) -> None:
    flat = flatten(obj)
    for key, array in flat.items():
        if array.dtype == np.float64:
            flat[key] = array.astype(np.float32)
        flat[key] = np.array(flat[key], order="C")  # (np.ascontiguousarray makes 0-d arrays 1-d)
    metadata = {"format": FORMAT, **{CHECKSUM_PREFIX + key: _crc32(array) for key, array in flat.items()}}
    target = os.fspath(path)
    partial = f"{target}.partial-{os.getpid()}"
    try:
        save_file(flat, partial, metadata=metadata)
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())   # the bytes are on disk before the rename makes them the checkpoint
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


# The first bytes of formats people pass by mistake: torch.save writes a zip archive (since
# PyTorch 1.6) or a bare pickle (before, or with _use_new_zipfile_serialization=False).
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def _torch_hint(path: str) -> str:
    return ("autodiff does not unpickle files (that can run arbitrary code). Convert it with torch: "
            f"`state = torch.load({path!r}, weights_only=True)`, then `model.load_state_dict(state)`; "
            "or save it as safetensors once (`safetensors.torch.save_file(state, 'model.safetensors')`) "
            "and use checkpoint.load / restore on that file")


def _foreign_format(head: bytes, path: str) -> str | None:
    """What the file is, from its first bytes, when it is a known format other than safetensors."""
    if head[:4] in _ZIP_MAGIC:
        return f"a zip archive (written by torch.save, or numpy's savez), not safetensors: {_torch_hint(path)}"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:   # PROTO opcode, protocols 2-5
        return f"a Python pickle (torch.save's legacy format?), not safetensors: {_torch_hint(path)}"
    if head.startswith(b"\x93NUMPY"):
        return "a numpy .npy file, not safetensors: read it with np.load"
    return None


def _what_is_wrong(path: str, err: Exception) -> str:
    """Why safetensors could not read `path`, in words (its own messages are terse)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"the file has only {size} bytes, less than the 8-byte header length: it is truncated or empty"
        header_bytes = int.from_bytes(head, "little")
        if 8 + header_bytes > size:
            return (f"the header says it is {header_bytes} bytes but the file has only {size}: "
                    "it is truncated, or not a safetensors file")
        try:
            header = json.loads(f.read(header_bytes))
            end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return f"the header is not valid safetensors JSON: the file is corrupted ({err})"
    if 8 + header_bytes + end != size:
        return (f"the tensors need {8 + header_bytes + end} bytes but the file has {size}: "
                "it is truncated (an interrupted save or copy?) or corrupted")
    return f"the file is damaged or not safetensors ({err})"


def _read(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The arrays and metadata of a safetensors file, or a CheckpointError saying what the file is."""
    try:   # a missing file raises FileNotFoundError, which names the path
        with safe_open(path, framework="numpy") as f:
            metadata = f.metadata() or {}
            arrays = {key: f.get_tensor(key) for key in f.keys()}
    except SafetensorError as err:
        # Magic bytes are only looked at once safetensors failed: a valid file's 8-byte header
        # length can start like a pickle (640 is b"\x80\x02\0\0\0\0\0\0").
        with open(path, "rb") as f:
            foreign = _foreign_format(f.read(8), path)
        what = f"is {foreign}" if foreign else f"cannot be read: {_what_is_wrong(path, err)}"
        raise CheckpointError(f"checkpoint {path} {what}") from err
    return arrays, metadata


def load(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a checkpoint, by key; each is checked against its saved CRC-32.

    Raises CheckpointError (naming the path) for a truncated or corrupted file, a tensor whose
    bytes differ from its checksum, or a file that is not safetensors (such as torch.save's
    pickles). Files without checksums (older ones, or from other tools) load unchecked.
    """
    name = os.fspath(path)
    arrays, metadata = _read(name)
    for key, expected in metadata.items():
        if not key.startswith(CHECKSUM_PREFIX):
            continue
        tensor = key[len(CHECKSUM_PREFIX):]
        if tensor not in arrays:
            raise CheckpointError(f"checkpoint {name} is corrupted: it has a checksum for tensor "
                                  f"{tensor!r} but no such tensor")
        actual = _crc32(arrays[tensor])
        if actual != expected:
            raise CheckpointError(f"checkpoint {name} is corrupted: tensor {tensor!r} has CRC-32 {actual}, "
                                  f"saved as {expected} (its bytes changed after saving)")
    return arrays


def _prepare(obj: Any, state: dict[str, np.ndarray], name: str) -> Callable[[], None] | None:
    """Check `state` for `obj` and return the function that writes it, or None when `obj` can
    only be loaded directly (a load_state_dict without the check-first `_prepare_load`)."""
    if isinstance(obj, Tensor):
        if "" not in state:
            raise KeyError(f"no value for {name!r} in the file")
        if state[""].shape != obj.shape:
            raise ValueError(f"{name!r} has shape {obj.shape}, the file has {state[''].shape}")
        var, value = obj._var, np.array(state[""], dtype=obj.dtype)

        def write() -> None:
            var.value = value
        return write
    if hasattr(obj, "_prepare_load"):   # Module, Optimizer
        return obj._prepare_load(state)
    if hasattr(obj, "load_state_dict"):   # DataLoader, user objects
        return None
    raise TypeError(f"cannot restore into {name!r} of type {type(obj).__name__}")


def _restore_all(targets: list[tuple[str, Any, dict[str, np.ndarray]]]) -> None:
    """Load every (name, object, state) or none: all are checked before any is written."""
    checked: list[Callable[[], None]] = []
    direct: list[tuple[Any, dict[str, np.ndarray]]] = []
    for name, obj, state in targets:
        write = _prepare(obj, state, name)
        if write is None:
            direct.append((obj, state))
        else:
            checked.append(write)
    # Objects without a separate check can fail half way: load them first, and put back the
    # ones already loaded if a later one fails, before anything checked is written.
    done: list[tuple[Any, dict[str, np.ndarray]]] = []
    try:
        for obj, state in direct:
            before = obj.state_dict()
            obj.load_state_dict(state)
            done.append((obj, before))
    except Exception:
        for obj, before in reversed(done):
            obj.load_state_dict(before)
        raise
    for write in checked:
        write()


def restore(path: str | os.PathLike, obj: Any = None, /, **objects: Any) -> dict[str, np.ndarray]:
    """Load a checkpoint back into live objects; returns the file's arrays (as `load`).

    `restore(path, model)` for a file written by `save(path, model)`;
    `restore(path, model=model, optim=opt)` for one written by
    `save(path, {"model": model, "optim": opt, ...})` (keys for names not
    given, such as saved plain arrays, are left to the caller in the result).

    All or nothing: the file is read and checked, and every object's keys and
    shapes are checked, before any value is written; after an error every
    object keeps the values it had.
    """
    if (obj is None) == (not objects):
        raise TypeError("checkpoint.restore: give one object, or objects by the names they were saved under")
    flat = load(path)
    if obj is not None:
        targets = [("the object", obj, flat)]
    else:
        targets = []
        for name, target in objects.items():
            prefix = name + "."
            state = {key[len(prefix):]: value for key, value in flat.items() if key.startswith(prefix)}
            if name in flat:
                state[""] = flat[name]
            if not state:
                raise KeyError(f"checkpoint.restore({os.fspath(path)}): nothing saved under {name!r}; "
                               f"the file has {sorted(flat)}")
            targets.append((name, target, state))
    try:
        _restore_all(targets)
    except (KeyError, ValueError, TypeError) as err:
        if type(err) not in (KeyError, ValueError, TypeError, TraceError):
            raise
        # the same class, with the file named: which checkpoint did not fit the objects
        message = err.args[0] if err.args else ""
        raise type(err)(f"checkpoint.restore({os.fspath(path)}): {message}") from err
    return flat


def to_torch(state: Any) -> dict[str, Any]:
    """A state dict (or an object with `state_dict()`, such as a Module) as torch tensors, by key.

    torch's `load_state_dict` rejects numpy arrays: `torch_model.load_state_dict(to_torch(model))`.
    The values are copied. The other way needs no conversion: `Module.load_state_dict` takes
    torch tensors.
    """
    try:
        import torch
    except ImportError as err:
        raise ImportError("checkpoint.to_torch needs torch (pip install torch)") from err
    if hasattr(state, "state_dict"):
        state = state.state_dict()

    def convert(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {key: convert(item) for key, item in value.items()}
        if isinstance(value, np.ndarray):
            # np.array copies: torch.from_numpy shares memory and warns on read-only arrays
            return torch.from_numpy(np.array(value))
        return value
    if "state" in state and "param_groups" in state:   # an optimizer's: hyper-parameters stay Python values
        return {"state": convert(state["state"]), "param_groups": state["param_groups"]}
    return {key: torch.from_numpy(np.array(value)) for key, value in state.items()}
