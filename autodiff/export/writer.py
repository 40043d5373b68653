"""`export(path, compiled)`: a compiled program written to a folder that runs without its model code.

    manifest.json        format, device, switches, the run count so far; the Feeders (inputs),
                         Receivers (outputs) and persistent tensors by name; every buffer; the
                         memory plan; the schedule (kernel launches, loops, feeds, receives);
                         on OpenCL every launch's function, sizes and arguments
    kernels.json         the procedural kernels (value expressions): what numpy-proc interprets,
                         and what another device renders its own kernels from
    kernels.cl           the OpenCL source, when exported from OpenCL
    params.safetensors   the persistent tensors' values now (parameters, optimizer state)

The export is a snapshot: the values are those of now, and the run count (which random
streams read) continues from where the compiled program is.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..backends.host import feeds_in_order
from ..checkpoint import save
from ..compiler import CompiledProgram, compile_program
from ..errors import ExportError
from ..frontend.checks import IndexCheck
from ..proc.ir import FeedCmd, KernelCmd, ProcProgram, ReceiveCmd
from .ir_json import encode_buffer, encode_kernels, encode_plan, encode_schedule

FORMAT = "autodiff.export/1"
MANIFEST, KERNELS_JSON, KERNELS_CL, PARAMS = "manifest.json", "kernels.json", "kernels.cl", "params.safetensors"


def export(path: str | os.PathLike, compiled: CompiledProgram | None = None, device: str | None = None,
           names: Any = None, **options: Any) -> Path:
    """Write `compiled` (default: the current program, compiled for `device` with `options`)
    to the folder `path`; `load_exported(path)` runs it in any process. Returns the folder.
    `names`: a Module (its state_dict names) or a dict of name -> persistent Tensor, the keys
    of those tensors in params.safetensors; others keep their own names."""
    if compiled is None:
        compiled = compile_program(None, device, **options)
    proc = compiled.proc
    if proc is None or compiled.plan is None:
        raise ExportError(f"export needs a device that runs the procedural IR (numpy-proc, opencl, cuda); "
                          f"this program was compiled for {compiled.device}")
    commands = [cmd for cmd in proc.walk() if isinstance(cmd, KernelCmd)]
    kernel_number = {id(cmd): k for k, cmd in enumerate(commands)}
    keys = parameter_keys(proc, _given_names(names))
    manifest: dict[str, Any] = {
        "format": FORMAT, "device": compiled.device, "switches": sorted(compiled.disable),
        "runs": int(getattr(compiled.executor, "runs", 0)),
        "feeders": _feeders(proc), "receivers": _receivers(proc),
        "parameters": [{"key": keys[b.id], "buffer": b.id, "shape": list(b.shape), "dtype": b.dtype}
                       for b in proc.buffers if b.kind == "persistent"],
        "run_counter": [proc.run_counter.name, proc.run_counter.extent],
        "buffers": [encode_buffer(b) for b in proc.buffers],
        "memory": encode_plan(compiled.plan),
    }
    launch_of: Callable[[KernelCmd], int] | None = None
    if compiled.device == "opencl":   # the launches as prepared: the loader renders nothing
        from .opencl import describe
        manifest["opencl"], source, launch_of = describe(compiled.executor)

    def kernel_ref(cmd: KernelCmd) -> dict[str, Any]:
        ref = {"kernel": kernel_number[id(cmd)], "name": cmd.kernel.name}
        if launch_of is not None:
            ref["launch"] = launch_of(cmd)
        return ref
    manifest["schedule"] = encode_schedule(proc.commands, kernel_ref)

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    if launch_of is not None:
        (folder / KERNELS_CL).write_text(source)
    (folder / KERNELS_JSON).write_text(json.dumps(encode_kernels([cmd.kernel for cmd in commands]),
                                                  separators=(",", ":"), allow_nan=False))
    save(folder / PARAMS, {keys[b.id]: np.asarray(b.var.value) for b in proc.buffers if b.kind == "persistent"})
    (folder / MANIFEST).write_text(readable_json(manifest) + "\n")
    return folder


def readable_json(value: Any, level: int = 0) -> str:
    """JSON with one line per schedule entry, launch, Feeder, buffer...: containers of records
    are opened, records and lists of numbers are written on one line."""
    opened = (isinstance(value, dict) and any(isinstance(v, dict) or (isinstance(v, list) and any(
        isinstance(x, dict) for x in v)) for v in value.values())) or (
        isinstance(value, list) and any(isinstance(x, dict) for x in value))
    if not opened:
        return json.dumps(value, allow_nan=False)
    pad = " " * (level + 1)
    if isinstance(value, dict):
        items = [f"{pad}{json.dumps(k)}: {readable_json(v, level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * level + "}"
    return "[\n" + ",\n".join(pad + readable_json(v, level + 1) for v in value) + "\n" + " " * level + "]"


def _given_names(names: Any) -> dict[int, str]:
    """id of a persistent tensor's Variable -> its given name."""
    if names is None:
        return {}
    if hasattr(names, "named_parameters"):   # a Module
        names = dict(list(names.named_parameters()) + list(names.named_buffers()))
    if not isinstance(names, dict):
        raise TypeError(f"export: names= takes a Module or a dict of name -> Tensor, not {type(names).__name__}")
    out: dict[int, str] = {}
    for name, tensor in names.items():
        var = getattr(tensor, "_var", None)
        if var is None:
            raise TypeError(f"export: names['{name}'] is not a persistent tensor")
        out.setdefault(id(var), name)
    return out


def parameter_keys(proc: ProcProgram, given: dict[int, str]) -> dict[int, str]:
    """Each persistent buffer's key in params.safetensors: its given name, else its tensor's own
    name, with `#<buffer id>` added where several share one (every Linear has a "weight")."""
    persistent = [b for b in proc.buffers if b.kind == "persistent"]
    names = {b.id: given.get(id(b.var), b.name) for b in persistent}
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    return {i: name if counts[name] == 1 else f"{name}#{i}" for i, name in names.items()}


def _by_name(proc: ProcProgram, kind: type, what: str) -> dict[str, list]:
    """The commands of one kind by name; one name must mean one function and one signature,
    since the loader takes one function per name."""
    named: dict[str, list] = {}
    for cmd in proc.walk():
        if isinstance(cmd, kind) and not isinstance(cmd.fn, IndexCheck):   # index checks travel as data
            named.setdefault(cmd.name, []).append(cmd)
    for name, cmds in named.items():
        if len({id(c.fn) for c in cmds}) > 1 or len({repr(_signature(c)) for c in cmds}) > 1:
            raise ExportError(f"export: {len(cmds)} different {what}s are named '{name}', and the loader takes one "
                              f"function per name; give each its own name ({what}(..., name='...'))")
    return named


def _signature(cmd: Any) -> Any:
    if isinstance(cmd, FeedCmd):
        return (cmd.buffer.shape, cmd.buffer.dtype)
    return (cmd.every, [(b.shape, b.dtype) for b in cmd.buffers])


def _feeders(proc: ProcProgram) -> list[dict[str, Any]]:
    return [{"name": name, "shape": list(cmds[0].buffer.shape), "dtype": cmds[0].buffer.dtype,
             "calls_per_run": sum(1 for _ in _calls(proc, name))}
            for name, cmds in _by_name(proc, FeedCmd, "Feeder").items()]


def _calls(proc: ProcProgram, name: str) -> Iterator[FeedCmd]:
    return (cmd for cmd, _ in feeds_in_order(proc.commands) if cmd.name == name)


def _receivers(proc: ProcProgram) -> list[dict[str, Any]]:
    return [{"name": name, "every": cmds[0].every,
             "values": [{"shape": list(b.shape), "dtype": b.dtype} for b in cmds[0].buffers]}
            for name, cmds in _by_name(proc, ReceiveCmd, "Receiver").items()]
