"""Transposing copies in blocks of float vectors (codegen/transpose.py): which copies
qualify, and their values on OpenCL against numpy, with the switch on and off."""
from __future__ import annotations

import numpy as np
import pytest

import autodiff as ad
from autodiff.backends.opencl import opencl_available

needs_opencl = pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")


def _copy(x: ad.Tensor, view) -> ad.Tensor:
    return view(x) * 1.0   # a kernel of its own: the view alone is not materialized


CASES = [
    # (input shape, the view, whether the block renderer takes it (given a width of 4 or more))
    ((3, 32, 48), lambda t: t.permute(0, 2, 1), True),
    ((64, 64), lambda t: t.T, True),
    ((16, 128), lambda t: t.T, True),
    ((8, 64, 4, 32), lambda t: t.permute(0, 2, 3, 1), True),     # attention's heads, (seq, d) -> (d, seq)
    ((64, 40), lambda t: t[:, 8:40].T, True),                     # rows 40 apart, a column offset
    ((48, 32, 3), lambda t: t.permute(2, 1, 0), False),          # the output's rows are 3 long
    ((5, 7), lambda t: t.T, False),                               # no width divides
    ((32, 64), lambda t: t + 0.0, False),                         # not a transpose: a plain vector copy
    ((0, 16), lambda t: t.T, False),                              # nothing to copy
]


@needs_opencl
@pytest.mark.parametrize("disable", [{"megakernel"}, {"megakernel", "tiled_transpose"}], ids=["on", "off"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_transposing_copies_match_numpy(case: int, disable: set) -> None:
    shape, view, blocked = CASES[case]
    data = np.random.default_rng(case).standard_normal(shape).astype(np.float32)
    got = []
    x = ad.Tensor(data, name="x")
    ad.Receiver(lambda v: got.append(np.array(v)), [_copy(x, view)])
    compiled = ad.compile(device="opencl", disable=disable)
    compiled.run()
    want = np.ascontiguousarray(view(data.view(_NumpyViews)))   # the same view of the numpy array
    assert got[0].shape == want.shape
    np.testing.assert_array_equal(got[0], want)   # a copy: exact
    sources = "\n".join(compiled.kernels.values())
    uses_blocks = ".s0, " in sources
    assert uses_blocks == (blocked and "tiled_transpose" not in disable), sources[:3000]


class _NumpyViews(np.ndarray):
    """numpy arrays with the tensor methods the cases use (permute, .T exists)."""

    def permute(self, *axes: int) -> np.ndarray:
        return self.transpose(axes)


def test_the_cuda_language_keeps_plain_copies() -> None:
    """CUDA has no vloadN/vstoreN: the block renderer is OpenCL's only."""
    from autodiff.codegen.program import render_program
    from autodiff.codegen.renderer import CUDALanguage
    x = ad.Tensor(np.ones((64, 64), np.float32))
    ad.Receiver(lambda v: None, [x.T * 1.0])
    compiled = ad.compile(device="numpy-proc")
    rendered = render_program(compiled.proc, CUDALanguage(), frozenset({"tiled_transpose"}))
    assert all(".s0" not in r.source for _, r in rendered.singles)
