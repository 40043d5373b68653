"""Every op of the op table has an entry in every registry; every registered backend runs the
op suite."""
from __future__ import annotations

import pytest

from autodiff.backends.numpy_graph import EFFECTS
from autodiff.backends.registry import backends
from autodiff.codegen.renderer import CStyleLanguage, CUDALanguage, OpenCLLanguage
from autodiff.ir.reference import REFERENCE
from autodiff.ir.ops import ELEMENTWISE_OPS, Op
from autodiff.ir.shapes import SHAPE_RULES
from autodiff.frontend.vjp import VJP_RULES

REGISTRIES = {
    "shape rule": SHAPE_RULES,
    "numpy reference": {**REFERENCE, **EFFECTS},
    "VJP rule": VJP_RULES,
}


@pytest.mark.parametrize("registry", list(REGISTRIES))
def test_every_op_has_an_entry(registry: str):
    missing = [op.value for op in Op if op not in REGISTRIES[registry]]
    assert not missing, f"no {registry} for: {missing}"


def test_reference_and_effects_do_not_overlap():
    assert not set(REFERENCE) & set(EFFECTS)


@pytest.mark.parametrize("language", [OpenCLLanguage(), CUDALanguage()], ids=lambda lang: lang.name)
def test_every_elementwise_op_renders_in_every_language(language: CStyleLanguage):
    missing = [op.value for op in ELEMENTWISE_OPS if not language.renders(op)]
    assert not missing, f"no {language.name} rendering for: {missing}"


def test_every_backend_that_runs_here_runs_the_op_suite():
    from conftest import available_devices
    import os
    if os.environ.get("AUTODIFF_TEST_DEVICES"):
        pytest.skip("AUTODIFF_TEST_DEVICES narrows the devices on purpose")
    runnable = [b.name for b in backends() if b.problem() is None]
    assert sorted(available_devices()) == sorted(runnable)
