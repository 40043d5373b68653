"""Every op of the op table has an entry in every registry."""
from __future__ import annotations

import pytest

from autodiff.backends.numpy_graph import EFFECTS
from autodiff.ir.reference import REFERENCE
from autodiff.ir.ops import Op
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
