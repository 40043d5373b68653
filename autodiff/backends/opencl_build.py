"""Building a program's OpenCL kernels: in groups, from autodiff's cache, in parallel, quietly.

1. The distinct kernel functions are cut into groups of about equal source size, one per
   core for a large program (`group_count`), else one group. A group is one OpenCL program
   (the preamble and its functions) and one cache entry.
2. A group whose binary is in autodiff's kernel cache (`kernel_cache.py`) is loaded (~10 ms;
   PoCL's binary carries the work-group functions generated at the first launches too).
3. The other groups: with two or more, worker processes (`opencl_worker.py`) build them and
   launch each kernel once, in parallel, filling PoCL's own disk cache; this process then
   builds each from source, which PoCL answers from that cache. With one, this process
   builds it. (PoCL compiles under a process-wide lock, so threads would not help.)
4. A worker at the lowest priority stores the new groups' binaries for the next process: PoCL
   builds every kernel again to hand out a binary, as long as the first build, so nothing
   waits for it. It starts when the program's first run ends, or when this process exits
   (a storer beside a run measured up to 1.5x slower steps on 2 cores); one at a time.

Nothing reaches the terminal: compiler output is kept in `BuiltKernels.log` (logged at debug
level on the "autodiff.build" logger), and a failing build raises KernelBuildError naming the
kernel with its numbered source and the log.
"""
from __future__ import annotations

import atexit
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ..codegen.build import build_sources, program_source
from ..codegen.renderer import CStyleLanguage
from . import kernel_cache

log = logging.getLogger("autodiff.build")

GROUP_CHARS = 30_000
"""Source characters per group at least: below it a worker process (~0.3 s to start, the
preamble built once more) costs more than the build it takes over. Measured: a kernel
function of ~9,000 characters takes ~0.4 s to build and first launch on PoCL 3.1."""

WORKER_MEMORY_LIMIT = 1 << 30
"""Bytes of buffers a worker may allocate for its warm-up launches; a larger program is
built in this process and not cached (a worker would need its memory a second time)."""

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "opencl_worker.py")

_storing: list[subprocess.Popen] = []     # workers still storing binaries
_to_store: list[bytes] = []               # storing jobs waiting for a run to end (or the exit)


@dataclass
class WarmLaunch:
    """One launch of a kernel on zeroed buffers: PoCL generates its work-group function then."""
    function: str
    global_size: tuple[int, ...]
    local_size: tuple[int, ...] | None
    args: list[Any]     # numpy scalars, or ("buffer", bytes)


@dataclass
class Group:
    kernels: list[tuple[str, str]]    # (function name, source)
    source: str
    launches: list[WarmLaunch]
    key: str


@dataclass
class BuiltKernels:
    programs: dict[str, Any]          # function name -> built cl.Program
    source: str                       # every group's source, one after the other
    seconds: dict[str, float] = field(default_factory=dict)
    groups: int = 0
    cached: int = 0                   # groups loaded from autodiff's cache
    workers: int = 0                  # worker processes that built groups
    log: str = ""


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def group_count(sizes: list[int], cores: int) -> int:
    """Groups for kernels of these source sizes: at most one per core, each of GROUP_CHARS or
    more, and no more than the largest kernel fits into (a group holding it alone is the
    critical path: splitting the rest further only adds processes)."""
    if not sizes:
        return 1
    total = sum(sizes)
    return max(1, min(cores, len(sizes), total // GROUP_CHARS, total // max(sizes)))


def split(kernels: list[tuple[str, str]], count: int) -> list[list[tuple[str, str]]]:
    """`count` groups of about equal source size (largest first into the lightest group), each
    in program order: the same kernels always give the same groups."""
    load = [0] * count
    member = {}
    for index in sorted(range(len(kernels)), key=lambda i: (-len(kernels[i][1]), i)):
        target = load.index(min(load))
        member[index] = target
        load[target] += len(kernels[index][1])
    return [[k for i, k in enumerate(kernels) if member[i] == g] for g in range(count)]


def device_identity(device: Any, options: str) -> list[str]:
    platform = device.platform
    return [platform.name, platform.version, device.name, device.version, device.driver_version, options,
            os.environ.get("POCL_CPU_TARGET", "")]


def plan_groups(language: CStyleLanguage, kernels: list[tuple[str, str]], launches: dict[str, WarmLaunch],
                identity: list[str], cores: int) -> list[Group]:
    groups = []
    for members in split(kernels, group_count([len(body) for _, body in kernels], cores)):
        source = program_source(language, [body for _, body in members])
        warm = [launches[name] for name, _ in members]
        sizes = [f"{w.function} {w.global_size} {w.local_size}" for w in warm]
        groups.append(Group(members, source, warm, kernel_cache.entry_key(*identity, source, *sizes)))
    return groups


SHOW_PROGRESS_AFTER = 2.0
"""Seconds a build runs before a progress line appears (on a terminal only)."""


class BuildProgress:
    """A line on stderr, "autodiff: building kernels, 3 of 7 programs done, 5 s", redrawn every
    half second once a build has run `SHOW_PROGRESS_AFTER` seconds, and erased at the end.
    Only when stderr is a terminal (never in tests or logs); AUTODIFF_PROGRESS=0 turns it off.
    It writes to its own copy of file descriptor 2, which `quiet` leaves alone."""

    def __init__(self) -> None:
        self.done = self.total = 0
        self.started = time.perf_counter()
        self.enabled = os.environ.get("AUTODIFF_PROGRESS", "1") != "0" and sys.stderr.isatty()
        self.shown = False
        self.finished = threading.Event()

    def __call__(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def __enter__(self) -> "BuildProgress":
        if self.enabled:
            self.out = os.fdopen(os.dup(2), "w")
            self.thread = threading.Thread(target=self._draw, daemon=True)
            self.thread.start()
        return self

    def _draw(self) -> None:
        while not self.finished.wait(0.5):
            elapsed = time.perf_counter() - self.started
            if elapsed >= SHOW_PROGRESS_AFTER:
                self.shown = True
                self.out.write(f"\rautodiff: building kernels, {self.done} of {self.total} programs done, "
                               f"{elapsed:.0f} s ")
                self.out.flush()

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.finished.set()
            self.thread.join()
            if self.shown:
                self.out.write("\r\033[K")
            self.out.close()


@contextmanager
def quiet(captured: list[str]) -> Iterator[None]:
    """Compiler output goes to `captured`, not the terminal: PoCL's clang writes its
    diagnostics ("N warnings generated.") to file descriptor 2 itself, and pyopencl warns
    with a CompilerWarning whenever the build log is not empty."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Non-empty compiler output")
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace")
            if text:
                captured.append(text)
                log.debug("compiler output:\n%s", text)


def _worker_job(device: Any, options: str, groups: list[Group], store: bool) -> bytes:
    return pickle.dumps({"platform": device.platform.name, "device": device.name, "options": options,
                         "store": store,
                         "groups": [{"key": g.key, "source": g.source,
                                     "launches": [(w.function, w.global_size, w.local_size, w.args)
                                                  for w in g.launches]} for g in groups]})


def _start_worker(job: bytes) -> subprocess.Popen | None:
    """A worker process with its job, or None where none can start (no usable
    `sys.executable` in an embedded interpreter, no processes left): then this process
    builds everything itself, as with `parallel_build` off."""
    try:
        worker = subprocess.Popen([sys.executable, WORKER], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        worker.stdin.write(job)
        worker.stdin.close()
    except (OSError, ValueError) as err:
        log.debug("no build worker: %s", err)
        return None
    return worker


def _storing_now() -> bool:
    _storing[:] = [w for w in _storing if w.poll() is None]
    return bool(_storing)


def store_pending() -> None:
    """Start the worker that stores the binaries built so far (after a run, at exit); when
    one is still busy, the next call starts it."""
    if _to_store and not _storing_now():
        worker = _start_worker(_to_store.pop(0))
        if worker is not None:
            _storing.append(worker)


def _at_exit() -> None:
    store_pending()
    # storing workers outlive this process on purpose: their Popen objects, collected at
    # shutdown, would warn "subprocess N is still running" (shown under -X dev and pytest);
    # marking them as not ours to reap is the one way subprocess offers to say so
    for worker in _storing:
        worker._child_created = False


atexit.register(_at_exit)


def finish_storing(timeout: float | None = None) -> None:
    """Store what was built and wait until it is stored (before timing a warm compile, or
    in tests); otherwise the storing worker runs on after this process exits."""
    while True:
        store_pending()
        for worker in list(_storing):
            try:
                worker.wait(timeout)
            except subprocess.TimeoutExpired:
                return
        if not _to_store:
            break
    _storing_now()


def _build_in_workers(device: Any, options: str, groups: list[Group]) -> None:
    """Each group built and warmed up by its own worker process; returns when all have
    exited (a worker that died leaves its group to this process)."""
    workers = [_start_worker(_worker_job(device, options, [g], store=False)) for g in groups]
    for worker in workers:
        if worker is not None:
            worker.wait()


def build_groups(context: Any, device: Any, language: CStyleLanguage, kernels: list[tuple[str, str]],
                 launches: dict[str, WarmLaunch], options: str, use_cache: bool, parallel: bool,
                 build: Callable[[str], Any], failure: type[Exception],
                 progress: Callable[[int, int], None] = lambda done, total: None) -> BuiltKernels:
    """Every kernel built: `build(source)` makes a program from source (raising `failure`)."""
    import pyopencl as cl
    buffer_bytes = sum({a[1] for w in launches.values() for a in w.args if isinstance(a, tuple)})
    helpers_allowed = buffer_bytes <= WORKER_MEMORY_LIMIT
    cores = available_cores() if parallel and helpers_allowed else 1
    groups = plan_groups(language, kernels, launches, device_identity(device, options), cores)
    result = BuiltKernels({}, "\n".join(g.source for g in groups), groups=len(groups))
    captured: list[str] = []
    missing = []
    at = time.perf_counter()
    with quiet(captured):
        for group in groups:
            binary = kernel_cache.load(group.key) if use_cache else None
            program = None
            if binary is not None:
                try:
                    program = cl.Program(context, [device], [binary]).build(options=options)
                    result.cached += 1
                except Exception:    # a stale or foreign binary: build it again
                    kernel_cache.discard(group.key)
            if program is None:
                missing.append(group)
            else:
                result.programs.update({name: program for name, _ in group.kernels})
        result.seconds["cache load"] = time.perf_counter() - at
        progress(result.cached, len(groups))
        if len(missing) > 1:
            at = time.perf_counter()
            _build_in_workers(device, options, missing)
            result.workers = len(missing)
            result.seconds["parallel build"] = time.perf_counter() - at
        at = time.perf_counter()
        for done, group in enumerate(missing, start=len(groups) - len(missing) + 1):
            program = build_sources(language, group.kernels, build, failure, "compiler")
            result.programs.update({name: program for name, _ in group.kernels})
            progress(done, len(groups))
        result.seconds["build"] = time.perf_counter() - at
    if missing and use_cache and helpers_allowed:
        # stored by a worker that builds them again (PoCL's cache makes that quick), later
        _to_store.append(_worker_job(device, options, missing, store=True))
    result.log = "".join(captured)
    return result
