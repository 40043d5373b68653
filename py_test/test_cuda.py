"""CUDA: the generated sources compile, and the CUDA runtime runs, with and without a GPU.

- nvcc: every kernel of every op row of `op_cases.py`, of the nn modules and of
  training programs is rendered as CUDA C and compiled to PTX for sm_90, many
  programs per nvcc call (about 1 s each). `INFINITY` and `NAN` are undefined
  first, as under NVRTC, which has no system headers.
- emulated: `CUDAExecutor` runs on a stand-in for the few CuPy calls it makes:
  memory is host memory, and the kernels' CUDA source is compiled by g++ as C++
  and run thread by thread on the CPU. This checks the runtime's bookkeeping
  (arena offsets, graph capture and replay, Feeders, Receivers, every=k,
  errors) and the kernels' semantics against numpy-proc on any machine; not
  NVRTC, real asynchrony, or the GPU's memory model.
- GPU: the same programs on the real runtime where CuPy sees a GPU.
"""
from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sys
import types
import zlib
from typing import Any, Callable

import numpy as np
import pytest

import autodiff as ad
import autodiff.nn.functional as F
from autodiff import nn
from autodiff.backends.cuda import CUDAExecutor, cuda_available
from autodiff.errors import KernelBuildError
from autodiff.codegen.build import unique_kernels
from autodiff.codegen.matmul_cuda import TILES, cuda_matmul_fits, cuda_tile, render_cuda_matmul
from autodiff.codegen.matmul_source import Epilogue
from autodiff.codegen.program import render_program
from autodiff.codegen.renderer import CUDALanguage
from autodiff.errors import DeviceMemoryError, ReceiverError
from autodiff.ir.ops import Op
from autodiff.schedule.tiling import MatmulShape
from op_cases import CASES

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from reference_model import trace_reference_step  # noqa: E402

NVCC = shutil.which("nvcc")
GXX = shutil.which("g++")
LANGUAGE = CUDALanguage()

# --- programs ------------------------------------------------------------------------------
# each traces into the current program and adds Receivers that append their values to `got`

Trace = Callable[[list], None]


def _receive(got: list, tensors: list, name: str, every: int = 1) -> None:
    ad.Receiver(lambda *values: got.append((name, [np.array(v) for v in values])), tensors, name=name,
                every=every)


def trace_row(case) -> Trace:
    """An op row: its outputs and, after backward of sum(out * random weights), its inputs' .grad."""
    def trace(got: list) -> None:
        rng = np.random.default_rng(zlib.crc32(case.name.encode()))
        inputs = [ad.Tensor(spec.make(rng), name=f"{case.name}_in{k}") for k, spec in enumerate(case.inputs)]
        out = case.ad_fn(*inputs)
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        loss = None
        for o in outs:
            if o.dtype == "float32":
                term = (o * ad.Tensor(rng.standard_normal(o.shape).astype(np.float32), requires_grad=False)).sum()
                loss = term if loss is None else loss + term
        if loss is not None:
            loss.backward()
        grads = [t.grad for t in inputs if t.dtype == "float32" and t.grad is not None]
        _receive(got, outs + grads, case.name)
    return trace


def trace_all_rows(got: list) -> None:
    """Every op row in one program: one build for all of them."""
    for case in CASES:
        if not case.xfail:
            trace_row(case)(got)


def trace_effects(got: list) -> None:
    """Feeder, Receiver, the loop index, random numbers, in-place updates and a collective
    (test_ops' program)."""
    p = ad.Tensor(np.ones((2, 3), np.float32), name="p")
    calls = [0]

    def feed() -> np.ndarray:   # 0, 1, 2 in every run
        calls[0] += 1
        return np.full((2, 3), float((calls[0] - 1) % 3), np.float32)

    def body(i: ad.Tensor) -> None:
        x = ad.Feeder(feed, shape=(2, 3), name="x")
        noise = ad.random_uniform((2, 3))
        loss = ad.distributed.all_reduce((p * x).sum()) + i.float() + noise.sum()
        loss.backward()
        p.sub_(p.grad * 0.25)
        p.grad = None
        _receive(got, [loss, noise], "loss")

    ad.ir_for(3, body)
    p.assign(p * 2)


def trace_mlp(got: list, steps: int = 4, every: int = 2) -> None:
    """An MLP with cross_entropy trained by Adam on fed minibatches."""
    rng = np.random.default_rng(3)
    xs = rng.standard_normal((steps, 8, 12)).astype(np.float32)
    ys = rng.integers(0, 5, (steps, 8)).astype(np.int32)
    at = {"x": 0, "y": 0}

    def feed(key: str, data: np.ndarray) -> Callable[[], np.ndarray]:
        def next_batch() -> np.ndarray:
            at[key] += 1
            return data[(at[key] - 1) % steps]
        return next_batch

    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5))
    opt = nn.Adam(model.parameters(), lr=0.01)

    def step() -> None:
        x = ad.Feeder(feed("x", xs), (8, 12), name="x")
        y = ad.Feeder(feed("y", ys), (8,), np.int32, name="y")
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        _receive(got, [loss], "loss", every=every)

    ad.ir_for(steps, step)


def trace_replayed_loops(got: list) -> None:
    """Inner loops with no Feeder, Receiver or loop index: captured once as a CUDA Graph."""
    rng = np.random.default_rng(4)
    w = ad.Tensor(rng.standard_normal((6, 4)).astype(np.float32), name="w")
    data = ad.Tensor(rng.standard_normal((5, 6)).astype(np.float32), name="data", requires_grad=False)
    opt = nn.SGD([w], lr=0.05, momentum=0.9)

    def outer(i: ad.Tensor) -> None:
        def inner() -> None:
            loss = ((data @ w).tanh() ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        ad.ir_for(5, inner)
        _receive(got, [(data @ w).sum() + i.float()], "after inner")

    ad.ir_for(3, outer)


def trace_modules(got: list) -> None:
    """Conv2d, Embedding, Dropout and a 2-layer TransformerEncoder, trained one SGD step."""
    rng = np.random.default_rng(5)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    emb = nn.Embedding(7, 8)
    drop = nn.Dropout(0.25)
    encoder = nn.TransformerEncoder(num_layers=2, d_model=8, num_heads=2, ff_dim=16)
    params = conv.parameters() + emb.parameters() + encoder.parameters()
    opt = nn.SGD(params, lr=0.01)
    image = ad.Tensor(rng.standard_normal((2, 2, 5, 5)).astype(np.float32), requires_grad=False)
    tokens = ad.Tensor(rng.integers(0, 7, (2, 4)).astype(np.int32))
    features = conv(image).relu().mean((2, 3))                       # (2, 3)
    sequence = drop(emb(tokens)) + features.sum(1, keepdim=True).unsqueeze(-1)
    loss = encoder(sequence).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    _receive(got, [loss], "modules")


class _LossesInto:
    """The `losses` list of `trace_reference_step`, delivering into `got` instead."""

    def __init__(self, got: list) -> None:
        self.got = got

    def append(self, value: float) -> None:
        self.got.append(("loss", [np.array(value)]))


def trace_reference(got: list) -> None:
    """The benchmarks' reference program: a 2-layer transformer encoder trained by SGD in ir_for."""
    trace_reference_step(layers=2, steps=2, losses=_LossesInto(got))


def trace_reference_tiled(got: list) -> None:
    """The reference transformer at sizes whose products are tiled (batch 4, seq 16: 64 tokens)."""
    trace_reference_step(layers=1, steps=2, d_model=64, heads=4, ff=128, seq=16, batch=4, losses=_LossesInto(got))


def trace_long_reductions(got: list) -> None:
    """Sums and maxima long enough for a block per output (codegen/group_reduce.py), with epilogues."""
    rng = np.random.default_rng(9)
    x = ad.Tensor(rng.standard_normal((6, 3001)).astype(np.float32), name="x")
    w = ad.Tensor(rng.standard_normal((2500, 3)).astype(np.float32), name="w")
    _receive(got, [(x * 2.0).sum(1) + 1.0, x.max(), (w.exp() - 1.0).sum(0) * 0.5, x.abs().sum()], "sums")


PROGRAMS: dict[str, Trace] = {"effects": trace_effects, "mlp_adam_feeders": trace_mlp,
                              "replayed_loops": trace_replayed_loops, "modules": trace_modules,
                              "reference_transformer": trace_reference,
                              "reference_transformer_tiled": trace_reference_tiled,
                              "long_reductions": trace_long_reductions}


def compile_proc(trace: Trace, got: list) -> tuple[ad.Program, Any]:
    """Trace into a fresh program and compile it for numpy-proc (procedural IR + memory plan)."""
    with ad.Program() as program:
        ad.manual_seed(0)
        trace(got)
        compiled = ad.compile(device="numpy-proc")
    return program, compiled


# --- nvcc -------------------------------------------------------------------------------------

def cuda_sources(prefix: str, trace: Trace) -> tuple[list[str], set[Op]]:
    """The distinct CUDA kernels of a program, renamed `prefix_name`, and the ops it traced."""
    program, compiled = compile_proc(trace, [])
    rendered = [r for _, r in render_program(compiled.proc, LANGUAGE, CUDAExecutor.features).singles]
    for r in rendered:
        r.name = f"{prefix}_{r.name}"
    _, kernels = unique_kernels(rendered)
    return [source for _, source in kernels], {node.op for node in program.root.walk()}


def nvcc_file(path: str, sources: list[str]) -> str:
    """All kernels in one translation unit, compiled as NVRTC would see them (no INFINITY/NAN)."""
    for source in sources:
        assert "#include" not in source and "INFINITY" not in source and "NAN" not in source, source
    with open(path, "w") as f:
        f.write("#undef INFINITY\n#undef NAN\n" + LANGUAGE.preamble() + "\n" + "\n\n".join(sources) + "\n")
    return path


def start_nvcc(path: str) -> subprocess.Popen:
    return subprocess.Popen([NVCC, "--ptx", "-arch=sm_90", "-x", "cu", path, "-o", path + ".ptx"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def failing_kernels(path: str, log: str) -> str:
    """The nvcc errors with the kernel each one is in, and that kernel's source."""
    lines = open(path).read().splitlines()
    report = []
    for match in re.finditer(r"\((\d+)\): error[^\n]*", log):
        line = int(match.group(1))
        start = max(n for n in range(line) if lines[n].startswith('extern "C"')) if line > 1 else 0
        end = next((n for n in range(line, len(lines)) if lines[n] == "}"), len(lines) - 1)
        report.append(match.group(0) + "\n" + "\n".join(lines[start:end + 1]))
    return "\n\n".join(report) or log


@pytest.fixture(scope="module")
def nvcc_results(tmp_path_factory) -> dict[str, tuple[int, str, str, list[str]]]:
    """Compile the op rows in one nvcc call and the nn/training programs in another, in parallel."""
    if NVCC is None:
        pytest.skip("nvcc is not installed: the CUDA sources cannot be compiled here")
    folder = tmp_path_factory.mktemp("cuda_sources")
    groups: dict[str, list[str]] = {"op_rows": [], "programs": []}
    covered: set[Op] = set()
    for n, case in enumerate(CASES):
        if case.xfail:
            continue
        sources, ops = cuda_sources(f"row{n}", trace_row(case))
        groups["op_rows"] += sources
        covered |= ops
    for n, (name, trace) in enumerate(PROGRAMS.items()):
        sources, ops = cuda_sources(f"prog{n}", trace)
        groups["programs"] += sources
        covered |= ops
    missing = [op.name for op in Op if op not in covered]
    assert not missing, f"ops no compiled program covers: {missing}"
    jobs = {name: (nvcc_file(str(folder / f"{name}.cu"), sources), sources) for name, sources in groups.items()}
    running = {name: start_nvcc(path) for name, (path, _) in jobs.items()}
    results = {}
    for name, process in running.items():
        log, _ = process.communicate(timeout=300)
        results[name] = (process.returncode, log, jobs[name][0], jobs[name][1])
    return results


@pytest.mark.parametrize("group", ["op_rows", "programs"])
def test_cuda_sources_compile_with_nvcc(nvcc_results, group: str) -> None:
    rc, log, path, sources = nvcc_results[group]
    assert rc == 0, f"nvcc failed on {group}:\n{failing_kernels(path, log)}"
    ptx = open(path + ".ptx").read()
    entries = re.findall(r"\.entry (\w+)\(", ptx)
    names = [name for s in sources for name, _ in KERNEL.findall(s)]
    assert sorted(entries) == sorted(names), "every kernel is an entry point under its own (C) name"


def test_no_kernel_indexes_modulo_zero(nvcc_results) -> None:
    _, log, _, _ = nvcc_results["op_rows"]
    assert "right operand of \"%\" is zero" not in log


# --- the runtime, on an emulated GPU and on a real one -------------------------------------------

def run_against_numpy_proc(trace: Trace, make_executor: Callable[..., Any]) -> Any:
    """Run one compiled program on numpy-proc, then from the same initial values on `make_executor`:
    the Receivers' deliveries and the final persistent values must agree."""
    got: list = []
    program, compiled = compile_proc(trace, got)
    initial = [v.value.copy() for v in program.variables]
    compiled.run()
    want, want_state = list(got), [v.value.copy() for v in program.variables]
    got.clear()
    for v, value in zip(program.variables, initial):
        v.value = value.copy()
    compiled.executor = make_executor(compiled.proc, compiled.plan)
    compiled.run()
    assert [name for name, _ in got] == [name for name, _ in want], "Receivers called in another order"
    for (name, values), (_, expected) in zip(got, want):
        for k, (value, wanted) in enumerate(zip(values, expected)):
            assert value.shape == wanted.shape and value.dtype == wanted.dtype, f"{name} value {k}"
            np.testing.assert_allclose(value, wanted, rtol=1e-3, atol=1e-4, err_msg=f"{name} value {k}")
    for v, wanted in zip(program.variables, want_state):
        np.testing.assert_allclose(v.value, wanted, rtol=1e-3, atol=1e-4, err_msg=f"persistent {v.name}")
    return compiled.executor


class BrokenLanguage(CUDALanguage):
    math = {**CUDALanguage.math, Op.EXP: "no_such_function"}


class BrokenExecutor(CUDAExecutor):
    language = BrokenLanguage()


def check_runtime(make_executor: Callable[..., Any], broken_executor: Callable[..., Any]) -> None:
    """The whole runtime check; `make_executor(proc, plan)` builds a CUDAExecutor."""
    run_against_numpy_proc(trace_all_rows, make_executor)
    run_against_numpy_proc(trace_effects, make_executor)
    run_against_numpy_proc(trace_mlp, make_executor)
    run_against_numpy_proc(trace_modules, make_executor)
    run_against_numpy_proc(trace_reference, make_executor)
    tiled = run_against_numpy_proc(trace_reference_tiled, make_executor)
    assert "__syncthreads" in tiled.source, "tiled products in the program"
    reductions = run_against_numpy_proc(trace_long_reductions, make_executor)
    assert "partial[" in reductions.source, "a block per output"
    executor = run_against_numpy_proc(trace_replayed_loops, make_executor)
    assert executor.graph_launches == 3, "each outer iteration replays its inner loop whole as one graph"
    fed = run_against_numpy_proc(trace_mlp, make_executor)
    assert fed.graph_launches == 4, "the kernels between the Feeders and the Receiver: a graph per iteration"
    plain = run_against_numpy_proc(trace_mlp, lambda proc, plan: make_executor(proc, plan, frozenset({"cuda_graphs"})))
    assert plain.graph_launches == 0, "the switch off: kernel by kernel"

    # a Receiver that raises: the error names it, the device work done so far is kept
    with ad.Program():
        p = ad.Tensor(np.zeros(3, np.float32), name="p")

        def step(i: ad.Tensor) -> None:
            p.assign(p + 1)
            ad.Receiver(lambda v: 1 / 0 if v[0] == 2 else None, [p], name="bad")
        ad.ir_for(4, step)
        compiled = ad.compile(device="numpy-proc")
    compiled.executor = make_executor(compiled.proc, compiled.plan)
    with pytest.raises(ReceiverError, match="bad"):
        compiled.run()
    assert p.numpy()[0] >= 2

    # more memory than the device has: an error before anything runs
    plan = dataclasses.replace(compiled.plan, arena_bytes=1 << 50)
    with pytest.raises(DeviceMemoryError, match=r"needs \d+ bytes of device memory"):
        make_executor(compiled.proc, plan)

    # a kernel that fails to compile: its name, its numbered source, the compiler log
    with ad.Program():
        x = ad.Tensor(np.ones(3, np.float32))
        ad.Receiver(lambda v: None, [x.exp()])
        compiled = ad.compile(device="numpy-proc")
    with pytest.raises(KernelBuildError, match=r"(?s)kernel \w+ failed to build.*no_such_function"):
        broken_executor(compiled.proc, compiled.plan)


@pytest.mark.skipif(not cuda_available(), reason="no CUDA GPU here (or CuPy is not installed: "
                    "pip install -e '.[cuda]')")
def test_cuda_runtime_matches_numpy_proc_on_gpu() -> None:
    check_runtime(CUDAExecutor, BrokenExecutor)


@pytest.mark.skipif(GXX is None, reason="g++ is not installed: the emulated GPU compiles kernels with it")
def test_cuda_runtime_matches_numpy_proc_emulated(monkeypatch, tmp_path) -> None:
    emulated = EmulatedCuPy(str(tmp_path))
    monkeypatch.setitem(sys.modules, "cupy", emulated)
    check_runtime(CUDAExecutor, BrokenExecutor)
    assert emulated.graphs_launched >= 3 + 4 and emulated.captured_launches > 0   # the two programs above, at least


# --- the emulated GPU ----------------------------------------------------------------------------

CPU_PRELUDE = """#include <math.h>
#include <string.h>
#include <pthread.h>
#include <thread>
#include <vector>
struct ad_uint3 { unsigned int x, y, z; };
static ad_uint3 blockIdx, blockDim, gridDim;
static thread_local ad_uint3 threadIdx;
static pthread_barrier_t ad_block_barrier;
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(threads)
#define __shared__ static
#define __syncthreads() pthread_barrier_wait(&ad_block_barrier)
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, sizeof f); return f; }
"""

KERNEL = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(([^)]*)\)')


def kernel_bodies(code: str) -> dict[str, str]:
    """Each kernel's name and its text up to the next kernel."""
    found = list(KERNEL.finditer(code))
    return {m.group(1): code[m.start():found[n + 1].start() if n + 1 < len(found) else len(code)]
            for n, m in enumerate(found)}


def block_launcher(name: str, params: list[str], barriers: bool) -> str:
    """C++ that runs a grid of blocks one after another; a block's threads one after another,
    or, in kernels with barriers, as threads of their own meeting at a pthread barrier
    (`__shared__` arrays are `static`: one copy, which the block's threads share)."""
    args = ", ".join(p.split()[-1].lstrip("*") for p in params)
    head = (f'extern "C" void launch_{name}(unsigned int gx, unsigned int gy, unsigned int gz, '
            f'unsigned int block, {", ".join(params)}) {{\n'
            "    blockDim = {block, 1, 1}; gridDim = {gx, gy, gz};\n"
            "    for (unsigned int z = 0; z < gz; z++) for (unsigned int y = 0; y < gy; y++)\n"
            "    for (unsigned int x = 0; x < gx; x++) {\n"
            "        blockIdx = {x, y, z};\n")
    if not barriers:
        return head + f"        for (unsigned int t = 0; t < block; t++) {{ threadIdx = {{t, 0, 0}}; {name}({args}); }}\n    }}\n}}"
    return head + ("        pthread_barrier_init(&ad_block_barrier, 0, block);\n"
                   "        std::vector<std::thread> threads;\n"
                   "        for (unsigned int t = 0; t < block; t++)\n"
                   f"            threads.emplace_back([=] {{ threadIdx = {{t, 0, 0}}; {name}({args}); }});\n"
                   "        for (std::thread& thread : threads) thread.join();\n"
                   "        pthread_barrier_destroy(&ad_block_barrier);\n    }\n}")


class EmulatedCuPy(types.ModuleType):
    """The CuPy calls CUDAExecutor makes, on the CPU: device memory is host memory, a kernel is its
    CUDA source compiled by g++ and run block by block, thread by thread, in order of the thread id;
    copies and launches run at once, except while a stream captures a graph. With `nccl`,
    `cuda.nccl` is a one-rank NCCL (`FakeNccl`). `log` records, in order, the stream operations
    the collectives' ordering rests on: ("launch", stream, pointer args), ("copy", stream ptr,
    kind, source pointer), ("record", stream, event), ("wait_event", stream, event), ("divide", stream) and
    FakeNccl's calls."""

    def __init__(self, folder: str, memory: int = 1 << 34, nccl: bool = False) -> None:
        super().__init__("cupy")
        self.folder = folder
        self.uint8, self.float32, self.int32 = np.uint8, np.float32, np.int32
        self.current: Any = None                 # the stream of the innermost `with stream:`
        self.graphs_launched = self.captured_launches = 0
        self.log: list[tuple] = []
        emulator = self

        class CompileException(Exception):
            pass

        class OutOfMemoryError(MemoryError):
            pass

        class DeviceArray:
            def __init__(self, array: np.ndarray) -> None:
                self.array = array
                self.data = types.SimpleNamespace(ptr=array.ctypes.data)
                self.size, self.dtype = array.size, array.dtype

            def view(self, dtype) -> "DeviceArray":
                return DeviceArray(self.array.view(dtype))

        class Event:
            def __init__(self) -> None:
                self.queried = False

            @property
            def done(self) -> bool:     # not done when first asked: the Receivers' wait is exercised
                done, self.queried = self.queried, True
                return done

            def synchronize(self) -> None:
                self.queried = True

        class Graph:
            def __init__(self, launches: list) -> None:
                self.launches = launches

            def launch(self, stream=None) -> None:
                """Each captured kernel logged again (as launched on `stream`) and run."""
                emulator.graphs_launched += 1
                for pointers, run in self.launches:
                    emulator.log.append(("launch", stream, pointers))
                    run()

        class Stream:
            def __init__(self, non_blocking: bool = False) -> None:
                self.ptr = id(self)
                self.captured: list | None = None
                self.outer: list = []

            def __enter__(self) -> "Stream":
                self.outer.append(emulator.current)
                emulator.current = self
                return self

            def __exit__(self, *exc) -> None:
                emulator.current = self.outer.pop()

            def begin_capture(self, mode=None) -> None:
                assert self.captured is None, "nested capture"
                self.captured = []

            def end_capture(self) -> Graph:
                graph, self.captured = Graph(self.captured), None
                emulator.captured_launches += len(graph.launches)
                return graph

            def is_capturing(self) -> bool:
                return self.captured is not None

            def record(self) -> Event:
                assert self.captured is None, "an event recorded while capturing"
                event = Event()
                emulator.log.append(("record", self, event))
                return event

            def wait_event(self, event: Event) -> None:
                assert self.captured is None, "an event waited for while capturing"
                emulator.log.append(("wait_event", self, event))

            def synchronize(self) -> None:
                assert self.captured is None, "a capturing stream cannot be synchronized"

        class Device:
            def __init__(self, device_id: int = 0) -> None:
                self.id = device_id
                self.mem_info = (memory, memory)

            def use(self) -> None:
                pass

        def memcpy_async(dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
            assert emulator.current is None or emulator.current.captured is None, "a copy inside a graph"
            emulator.log.append(("copy", stream, kind, src))
            ctypes.memmove(dst, src, nbytes)

        runtime = types.SimpleNamespace(
            getDeviceCount=lambda: 1, getDeviceProperties=lambda i: {"name": b"emulated GPU"},
            memcpyHostToDevice=1, memcpyDeviceToHost=2, memcpyDeviceToDevice=3, memcpyAsync=memcpy_async)
        self.cuda = types.SimpleNamespace(
            runtime=runtime, Device=Device, Stream=Stream, Graph=Graph,
            compiler=types.SimpleNamespace(CompileException=CompileException),
            memory=types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError),
            alloc_pinned_memory=lambda nbytes: bytearray(nbytes))
        self.DeviceArray = DeviceArray
        self.cuda.nccl = FakeNccl(self) if nccl else None   # None: CuPy without NCCL (not the real one)

    def empty(self, size: int, dtype) -> Any:
        return self.DeviceArray(np.full(size, 0xFF, np.uint8).view(dtype) if dtype == np.uint8
                                else np.full(size, np.nan if dtype == np.float32 else -1, dtype))

    def divide(self, a: Any, b: Any, out: Any) -> Any:
        """On the current stream (the collectives' mean)."""
        self.log.append(("divide", self.current))
        np.divide(a.array, b, out=out.array)
        return out

    def RawModule(self, code: str, options: tuple = ()) -> "_EmulatedModule":  # noqa: N802 - CuPy's name
        return _EmulatedModule(self, code)


class _EmulatedModule:
    def __init__(self, emulator: EmulatedCuPy, code: str) -> None:
        self.emulator, self.code, self.library = emulator, code, None
        self.signatures = {name: [p.strip() for p in params.split(",")] for name, params in KERNEL.findall(code)}

    def compile(self) -> None:
        if self.library is not None:
            return
        bodies = kernel_bodies(self.code)
        launchers = [block_launcher(name, params, "__syncthreads" in bodies[name])
                     for name, params in self.signatures.items()]
        text = CPU_PRELUDE + self.code + "\n" + "\n".join(launchers) + "\n"
        digest = hashlib.sha1(text.encode()).hexdigest()[:16]
        source, library = (os.path.join(self.emulator.folder, f"{digest}{ext}") for ext in (".cpp", ".so"))
        with open(source, "w") as f:
            f.write(text)
        done = subprocess.run([GXX, "-O0", "-w", "-shared", "-fPIC", "-pthread", source, "-o", library],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise self.emulator.cuda.compiler.CompileException(done.stderr)
        self.library = ctypes.CDLL(library)

    def get_function(self, name: str) -> Callable[..., None]:
        self.compile()
        launcher = getattr(self.library, f"launch_{name}")
        launcher.argtypes = [ctypes.c_uint] * 4 + [
            ctypes.c_void_p if "*" in p else ctypes.c_float if p.split()[-2] == "float"
            else ctypes.c_int64 if p.split()[-2] == "long" else ctypes.c_int
            for p in self.signatures[name]]
        emulator = self.emulator

        def launch(grid: tuple, block: tuple, args: tuple) -> None:
            values = [a.data.ptr if hasattr(a, "data") and hasattr(a.data, "ptr")
                      else float(a) if isinstance(a, np.floating) else int(a) for a in args]
            gx, gy, gz = tuple(grid) + (1,) * (3 - len(grid))
            assert len(block) == 1 or all(b == 1 for b in block[1:]), "blocks are one-dimensional"
            run = lambda: launcher(gx, gy, gz, block[0], *values)  # noqa: E731
            stream = emulator.current
            pointers = {a.data.ptr for a in args if hasattr(getattr(a, "data", None), "ptr")}
            if stream is not None and stream.captured is not None:
                stream.captured.append((pointers, run))   # logged when the graph is launched
            else:
                emulator.log.append(("launch", stream, pointers))
                run()
        return launch


class FakeNccl(types.SimpleNamespace):
    """`cupy.cuda.nccl` for one rank: a communicator of world size 1 whose calls do what NCCL
    defines for one rank (an all_reduce or broadcast copies send to receive, an all_gather
    copies send to the receive buffer's only share) and are logged on the emulator as
    ("nccl", call, stream ptr, count, datatype, op or root)."""
    NCCL_INT32, NCCL_FLOAT32, NCCL_SUM, NCCL_MAX = 2, 7, 0, 2
    ITEMSIZE = {2: 4, 7: 4}

    def __init__(self, emulator: EmulatedCuPy) -> None:
        super().__init__()
        self.emulator = emulator
        self.communicators: list = []
        fake = self

        class NcclCommunicator:
            def __init__(self, ndev: int, commId: bytes, rank: int) -> None:  # noqa: N803 - CuPy's name
                if not isinstance(commId, bytes):   # as CuPy 14's typed argument
                    raise TypeError(f"Argument 'commId' has incorrect type (expected bytes, got {type(commId)})")
                assert ndev == 1 and rank == 0 and len(commId) == 128, (ndev, rank, len(commId))
                assert commId == fake.get_unique_id(), "the id rank 0 made"
                self.aborted = False
                fake.communicators.append(self)

            def _copy(self, call: str, send: int, recv: int, count: int, datatype: int, extra: Any,
                      stream: int) -> None:
                assert not self.aborted
                fake.emulator.log.append(("nccl", call, stream, count, datatype, extra))
                if send != recv:
                    ctypes.memmove(recv, send, count * fake.ITEMSIZE[datatype])

            def allReduce(self, sendbuf: int, recvbuf: int, count: int, datatype: int, op: int,  # noqa: N802
                          stream: int) -> None:
                self._copy("allReduce", sendbuf, recvbuf, count, datatype, op, stream)

            def broadcast(self, sendbuf: int, recvbuf: int, count: int, datatype: int, root: int,  # noqa: N802
                          stream: int) -> None:
                assert root == 0, "one rank: the root is 0"
                self._copy("broadcast", sendbuf, recvbuf, count, datatype, root, stream)

            def allGather(self, sendbuf: int, recvbuf: int, count: int, datatype: int,  # noqa: N802
                          stream: int) -> None:
                self._copy("allGather", sendbuf, recvbuf, count, datatype, None, stream)

            def abort(self) -> None:
                self.aborted = True

        self.NcclCommunicator = NcclCommunicator

    @staticmethod
    def get_unique_id() -> bytes:
        """CuPy 14's: bytes (py_test/nccl_worker.py's fake has the tuple of earlier CuPy)."""
        return bytes(range(64, 192))


# --- the tiled products, kernel by kernel on the emulated GPU -----------------------------------

def _stored(logical: np.ndarray, transposed: bool, lead: int) -> np.ndarray:
    """One batch's operand as it is stored: rows (of the transpose when `transposed`) `lead` apart."""
    rows = logical.T if transposed else logical
    out = np.full((rows.shape[0], lead), np.nan, np.float32)   # the gap between rows is never read
    out[:, :rows.shape[1]] = rows
    return out.ravel()


@pytest.mark.skipif(GXX is None, reason="g++ is not installed: the emulated GPU compiles kernels with it")
@pytest.mark.parametrize("tile", TILES, ids=lambda t: f"{t.block_m}x{t.block_n}x{t.block_k}")
def test_cuda_tiled_matmul_every_layout_emulated(tile, tmp_path) -> None:
    """Each tile, both operands plain and transposed, rows farther apart than packed, a batch
    that broadcasts B, edges that the tile does not divide, an epilogue reading m, n and b:
    against numpy; C's elements outside the product are left as they were."""
    emulated = EmulatedCuPy(str(tmp_path))
    rng = np.random.default_rng(7)
    m, n, k, batch = 37, 45, 19, 2
    for a_t, b_t in [(False, False), (True, False), (False, True), (True, True)]:
        a = rng.standard_normal((batch, m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        a_lead, b_lead = (m if a_t else k) + 3, (k if b_t else n) + 2
        a_rows = [_stored(a[i], a_t, a_lead) for i in range(batch)]
        shape = MatmulShape(m, n, k, batch, a_t, b_t, a_batch_stride=a_rows[0].size, b_batch_stride=0,
                            a_lead=a_lead, b_lead=b_lead)
        kernel = render_cuda_matmul(shape, Epilogue("acc * 2.0f + (float)(n - m) + 100.0f * b"), "product",
                                    tile)
        module = emulated.RawModule(LANGUAGE.preamble() + kernel.source)
        c = np.full(5 + batch * m * n + 5, -7.0, np.float32)
        a_data = np.concatenate([np.zeros(3, np.float32)] + a_rows)
        b_data = np.concatenate([np.zeros(1, np.float32), _stored(b, b_t, b_lead)])
        grid = tuple(g // s for g, s in zip(kernel.global_size, kernel.local_size))
        module.get_function("product")(grid, kernel.local_size, (
            emulated.DeviceArray(c), np.int64(5), emulated.DeviceArray(a_data), np.int64(3),
            emulated.DeviceArray(b_data), np.int64(1)))
        rows, cols = np.arange(m)[:, None], np.arange(n)[None, :]
        want = (a @ b) * 2 + (cols - rows) + 100.0 * np.arange(batch)[:, None, None]
        np.testing.assert_allclose(c[5:-5].reshape(batch, m, n), want, rtol=1e-5, atol=1e-4,
                                   err_msg=f"A transposed {a_t}, B transposed {b_t}")
        assert (c[:5] == -7).all() and (c[-5:] == -7).all(), "written outside C"


def test_cuda_tile_fills_the_multiprocessors() -> None:
    big = MatmulShape(4096, 4096, 64)
    assert cuda_tile(big, 132) == TILES[0]                       # 1,024 blocks of 128 x 128
    assert cuda_tile(MatmulShape(1024, 1024, 8192), 132) == TILES[1]   # 64 blocks of 128; 256 of 64
    assert cuda_tile(MatmulShape(64, 64, 64), 132) == TILES[-1]  # nothing fills it: the smallest
    assert not cuda_matmul_fits(MatmulShape(4, 4, 4, batch=70_000))
