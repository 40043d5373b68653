"""Checkpoints in the safetensors format: save a run, resume it with identical losses.

What can be saved is anything with `state_dict()` / `load_state_dict()` (a
Module, an Optimizer, a DataLoader), a persistent Tensor, a numpy array, or a
dict of name -> any of those. Keys in the file:

- `save(path, model)`: the object's own state names (`"0.weight"`, ...);
- `save(path, {"model": model, "optim": opt, "epoch": np.array(3)})`: the
  name, a dot, then the object's state names (`"model.0.weight"`,
  `"optim.exp_avg.0"`); an array or Tensor is stored under its name.

`load(path)` returns these keys and numpy arrays. `restore(path, model)` or
`restore(path, model=model, optim=opt)` loads the values back into the objects
(matching the form `save` was given) for the next `execute()`; every value an
object expects must be in the file.

To resume a run: build the same model and optimizer in a fresh program
(`ad.reset()` or `with ad.Program()`), `restore`, trace the same loop and
execute. Values are read when the program runs, so restoring before or after
tracing the loop are both fine.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
from safetensors.numpy import load_file, save_file

from .frontend.tensor import Tensor

FORMAT = "autodiff.checkpoint/1"


def _state_of(obj: Any, what: str) -> dict[str, np.ndarray]:
    if isinstance(obj, Tensor):
        return {"": obj.numpy()}
    if isinstance(obj, np.ndarray) or np.isscalar(obj):
        return {"": np.asarray(obj)}
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


def save(path: str | os.PathLike, obj: Any) -> None:
    """Write the state of `obj` (an object or a dict of name -> object) to a safetensors file."""
    flat = flatten(obj)
    for key, array in flat.items():
        if array.dtype == np.float64:
            flat[key] = array.astype(np.float32)
        flat[key] = np.array(flat[key], order="C")  # (np.ascontiguousarray makes 0-d arrays 1-d)
    save_file(flat, os.fspath(path), metadata={"format": FORMAT})


def load(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a checkpoint, by key."""
    return dict(load_file(os.fspath(path)))


def _load_into(obj: Any, state: dict[str, np.ndarray], name: str) -> None:
    if isinstance(obj, Tensor):
        if "" not in state:
            raise KeyError(f"checkpoint.restore: no value for {name!r} in the file")
        value = state[""]
        if value.shape != obj.shape:
            raise ValueError(f"checkpoint.restore: {name!r} has shape {obj.shape}, "
                             f"the file has {value.shape}")
        obj._var.value = np.array(value, dtype=obj.dtype)
    elif hasattr(obj, "load_state_dict"):
        obj.load_state_dict(state)
    else:
        raise TypeError(f"checkpoint.restore: cannot restore into {name!r} of type {type(obj).__name__}")


def restore(path: str | os.PathLike, obj: Any = None, /, **objects: Any) -> dict[str, np.ndarray]:
    """Load a checkpoint back into live objects; returns the file's arrays (as `load`).

    `restore(path, model)` for a file written by `save(path, model)`;
    `restore(path, model=model, optim=opt)` for one written by
    `save(path, {"model": model, "optim": opt, ...})` (keys for names not
    given, such as saved plain arrays, are left to the caller in the result).
    """
    if (obj is None) == (not objects):
        raise TypeError("checkpoint.restore: give one object, or objects by the names they were saved under")
    flat = load(path)
    if obj is not None:
        _load_into(obj, flat, "the object")
        return flat
    for name, target in objects.items():
        prefix = name + "."
        state = {key[len(prefix):]: value for key, value in flat.items() if key.startswith(prefix)}
        if name in flat:
            state[""] = flat[name]
        if not state:
            raise KeyError(f"checkpoint.restore: nothing saved under {name!r}; the file has {sorted(flat)}")
        _load_into(target, state, name)
    return flat
