"""An exported OpenCL program: its launches written as data, and an executor that runs them.

Export writes what the OpenCL executor prepared at compile time: every distinct kernel
function's source (kernels.cl: the preamble, then each function after a marker line, so
the file also builds as one program), and each launch as its function, sizes and
arguments (the arena, the state buffer, the megakernel tables, int and float values, loop
variables by name). The loader builds that source (from autodiff's kernel cache, or in
groups in parallel, as a compile does), prepares the same launches and runs them through
`OpenCLExecutor`'s device operations and the shared run loop: nothing is rendered again.
"""
from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np

from ..alloc.plan import MemoryPlan
from ..backends.base import feeds_ahead_for, prepare_steps
from ..backends.opencl import OpenCLExecutor, _build_from_source, _cl, _context_and_queue, _Launch, choose_device
from ..backends.opencl_build import BuildProgress, WarmLaunch, build_groups
from ..codegen.build import unique_kernels
from ..codegen.matmul_source import BUILD_OPTIONS
from ..proc.index import Var
from ..proc.ir import KernelCmd, ProcProgram
from .ir_json import from_number, number

MARKER = "// autodiff kernel "


def describe(ex: OpenCLExecutor) -> tuple[dict[str, Any], str, Callable[[KernelCmd], int]]:
    """(the manifest's "opencl" section, kernels.cl, the launch index of each kernel command)."""
    rendered = ex.rendered_program
    singles = rendered.singles
    # an exported loop launches once per iteration: the iterated megakernels stay behind
    names, distinct = unique_kernels([r for _, r in singles] + ex.mega_rendered)
    kernels = ([(r, fn, (0, 0)) for (_, r), fn in zip(singles, names)]
               + list(zip(ex.mega_rendered, names[len(singles):], ex.table_bases)))
    buffers = {id(ex.arena): "arena", id(ex.state): "state", id(ex.table): "table", id(ex.constant_table): "constants"}
    launches = []
    for r, function, bases in kernels:
        global_size, local_size = r.sizes()
        launches.append({"function": function, "global_size": list(global_size), "local_size": list(local_size),
                         "args": [_argument(value, buffers) for value in ex._arguments(r, bases)]})
    single_index = {id(kernel): i for i, (kernel, _) in enumerate(singles)}
    mega_of = rendered.megakernel_of()

    def launch_of(cmd: KernelCmd) -> int:
        mega = mega_of.get(id(cmd))
        return single_index[id(cmd.kernel)] if mega is None else len(singles) + mega
    section = {
        "device": ex.device.name.strip(), "build_options": BUILD_OPTIONS,
        "arena_bytes": ex.arena.size, "state_bytes": ex.state.size,
        "state_offsets": {str(buffer_id): offset for buffer_id, offset in ex.state_offset.items()},
        "table": _read(ex, ex.table, np.int32).tolist(),
        "constants": [number(c) for c in _read(ex, ex.constant_table, np.float32).tolist()],
        "launches": launches,
    }
    source = ex.language.preamble() + "\n" + "".join(f"{MARKER}{name}\n{body}\n\n" for name, body in distinct)
    assert split_source(source) == (ex.language.preamble(), distinct)
    return section, source, launch_of


def made_for_this_device(section: dict[str, Any]) -> bool:
    """Whether the exported launches were prepared for the OpenCL device chosen here (their
    work-group sizes and vector widths are that device's; another one renders kernels.json)."""
    return choose_device().name.strip() == section["device"]


def _argument(value: Any, buffers: dict[int, str]) -> list[Any]:
    if isinstance(value, Var):
        return ["var", value.name, value.extent]
    if id(value) in buffers:
        return ["buffer", buffers[id(value)]]
    for kind in ("int32", "int64", "float32"):
        if isinstance(value, getattr(np, kind)):
            return [kind, number(value.item())]
    raise TypeError(f"export: an OpenCL kernel argument of type {type(value).__name__}")


def _read(ex: OpenCLExecutor, buffer: Any, dtype: type) -> np.ndarray:
    host = np.empty(buffer.size // np.dtype(dtype).itemsize, dtype)
    ex.cl.enqueue_copy(ex.queue, host, buffer, is_blocking=True)
    return host


def split_source(source: str) -> tuple[str, list[tuple[str, str]]]:
    """kernels.cl as (preamble, [(function name, source)]), as describe() wrote it."""
    parts = re.split(rf"^{re.escape(MARKER)}(\S+)\n", source, flags=re.MULTILINE)
    preamble, rest = parts[0], parts[1:]
    return preamble[:-1], [(rest[i], rest[i + 1][:-2]) for i in range(0, len(rest), 2)]


class _Preamble:
    """What the build needs of a language: the preamble, as exported."""

    def __init__(self, text: str) -> None:
        self.text = text

    def preamble(self) -> str:
        return self.text


class ExportedOpenCLExecutor(OpenCLExecutor):
    """OpenCLExecutor's device operations and run loop over launches read from an export.

    `program` holds the buffers and the commands (a kernel command's launch is
    `launch_index[id(cmd)]`; its kernel is not needed here); `plan` the arena offsets."""

    def __init__(self, program: ProcProgram, plan: MemoryPlan, section: dict[str, Any], source: str,
                 launch_index: dict[int, int], disable: frozenset[str]) -> None:
        cl = _cl()
        self.cl, self.program, self.plan = cl, program, plan
        self.device = choose_device()
        self.context, self.queue = _context_and_queue(self.device)
        self._check_memory()
        rw, ro = cl.mem_flags.READ_WRITE, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR
        self.arena = cl.Buffer(self.context, rw, section["arena_bytes"])
        self.state = cl.Buffer(self.context, rw, section["state_bytes"])
        self.state_offset = {int(buffer_id): offset for buffer_id, offset in section["state_offsets"].items()}
        self.table = cl.Buffer(self.context, ro, hostbuf=np.array(section["table"], np.int32))
        constants = [from_number(c) for c in section["constants"]]
        self.constant_table = cl.Buffer(self.context, ro, hostbuf=np.array(constants, np.float32))
        self.feeds_ahead = feeds_ahead_for(program.commands, disable)
        buffers = {"arena": self.arena, "state": self.state, "table": self.table, "constants": self.constant_table}
        launches = section["launches"]
        preamble, kernels = split_source(source)
        warm = {l["function"]: WarmLaunch(l["function"], tuple(l["global_size"]), tuple(l["local_size"]),
                                          [_warm_argument(a, buffers) for a in l["args"]]) for l in launches}
        with BuildProgress() as progress:
            self.built = build_groups(self.context, self.device, _Preamble(preamble), kernels, warm,
                                      section["build_options"], use_cache="kernel_cache" not in disable,
                                      parallel="parallel_build" not in disable,
                                      build=_build_from_source(self.context), failure=cl.RuntimeError,
                                      progress=progress)
        self.build_seconds = dict(self.built.seconds)
        prepared = [self._prepare_launch(launch, buffers) for launch in launches]
        self.steps = prepare_steps(program.commands, lambda cmd: prepared[launch_index[id(cmd)]])
        self.feed_copies: list[Any] = []
        self.held: list[tuple[Any, list[Any]]] = []

    def _prepare_launch(self, launch: dict[str, Any], buffers: dict[str, Any]) -> _Launch:
        function = launch["function"]
        kernel = self.cl.Kernel(self.built.programs[function], function)
        var_args = []
        for position, (kind, *rest) in enumerate(launch["args"]):
            if kind == "var":
                var_args.append((position, Var(rest[0], rest[1])))
                kernel.set_arg(position, np.int32(0))
            else:
                kernel.set_arg(position, buffers[rest[0]] if kind == "buffer" else _scalar(kind, rest[0]))
        return _Launch(kernel, tuple(launch["global_size"]), tuple(launch["local_size"]), var_args)

    def start_profile(self, recorder: Any) -> None:
        raise ValueError("an exported OpenCL program cannot be profiled yet: profile the compiled program instead")


def _scalar(kind: str, value: Any) -> Any:
    return getattr(np, kind)(from_number(value))


def _warm_argument(arg: list[Any], buffers: dict[str, Any]) -> Any:
    kind, *rest = arg
    if kind == "var":
        return np.int32(0)
    if kind == "buffer":
        return ("buffer", buffers[rest[0]].size)
    return _scalar(kind, rest[0])
