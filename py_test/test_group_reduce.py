"""Work-group reductions (codegen/group_reduce.py): which kernels qualify, their values on
OpenCL (forced on: the runtime uses them on GPUs only) against numpy, and their CUDA text
through nvcc."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

import autodiff as ad
from autodiff.codegen.group_reduce import GROUP_SIZE, group_reduction, render_group_reduce
from autodiff.backends.opencl import opencl_available
from autodiff.codegen.renderer import CUDALanguage


def _kernels(outputs: list[ad.Tensor]):
    ad.Receiver(lambda *v: None, outputs)
    compiled = ad.compile(device="numpy-proc")
    return compiled.proc.kernels(), {b.id: b for b in compiled.proc.buffers}


def _t(*shape: int) -> ad.Tensor:
    return ad.Tensor(np.ones(shape, np.float32))


@pytest.mark.parametrize("build, qualifies", [
    (lambda: (_t(8, 3000) * 2.0).sum(1) + 1.0, True),       # long rows, an epilogue after the sum
    (lambda: _t(5000).max(), True),                          # one output
    (lambda: _t(8, 64).sum(1), False),                       # too short: one work-item per output
    (lambda: _t(5000, 2000).sum(1), False),                  # enough outputs to fill a GPU
    (lambda: _t(4, 3000).argmax(1), False),                  # argmax keeps its loop
])
def test_which_kernels_qualify(build, qualifies):
    kernels, _ = _kernels([build()])
    reducing = [k for k in kernels if "sum" in k.name or "max" in k.name]
    assert reducing and all((group_reduction(k) is not None) == qualifies for k in reducing)


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
def test_group_reductions_match_numpy(rng):
    from autodiff.backends.opencl import OpenCLExecutor
    x = rng.standard_normal((8, 3000)).astype(np.float32)
    x[3, 17] = np.nan
    y = rng.standard_normal(200_003).astype(np.float32)
    tx, ty = ad.Tensor(x), ad.Tensor(y)
    outputs = {
        "sum_epilogue": (tx * tx).sum(1) * 0.5 + 1.0,
        "max_nan": tx.max(1),
        "sum_one_output": (ty * ty).sum(),
        "two_axes": tx.reshape(8, 3, 1000).sum((0, 2)),
        "mean": ty.mean(),
    }
    got: dict[str, np.ndarray] = {}
    ad.Receiver(lambda *vs: got.update(zip(outputs, vs)), list(outputs.values()))
    compiled = ad.compile(device="opencl", disable={"megakernel"})
    compiled.executor = OpenCLExecutor(compiled.proc, compiled.plan, frozenset({"megakernel"}), group_reductions=True)
    grouped = [r for r in compiled.executor.rendered if "partial[" in r.body]
    assert len(grouped) == len(outputs)
    assert all(r.local_size == GROUP_SIZE for r in grouped)
    compiled.run()
    with np.errstate(invalid="ignore"):
        expected = {
            "sum_epilogue": (x * x).sum(1) * 0.5 + 1.0,
            "max_nan": x.max(1),
            "sum_one_output": (y.astype(np.float64) ** 2).sum(),
            "two_axes": x.reshape(8, 3, 1000).sum((0, 2)),
            "mean": y.astype(np.float64).mean(),
        }
    for name, want in expected.items():
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=name)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_group_reduction_compiles_as_cuda(tmp_path):
    kernels, buffers = _kernels([(_t(8, 3000) * 2.0).sum(1) + 1.0, _t(5000).max()])
    language = CUDALanguage()
    sources = []
    for n, kernel in enumerate(k for k in kernels if group_reduction(k) is not None):
        rendered = render_group_reduce(kernel, language, buffers)
        rendered.name = f"group_{n}"
        assert "__shared__ float partial" in rendered.source and "__syncthreads();" in rendered.source
        sources.append(rendered.source)
    assert len(sources) == 2
    path = tmp_path / "group.cu"
    path.write_text("#undef INFINITY\n#undef NAN\n" + language.preamble() + "\n" + "\n\n".join(sources) + "\n")
    done = subprocess.run(["nvcc", "--ptx", "-arch=sm_90", "-x", "cu", str(path), "-o", str(path) + ".ptx"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
