"""The matmul autotuner: time a few tilings of one product on the device, keep the fastest.

The tiling rules (`schedule/tiling.choose_tiling`) were measured on a few CPUs; a device
they were not measured on may run another register block, vector width or panel faster.
For every tiled product of a program the tuner can build a handful of candidate tilings
(`candidate_tilings`) as one OpenCL program, run each on random operands of the product's
shape and layout, check that each gives the rule's numbers, and time them in interleaved
rounds. The winner is stored on disk, keyed by the device (platform, device and driver
versions) and the product's shape and layout, so a product is searched once per device.

    AUTODIFF_TUNE=0   rules only (the stored results are not read)
    AUTODIFF_TUNE=1   default: a stored result where there is one, else the rule
    AUTODIFF_TUNE=2   search every product without a stored result, and store it
    AUTODIFF_DISABLE=autotune   the same as 0 (the suite agrees either way)
    python -m autodiff.tune script.py [args]   runs a script at level 2 (tunes it ahead)

Results live in `tuning.json` in the kernel cache's folder (`AUTODIFF_CACHE_DIR`). A file
that cannot be read or parsed counts as empty, never a crash; entries are written through a
temporary file and a rename. The epilogue (bias, activation, update) does not take part
in the key: it costs the same under every tiling.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from ..codegen.matmul_source import check_tiling, render_matmul
from ..schedule.tiling import (DOT, OUTER, PACKED, VECTOR_WIDTHS, MatmulShape, Tiling, device_vector_width,
                               rule_tiling)
from . import kernel_cache
from .opencl_build import quiet

FILE_NAME = "tuning.json"
VERSION = 1
ROUNDS = 5
"""Interleaved timing rounds per candidate; the median round counts."""
ROUND_SECONDS = 2e-3
"""Launches per round are chosen so a round lasts about this long."""
MARGIN = 0.03
"""A candidate replaces the rule only when it is faster by more than this fraction
(timings on a shared CPU vary by a few percent)."""


def tune_level(disable: frozenset[str] = frozenset()) -> int:
    if "autotune" in disable:
        return 0
    text = os.environ.get("AUTODIFF_TUNE", "1")
    if text not in ("0", "1", "2"):
        raise ValueError(f"AUTODIFF_TUNE must be 0, 1 or 2, got {text!r}")
    return int(text)


def tuning_path() -> Path:
    return kernel_cache.cache_dir() / FILE_NAME


def shape_key(shape: MatmulShape) -> str:
    return json.dumps(asdict(shape), sort_keys=True)


def read_results() -> dict[str, dict[str, dict]]:
    """{device key: {shape key: entry}}; an unreadable or foreign file reads as empty."""
    try:
        data = json.loads(tuning_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("devices"), dict):
        return {}
    return data["devices"]


def write_result(device_key: str, key: str, entry: dict) -> None:
    """Merge one entry into the file (read again first: another process may have added
    some); a file that cannot be written is skipped: it is only a cache."""
    devices = read_results()
    devices.setdefault(device_key, {})[key] = entry
    path = tuning_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(handle, "w") as out:
            json.dump({"version": VERSION, "devices": devices}, out, indent=1, sort_keys=True)
        os.replace(temporary, path)
    except OSError:
        pass


def clear_results() -> bool:
    try:
        tuning_path().unlink()
        return True
    except OSError:
        return False


def tiling_from(entry: dict) -> Tiling | None:
    """The stored tiling, or None where the entry is not a valid one."""
    try:
        fields = dict(entry["tiling"])
        fields["local_size"] = tuple(fields["local_size"])
        tiling = Tiling(**fields)
    except (KeyError, TypeError, ValueError):
        return None
    return tiling if tiling.vector_width in VECTOR_WIDTHS else None


def renderable(shape: MatmulShape, tiling: Tiling | None) -> Tiling | None:
    """The tiling where the generator can render it for the shape, else None (a stored entry
    edited by hand, or written by a version whose generator allowed more)."""
    if tiling is None:
        return None
    try:
        check_tiling(shape, tiling)
    except ValueError:
        return None
    return tiling


def candidate_tilings(shape: MatmulShape, vector_width: int) -> list[Tiling]:
    """The rule's tiling first, then a small space around it: register blocks of 2-8 rows
    by 1-4 vectors, the device's vector width and half of it, B's panel in local memory or
    read in place; for A @ B^T dot-product blocks of 1-4 x 2-4 outputs and B^T's panel
    transposed into local memory."""
    rule = rule_tiling(shape, vector_width)
    widths = sorted({vector_width, max(VECTOR_WIDTHS[0], vector_width // 2)}, reverse=True)

    def block(rows: int, vectors: int, w: int) -> tuple[int, int, int]:
        """Rows and columns of a register block of `rows` x `vectors` vectors cut to the
        product, and how many blocks of rows the product has."""
        rows = min(rows, shape.m)
        return rows, w * min(vectors, max(1, math.ceil(shape.n / w))), math.ceil(shape.m / rows)

    found = [rule]
    if rule.strategy == DOT:
        for w in widths:
            for rows, cols in ((2, 4), (4, 2), (3, 3), (1, 4), (4, 4), (2, 2)):
                r, c = min(rows, shape.m), min(cols, shape.n)
                found.append(Tiling(DOT, r, c, (max(1, min(8, math.ceil(shape.m / r))), 1), vector_width=w))
        # B^T's panel transposed into local memory, then outer products: on machine F 1.5x
        # the dot products on some of the larger model's shapes, slower on others
        for rows, vectors in ((8, 1), (8, 2), (4, 2)):
            rows, cols, blocks = block(rows, vectors, vector_width)
            for group in (8, 16):
                found.append(Tiling(PACKED, rows, cols, (max(1, min(group, blocks)), 1), k_unroll=4,
                                    vector_width=vector_width))
    else:
        for w in widths:
            for rows, vectors in ((6, 2), (4, 2), (8, 1), (4, 4), (2, 4), (6, 1), (8, 2)):
                rows, cols, blocks = block(rows, vectors, w)
                found.append(Tiling(OUTER, rows, cols, (max(1, min(8, blocks)), 1), k_unroll=4, vector_width=w))
                if blocks > 1:
                    found.append(Tiling(PACKED, rows, cols, (min(16, blocks), 1), k_unroll=4, vector_width=w))
    return list(dict.fromkeys(found))   # each once, in order


class Tuner:
    """Chooses the tiling of every product of one OpenCL device (see the module docstring).
    `choose(shape)` is what code generation calls; `searched` counts the searches run."""

    def __init__(self, context: Any, queue: Any, device_key: str, native_float_width: int, level: int) -> None:
        self.context, self.queue = context, queue
        self.device_key = device_key
        self.vector_width = device_vector_width(native_float_width)
        self.level = level
        self.stored = read_results().get(device_key, {}) if level >= 1 else {}
        self.chosen: dict[str, Tiling] = {}
        self.searched = 0

    def rule(self, shape: MatmulShape) -> Tiling:
        return rule_tiling(shape, self.vector_width)

    def choose(self, shape: MatmulShape) -> Tiling:
        key = shape_key(shape)
        if key not in self.chosen:
            tiling = renderable(shape, tiling_from(self.stored[key])) if key in self.stored else None
            if tiling is None and self.level >= 2:
                with quiet([]):   # compiler output of the candidates' builds: not the user's
                    tiling, entry = self.search(shape)
                write_result(self.device_key, key, entry)
            self.chosen[key] = tiling or self.rule(shape)
        return self.chosen[key]

    def _build(self, specs: list) -> dict[str, Any]:
        """{kernel name: built program}: all candidates as one program, or, where that fails
        on this device, each alone, leaving out those that do not build."""
        import pyopencl as cl
        options = specs[0].build_options
        try:
            program = cl.Program(self.context, "\n".join(s.source for s in specs)).build(options=options)
            return {spec.name: program for spec in specs}
        except cl.Error:
            pass
        built = {}
        for spec in specs:
            try:
                built[spec.name] = cl.Program(self.context, spec.source).build(options=options)
            except cl.Error:
                continue
        return built

    def search(self, shape: MatmulShape) -> tuple[Tiling, dict]:
        """Time every candidate; the fastest that gives the rule's numbers, with the
        timings for the record."""
        import numpy as np
        import pyopencl as cl
        self.searched += 1
        candidates = candidate_tilings(shape, self.vector_width)
        specs = [render_matmul(shape, tiling=t, name=f"tune{i}") for i, t in enumerate(candidates)]
        programs = self._build(specs)
        rng = np.random.default_rng(0)
        flags = cl.mem_flags
        a = rng.standard_normal(shape.operand_elements("a"), dtype=np.float32)
        b = rng.standard_normal(shape.operand_elements("b"), dtype=np.float32)
        a_buffer = cl.Buffer(self.context, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=a)
        b_buffer = cl.Buffer(self.context, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=b)
        outputs = shape.batch * shape.m * shape.n
        c_buffer = cl.Buffer(self.context, flags.READ_WRITE, 4 * outputs)
        launchers: list[Callable[[int], None]] = []
        reference = None
        kept: list[int] = []
        for index, spec in enumerate(specs):
            if spec.name not in programs:
                continue   # it did not build on this device
            kernel = cl.Kernel(programs[spec.name], spec.name)
            kernel.set_args(c_buffer, np.int64(0), a_buffer, np.int64(0), b_buffer, np.int64(0))

            def launch(reps: int, kernel: Any = kernel, spec: Any = spec) -> None:
                for _ in range(reps):
                    cl.enqueue_nd_range_kernel(self.queue, kernel, spec.global_size, spec.local_size)
                self.queue.finish()
            try:
                launch(1)   # PoCL builds the work-group function at the first launch
            except cl.Error:
                continue    # a limit of this device (a work-group too large, say)
            result = np.empty(outputs, np.float32)
            cl.enqueue_copy(self.queue, result, c_buffer)
            if reference is None and index != 0:
                break       # the rule itself did not run: nothing to compare with
            if reference is None:
                reference = result
                tolerance = 1e-4 * math.sqrt(shape.k) * max(1.0, float(np.abs(reference).max()))
            elif not np.allclose(result, reference, rtol=1e-4, atol=tolerance):
                continue   # never chosen: it does not compute the product here
            kept.append(index)
            launchers.append(launch)
        if not launchers:
            return candidates[0], {"tiling": asdict(candidates[0]), "candidates": {}}
        start = time.perf_counter()
        launchers[0](1)
        reps = max(1, min(1000, int(ROUND_SECONDS / max(time.perf_counter() - start, 1e-6))))
        times: list[list[float]] = [[] for _ in launchers]
        for round_index in range(ROUNDS):
            order = list(range(len(launchers)))
            shift = round_index % len(order)
            for position in order[shift:] + order[:shift]:
                start = time.perf_counter()
                launchers[position](reps)
                times[position].append((time.perf_counter() - start) / reps)
        medians = [statistics.median(t) for t in times]
        best = min(range(len(medians)), key=medians.__getitem__)
        if medians[best] > medians[0] * (1 - MARGIN):
            best = 0   # the rule, unless clearly beaten
        winner = candidates[kept[best]]
        entry = {"tiling": asdict(winner), "seconds": medians[best], "rule_seconds": medians[0],
                 "candidates": {str(candidates[kept[i]]): medians[i] for i in range(len(kept))}}
        return winner, entry
