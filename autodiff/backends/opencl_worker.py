"""A process that builds OpenCL programs for `opencl_build`: run as a script, not imported.

PoCL compiles under one process-wide lock (two threads building at once took as long as
one after the other), so builds run in parallel only in separate processes. The job comes
pickled on stdin:

    {"platform": name, "device": name, "options": str, "store": bool,
     "groups": [{"key": str, "source": str, "launches": [(function, global, local, args)]}]}

where an argument is a number (int32, int64 or float32 numpy scalar) or ("buffer", bytes).
For each group the worker builds the source and launches every kernel once on zeroed
buffers (PoCL generates a kernel's work-group function at its first launch and keeps it in
its own disk cache, where the parent's build of the same source then finds it). With
"store", it lowers its priority and stores each program's binary in autodiff's kernel
cache: asking PoCL for binaries builds every kernel once more (a generic version), which
costs as long as the first build, so the parent does not wait for it.

It imports pyopencl, numpy and the standard-library-only `kernel_cache`, not autodiff: it
starts in ~0.3 s.
"""
from __future__ import annotations

import os
import pickle
import sys
import warnings


def main() -> int:
    job = pickle.load(sys.stdin.buffer)
    if job["store"]:
        # before PoCL starts its threads: on Linux a thread's priority is its own, and
        # threads inherit their creator's; lowered later, the kernels this worker launches
        # ran on PoCL's threads at normal priority beside the parent's run
        os.nice(19)
    import importlib.util

    import numpy as np
    import pyopencl as cl
    spec = importlib.util.spec_from_file_location(
        "kernel_cache", os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernel_cache.py"))
    kernel_cache = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernel_cache)

    warnings.simplefilter("ignore")
    device = next(d for p in cl.get_platforms() if p.name == job["platform"]
                  for d in p.get_devices() if d.name == job["device"])
    context = cl.Context([device])
    queue = cl.CommandQueue(context)
    zeroed: dict[int, object] = {}

    def argument(value):
        if isinstance(value, tuple):
            size = max(int(value[1]), 64)
            if size not in zeroed:
                zeroed[size] = cl.Buffer(context, cl.mem_flags.READ_WRITE, size)
                cl.enqueue_fill_buffer(queue, zeroed[size], np.uint32(0), 0, size)
            return zeroed[size]
        return value

    built = []
    for group in job["groups"]:
        program = cl.Program(context, group["source"]).build(options=job["options"])
        for function, global_size, local_size, args in group["launches"]:
            kernel = cl.Kernel(program, function)
            for position, value in enumerate(args):
                kernel.set_arg(position, argument(value))
            cl.enqueue_nd_range_kernel(queue, kernel, global_size, local_size)
        queue.finish()
        built.append((group["key"], program))
    if job["store"]:
        for key, program in built:
            kernel_cache.store(key, program.get_info(cl.program_info.BINARIES)[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
