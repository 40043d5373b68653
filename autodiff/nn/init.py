"""Parameter initialisation shared by the layers (kept apart from them so that the
functional conv code and the layers need not import each other)."""
from __future__ import annotations

import numpy as np

from ..frontend.program import current_program
from ..frontend.tensor import Tensor


def uniform_parameter(shape: tuple[int, ...], bound: float, name: str) -> Tensor:
    """U(-bound, bound) from the program's generator (reproducible with manual_seed)."""
    values = current_program().rng.uniform(-bound, bound, size=shape).astype(np.float32)
    return Tensor(values, name=name)
