"""`load_exported(path)`: run an exported program from its folder, without the model's code.

The manifest gives the buffers, the memory plan and the schedule; the loader rebuilds the
procedural program's commands from them and hands it to a device executor, whose run loop
is the one every compiled program uses (`backends/base.py`, or numpy-proc's):

- on the OpenCL device it was exported from, the exported launches over kernels.cl
  (`export/opencl.py`): nothing is rendered again;
- on any other device that runs the procedural IR (numpy-proc, another OpenCL device, CUDA),
  the kernels of kernels.json, given to that backend's executor as a compile would.

Feeders and Receivers are functions, so they are not in the folder: `run()` takes them by
name. A Feeder may also be given as an array: one value for every call, or one row per call.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..backends.registry import backend
from ..checkpoint import load, save
from ..errors import ExportError, FeederError
from ..frontend.checks import IndexCheck
from ..proc.index import Var
from ..proc.ir import Buffer, FeedCmd, KernelCmd, ProcProgram, ReceiveCmd
from .ir_json import decode_buffer, decode_kernels, decode_plan, decode_schedule
from .writer import FORMAT, KERNELS_CL, KERNELS_JSON, MANIFEST, PARAMS


@dataclass
class _Stored:
    """A persistent tensor's value between runs (what a graph Variable is to a compiled program)."""
    name: str
    value: np.ndarray


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    folder = Path(path)
    if not folder.is_dir():
        raise ExportError(f"no exported program at {folder}: the folder does not exist (write one with ad.export)")
    file = folder / MANIFEST
    if not file.is_file():
        raise ExportError(f"{folder} is not an exported program: it has no {MANIFEST} (write one with ad.export)")
    try:
        manifest = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ExportError(f"{file} is not valid JSON: {err}") from None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != FORMAT:
        raise ExportError(f"{file} has format {found!r}; this autodiff reads {FORMAT!r}: export the program "
                          "again with this version")
    return manifest


class ExportedProgram:
    """An exported program, ready to run: `run(feeders=..., receivers=...)`, then `params`."""

    def __init__(self, path: str | os.PathLike, device: str | None = None,
                 disable: frozenset[str] = frozenset()) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.device = device or self.manifest["device"]
        chosen = backend(self.device)
        if not chosen.takes_proc:
            raise ExportError(f"an exported program runs on a device that runs the procedural IR, not on "
                              f"{self.device}")
        problem = chosen.problem()
        if problem is not None:
            raise ExportError(f"cannot run {self.path} on {self.device}: {problem}")
        env = frozenset(n for n in os.environ.get("AUTODIFF_DISABLE", "").split(",") if n)
        self.disable = frozenset(self.manifest["switches"]) | env | frozenset(disable)
        values = load(self._file(PARAMS))
        self._stored = {p["buffer"]: _Stored(p["key"], values[p["key"]]) for p in self.manifest["parameters"]}
        buffers = {row["id"]: decode_buffer(row, lambda r: self._stored[r["id"]]) for row in self.manifest["buffers"]}
        plan = decode_plan(self.manifest["memory"])
        run_counter = Var(*self.manifest["run_counter"])
        if self.device == "opencl" and "opencl" in self.manifest and _made_here(self.manifest["opencl"]):
            self.executor = self._exported_opencl(buffers, plan, run_counter)
        else:
            kernels = decode_kernels(json.loads(self._file(KERNELS_JSON).read_text()), buffers)
            commands = decode_schedule(self.manifest["schedule"], buffers,
                                       lambda row: KernelCmd(kernels[row["kernel"]]))
            self.program = ProcProgram(commands, list(buffers.values()), run_counter)
            self.executor = chosen.executor(self.program, plan, self.disable)
        self.executor.runs = self.manifest["runs"]

    def _exported_opencl(self, buffers: dict[int, Buffer], plan: Any, run_counter: Var) -> Any:
        from .opencl import ExportedOpenCLExecutor
        launch_index: dict[int, int] = {}

        def kernel_cmd(row: dict[str, Any]) -> KernelCmd:
            cmd = KernelCmd(None)   # the launch is what runs; the kernel's expression is not needed
            launch_index[id(cmd)] = row["launch"]
            return cmd
        commands = decode_schedule(self.manifest["schedule"], buffers, kernel_cmd)
        self.program = ProcProgram(commands, list(buffers.values()), run_counter)
        source = self._file(KERNELS_CL).read_text()
        return ExportedOpenCLExecutor(self.program, plan, self.manifest["opencl"], source, launch_index, self.disable)

    def _file(self, name: str) -> Path:
        file = self.path / name
        if not file.is_file():
            raise ExportError(f"{self.path} lacks {name}: the export is incomplete (write it again with ad.export)")
        return file

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The persistent tensors' values now, by their keys in params.safetensors."""
        return {stored.name: stored.value for stored in self._stored.values()}

    def save_params(self, path: str | os.PathLike) -> None:
        """The persistent tensors as a safetensors checkpoint (`ad.load(path)` reads it)."""
        save(path, self.params)

    def run(self, feeders: Mapping[str, Any] | None = None,
            receivers: Mapping[str, Callable[..., Any] | None] | None = None) -> dict[str, np.ndarray]:
        """Run the program once; returns `params`. Every Feeder and Receiver of the manifest must
        be given by name: a Feeder as a function, or as an array (one value for every call, or
        one row per call); a Receiver as a function, or None to drop its values."""
        fns = self._feeder_functions(dict(feeders or {}))
        sinks = self._receiver_functions(dict(receivers or {}))
        for cmd in self.program.walk():
            if isinstance(cmd, FeedCmd):
                cmd.fn = fns[cmd.name]
            elif isinstance(cmd, ReceiveCmd) and not isinstance(cmd.fn, IndexCheck):
                cmd.fn = sinks[cmd.name]
        self.executor.run()
        return self.params

    def _check_names(self, given: dict[str, Any], what: str, key: str) -> list[dict[str, Any]]:
        declared = self.manifest[key]
        names = [d["name"] for d in declared]
        missing = [n for n in names if n not in given]
        unknown = [n for n in given if n not in names]
        if missing or unknown:
            parts = ([f"no {what} given for {missing}"] if missing else []) + (
                [f"no {what} is named {unknown}"] if unknown else [])
            raise ExportError(f"{self.path}: {'; '.join(parts)}; its {what}s are {names} (pass {key}={{name: ...}})")
        return declared

    def _feeder_functions(self, given: dict[str, Any]) -> dict[str, Callable[[], Any]]:
        return {d["name"]: _feeder(d, given[d["name"]]) for d in self._check_names(given, "Feeder", "feeders")}

    def _receiver_functions(self, given: dict[str, Any]) -> dict[str, Callable[..., Any]]:
        self._check_names(given, "Receiver", "receivers")
        return {name: fn if fn is not None else _ignore for name, fn in given.items()}


def _made_here(section: dict[str, Any]) -> bool:
    from .opencl import made_for_this_device
    return made_for_this_device(section)


def _ignore(*values: Any) -> None:
    return None


def _feeder(declared: dict[str, Any], given: Any) -> Callable[[], Any]:
    """A Feeder's function: as given, or one that returns an array's value (or its rows in turn)."""
    if callable(given):
        return given
    name, shape, calls = declared["name"], tuple(declared["shape"]), declared["calls_per_run"]
    array = np.asarray(given)
    if array.shape == shape:
        return lambda: array
    if array.shape[1:] == shape and len(array) >= calls:
        rows = iter(array)
        return lambda: next(rows)
    raise FeederError(f"Feeder '{name}' was given an array of shape {array.shape}; expected shape {shape} (one "
                      f"value for every call) or ({calls}, *{shape}) (one row for each of its {calls} calls per run)")


def load_exported(path: str | os.PathLike, device: str | None = None,
                  disable: frozenset[str] | set[str] = frozenset()) -> ExportedProgram:
    """The program `ad.export` wrote to `path`, ready to run on `device` (default: the one it was
    exported from): `load_exported(path).run(feeders={"x": fn}, receivers={"loss": fn})`."""
    return ExportedProgram(path, device, frozenset(disable))
