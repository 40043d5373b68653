"""GFLOP/s of the generated OpenCL matmul kernels (PoCL, CPU) against numpy.

Usage:
    python benchmarks/bench_matmul_kernel.py [--quick] [--sweep] [--threads N] [--json PATH]

Each case is timed in interleaved rounds (numpy, then the kernel) so that a
noisy neighbour on the machine slows both alike; a round times ``reps``
back-to-back launches followed by one ``queue.finish()`` (as the runtime will
queue kernels), and the table reports the median round. ``--sweep`` also
times the candidate tilings that lost, to keep the tiling rules honest.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
BLAS_SPIN_PAUSE_S = 0.2
CHOSEN = "chosen by choose_tiling"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--threads", type=int, help="threads for both PoCL and numpy's BLAS (default: all cores)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds per case")
    parser.add_argument("--quick", action="store_true", help="skip 2048 and use fewer rounds")
    parser.add_argument("--sweep", action="store_true", help="also time alternative tilings")
    return parser.parse_args()


def configure_threads(threads: int | None) -> None:
    """Must run before numpy and pyopencl are imported: both read these once."""
    # Without a CPU target some PoCL builds emit generic x86-64 code; this one
    # detects the host anyway, and "native" is accepted either way.
    os.environ.setdefault("POCL_CPU_TARGET", "native")
    if threads is not None:
        os.environ["POCL_MAX_PTHREAD_COUNT"] = str(threads)
        for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[variable] = str(threads)


def load_matmul_source() -> ModuleType:
    """The generator, imported only after `configure_threads` (autodiff imports numpy)."""
    sys.path.insert(0, str(REPO))
    from autodiff.codegen import matmul_source
    return matmul_source


@dataclass
class Case:
    label: str
    shape: object  # matmul_source.MatmulShape
    reps: int


@dataclass
class Timing:
    label: str
    layout: str
    tiling: str
    kernel_gflops: float
    numpy_gflops: float
    kernel_us: float
    numpy_us: float
    build_s: float
    first_launch_s: float
    alternatives: dict[str, float] = field(default_factory=dict)


def benchmark_cases(ms: ModuleType, quick: bool) -> list[Case]:
    shape = ms.MatmulShape
    cases = []
    for n in (256, 512, 1024) + (() if quick else (2048,)):
        reps = max(1, int(2e9 // (2 * n**3)))
        cases.append(Case(f"square {n}", shape(n, n, n), reps))
    for n in (512, 1024):
        reps = max(1, int(2e9 // (2 * n**3)))
        cases.append(Case(f"square {n} A@B^T", shape(n, n, n, b_transposed=True), reps))
        cases.append(Case(f"square {n} A^T@B", shape(n, n, n, a_transposed=True), reps))
        cases.append(Case(f"square {n} A^T@B^T", shape(n, n, n, a_transposed=True, b_transposed=True), reps))
    # The transformer's shapes at batch 2, forward and the two backward products.
    cases += [
        Case("2x64 @ 64x64", shape(2, 64, 64), 200),
        Case("2x64 @ 64x128", shape(2, 128, 64), 200),
        Case("128x2 @ 2x64", shape(128, 64, 2), 200),
        Case("2x128 @ (64x128)^T", shape(2, 64, 128, b_transposed=True), 200),
        Case("(2x64)^T @ 2x128", shape(64, 128, 2, a_transposed=True), 200),
        Case("batch 2: 64x64 @ 64x64, B shared", shape(64, 64, 64, batch=2, b_batch_stride=0), 100),
    ]
    return cases


def alternative_tilings(shape, vector_width: int) -> list:
    """Candidates the default rules are measured against in --sweep mode: the autotuner's
    (`autodiff/backends/tuning.candidate_tilings`), so the sweep shows what it would pick."""
    from autodiff.backends.tuning import candidate_tilings
    return candidate_tilings(shape, vector_width)[1:]


@dataclass
class PreparedKernel:
    """A built kernel with its arguments set. It holds the buffers because
    clSetKernelArg does not keep them alive."""

    spec: object  # matmul_source.MatmulKernel
    kernel: object  # pyopencl.Kernel
    buffers: tuple
    queue: object  # pyopencl.CommandQueue
    build_s: float
    first_launch_s: float = 0.0

    def launch(self, reps: int) -> None:
        import pyopencl as cl

        for _ in range(reps):
            cl.enqueue_nd_range_kernel(self.queue, self.kernel, self.spec.global_size, self.spec.local_size)
        self.queue.finish()


class Runner:
    """Holds the OpenCL context and times kernels and numpy on one case."""

    def __init__(self, ms: ModuleType) -> None:
        import numpy as np
        import pyopencl as cl

        self.ms, self.np, self.cl = ms, np, cl
        self.context = cl.Context(cl.get_platforms()[0].get_devices())
        self.queue = cl.CommandQueue(self.context)
        from autodiff.schedule.tiling import device_vector_width
        self.vector_width = device_vector_width(self.context.devices[0].native_vector_width_float)

    def operands(self, shape) -> tuple:
        np = self.np
        rng = np.random.default_rng(0)
        a_dims = (shape.k, shape.m) if shape.a_transposed else (shape.m, shape.k)
        b_dims = (shape.n, shape.k) if shape.b_transposed else (shape.k, shape.n)
        a_count = 1 if shape.a_batch_stride == 0 else shape.batch
        b_count = 1 if shape.b_batch_stride == 0 else shape.batch
        a = rng.standard_normal((a_count, *a_dims), dtype=np.float32)
        b = rng.standard_normal((b_count, *b_dims), dtype=np.float32)
        # Views, not copies: numpy hands BLAS the transposed layout directly.
        a_logical = a.transpose(0, 2, 1) if shape.a_transposed else a
        b_logical = b.transpose(0, 2, 1) if shape.b_transposed else b
        return a, b, a_logical, b_logical

    def prepare(self, shape, tiling) -> PreparedKernel:
        """Build the kernel, launch it once (PoCL compiles the work-group
        function then) and check it against numpy."""
        cl, np = self.cl, self.np
        if tiling is None:
            tiling = self.ms.rule_tiling(shape, self.vector_width)
        spec = self.ms.render_matmul(shape, tiling=tiling)
        start = time.perf_counter()
        program = cl.Program(self.context, spec.source).build(options=spec.build_options)
        build_s = time.perf_counter() - start
        a, b, a_logical, b_logical = self.operands(shape)
        flags = cl.mem_flags
        buffers = (
            cl.Buffer(self.context, flags.READ_WRITE, 4 * shape.batch * shape.m * shape.n),
            cl.Buffer(self.context, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=a),
            cl.Buffer(self.context, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=b),
        )
        kernel = cl.Kernel(program, spec.name)
        kernel.set_args(buffers[0], np.int64(0), buffers[1], np.int64(0), buffers[2], np.int64(0))
        prepared = PreparedKernel(spec, kernel, buffers, self.queue, build_s)
        start = time.perf_counter()
        prepared.launch(1)
        prepared.first_launch_s = time.perf_counter() - start
        result = np.empty((shape.batch, shape.m, shape.n), dtype=np.float32)
        cl.enqueue_copy(self.queue, result, buffers[0])
        expected = np.matmul(a_logical.astype(np.float64), b_logical.astype(np.float64))
        tolerance = 1e-4 * np.sqrt(shape.k) * np.abs(expected).max()
        if not np.allclose(result, expected, rtol=1e-4, atol=tolerance):
            raise AssertionError(f"wrong result for {shape} with {spec.tiling}")
        return prepared

    def numpy_launcher(self, shape) -> Callable[[int], None]:
        np = self.np
        _, _, a_logical, b_logical = self.operands(shape)
        if shape.batch == 1:
            a_logical, b_logical = a_logical[0], b_logical[0]

        def launch(reps: int) -> None:
            for _ in range(reps):
                np.matmul(a_logical, b_logical)

        return launch


def seconds_per_call(launch: Callable[[int], None], reps: int) -> float:
    start = time.perf_counter()
    launch(reps)
    return (time.perf_counter() - start) / reps


def time_case(runner: Runner, case: Case, rounds: int, sweep: bool) -> Timing:
    chosen = runner.prepare(case.shape, None)
    tiling = chosen.spec.tiling
    launch = chosen.launch
    numpy_launch = runner.numpy_launcher(case.shape)
    alternatives = {}
    if sweep:
        for candidate in alternative_tilings(case.shape, runner.vector_width):
            if candidate != tiling:
                alternatives[describe(candidate)] = runner.prepare(case.shape, candidate).launch
    launch(case.reps)
    numpy_launch(case.reps)
    launchers = {CHOSEN: launch, **alternatives}
    times = {name: [] for name in launchers}
    numpy_times = []
    for round_index in range(rounds):
        # Rotate the order so that no tiling is always the one timed first.
        names = list(launchers)
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(seconds_per_call(launchers[name], case.reps))
        numpy_times.append(seconds_per_call(numpy_launch, case.reps))
        # OpenBLAS's threads keep spinning for a while after a call (about
        # 2**28 cycles); without a pause they steal a core from the next kernel.
        time.sleep(BLAS_SPIN_PAUSE_S)
    kernel_times = times.pop(CHOSEN)
    alternative_times = times
    flops = case.shape.flops()
    kernel_s, numpy_s = statistics.median(kernel_times), statistics.median(numpy_times)
    return Timing(
        label=case.label,
        layout=("T" if case.shape.a_transposed else "N") + ("T" if case.shape.b_transposed else "N"),
        tiling=describe(tiling),
        kernel_gflops=flops / kernel_s / 1e9,
        numpy_gflops=flops / numpy_s / 1e9,
        kernel_us=kernel_s * 1e6,
        numpy_us=numpy_s * 1e6,
        build_s=chosen.build_s,
        first_launch_s=chosen.first_launch_s,
        alternatives={name: flops / statistics.median(times) / 1e9 for name, times in alternative_times.items()},
    )


def describe(tiling) -> str:
    text = f"{tiling.strategy} {tiling.rows}x{tiling.cols} f{tiling.vector_width} wg{tiling.local_size[0]}x{tiling.local_size[1]}"
    if tiling.strategy == "packed":
        text += f" kc{tiling.k_chunk}"
    return text + (f" u{tiling.k_unroll}" if tiling.k_unroll > 1 else "")


def print_row(timing: Timing) -> None:
    ratio = timing.kernel_gflops / timing.numpy_gflops
    print(f"{timing.label:34s} {timing.tiling:30s} {timing.kernel_gflops:8.1f} {timing.numpy_gflops:8.1f} "
          f"{ratio:6.2f} {timing.kernel_us:10.1f} {timing.numpy_us:10.1f} "
          f"{timing.build_s:6.2f} {timing.first_launch_s:6.2f}", flush=True)
    for name, gflops in sorted(timing.alternatives.items(), key=lambda item: -item[1]):
        print(f"    alternative {name:30s} {gflops:8.1f} GFLOP/s")


def main() -> None:
    args = parse_args()
    configure_threads(args.threads)
    ms = load_matmul_source()
    runner = Runner(ms)
    device = runner.context.devices[0]
    rounds = 3 if args.quick else args.rounds
    # Other work on the machine slows numpy and the kernels differently: say how much there was.
    print(f"device: {device.name} ({device.max_compute_units} compute units), "
          f"POCL_CPU_TARGET={os.environ.get('POCL_CPU_TARGET')}, threads={args.threads or 'all'}, "
          f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'case':34s} {'tiling':30s} {'kernel':>8s} {'numpy':>8s} {'ratio':>6s} "
          f"{'kernel us':>10s} {'numpy us':>10s} {'build':>6s} {'first':>6s}")
    timings = []
    for case in benchmark_cases(ms, args.quick):
        timing = time_case(runner, case, rounds, args.sweep)
        print_row(timing)
        timings.append(timing)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps([timing.__dict__ for timing in timings], indent=2))


if __name__ == "__main__":
    main()
