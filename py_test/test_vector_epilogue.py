"""A tiled product's epilogue on whole float vectors (codegen/matmul.py `_vector_epilogue`):
which epilogues get it, and that each gives the numbers of numpy on OpenCL, with the
`vectorize` switch off (lane by lane) too."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

import autodiff as ad
from autodiff.backends.opencl import opencl_available

pytestmark = pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")

def _data(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


X, W, B, MASK = _data((64, 48), 1), _data((48, 80), 2), _data((80,), 3), _data((64, 80), 4)
BATCH = _data((3, 40, 48), 5)

# name -> (traced output, its numpy value, whether the epilogue takes vectors)
EPILOGUES: dict[str, tuple[Callable, Callable, bool]] = {
    "bias": (lambda: ad.Tensor(X) @ ad.Tensor(W) + ad.Tensor(B), lambda: X @ W + B, True),
    "bias relu": (lambda: (ad.Tensor(X) @ ad.Tensor(W) + ad.Tensor(B)).relu(),
                  lambda: np.maximum(X @ W + B, 0), True),
    "mask of another tensor": (lambda: ad.where(ad.Tensor(MASK) > 0, ad.Tensor(X) @ ad.Tensor(W), 0.0),
                               lambda: np.where(MASK > 0, X @ W, 0), True),
    "scaled, minus a row": (lambda: (ad.Tensor(X) @ ad.Tensor(W)) * 0.5 - ad.Tensor(MASK[:, :1]),
                            lambda: (X @ W) * 0.5 - MASK[:, :1], True),
    "batched, bias": (lambda: ad.Tensor(BATCH) @ ad.Tensor(W) + ad.Tensor(B), lambda: BATCH @ W + B, True),
    # the column index as a value differs across a vector's lanes: lane by lane
    "causal mask": (lambda: ad.where(ad.iota((64, 80), 1) > ad.iota((64, 80), 0), float("-inf"),
                                     ad.Tensor(X) @ ad.Tensor(W)),
                    lambda: np.where(np.arange(80)[None, :] > np.arange(64)[:, None], -np.inf, X @ W), False),
}


def _run(name: str, disable: set[str]) -> tuple[np.ndarray, dict[str, str]]:
    ad.reset()
    traced, _, _ = EPILOGUES[name]
    got: list[np.ndarray] = []
    ad.Receiver(lambda v: got.append(v), [traced()], name="out")
    compiled = ad.compile(device="opencl", disable=disable)
    compiled.run()
    return got[0], compiled.kernels


@pytest.mark.parametrize("name", list(EPILOGUES))
def test_an_epilogue_takes_vectors_where_it_can_and_matches_numpy(name):
    _, expected, vectors = EPILOGUES[name]
    got, kernels = _run(name, set())
    assert any("_epilogue(" in source for source in kernels.values()), "no tiled product: nothing tested"
    assert any("_epilogue_v(" in source for source in kernels.values()) == vectors
    np.testing.assert_allclose(got, expected(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["bias relu", "mask of another tensor"])
def test_vectorize_off_keeps_the_epilogue_lane_by_lane(name):
    got, kernels = _run(name, {"vectorize"})
    assert not any("_epilogue_v(" in source for source in kernels.values())
    np.testing.assert_allclose(got, EPILOGUES[name][1](), rtol=1e-4, atol=1e-4)
