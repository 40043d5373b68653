"""torch.nn.utils' gradient clipping, computed on the device inside the traced program.

Each function rewrites `.grad` of the parameters (the symbolic gradient the optimizer's
step() reads next), so call it between `backward()` and `optimizer.step()`, as in torch;
inside `ir_for` the norm and the scale are computed every iteration.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from ..frontend.control import Receiver
from ..frontend.functions import stack
from ..frontend.tensor import Tensor, constant
from ..frontend.trace import trace_error

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _with_grads(parameters: Tensor | Iterable[Tensor]) -> list[Tensor]:
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    return [p for p in params if p.grad is not None]


def _norm(x: Tensor, norm_type: float) -> Tensor:
    """torch.linalg.vector_norm of all of x's elements, as a 0-d tensor."""
    if norm_type == math.inf:
        return x.abs().max()
    if norm_type == -math.inf:
        return x.abs().min()
    if norm_type == 2.0:
        return (x * x).sum().sqrt()
    if norm_type == 1.0:
        return x.abs().sum()
    return (x.abs() ** norm_type).sum() ** (1.0 / norm_type)


def clip_grad_norm_(parameters: Tensor | Iterable[Tensor], max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False, foreach: bool | None = None) -> Tensor:
    """Scale the gradients so that their joint `norm_type` norm is at most `max_norm`
    (by max_norm / (norm + 1e-6), only when that is below 1, as torch does); returns the
    norm before clipping as a traced 0-d tensor (pass it to a Receiver to watch it).

    `error_if_nonfinite=True` raises (a ReceiverError from the run) when the norm is nan or
    infinite, checked on the device where the norm is computed. `foreach` is accepted and
    ignored: the clipping is fused with the rest of the program anyway."""
    norm_type = float(norm_type)
    if not (norm_type > 0 or math.isinf(norm_type)):
        raise trace_error("clip_grad_norm_", f"norm_type must be > 0 or +-inf, got {norm_type}")
    params = _with_grads(parameters)
    if not params:
        return constant(0.0)
    norms = [_norm(p.grad, norm_type) for p in params]
    total = norms[0] if len(norms) == 1 else _norm(stack(norms), norm_type)
    if error_if_nonfinite:
        Receiver(_nonfinite_check(norm_type), [total], name="clip_grad_norm_ check")
    scale = (float(max_norm) / (total + 1e-6)).minimum(1.0)
    for p in params:
        p.grad = p.grad * scale
    return total


def _nonfinite_check(norm_type: float):
    def check(total: np.ndarray) -> None:
        if not np.isfinite(total):
            raise RuntimeError(f"The total norm of order {norm_type} for gradients from `parameters` is "
                               "non-finite, so it cannot be clipped. To disable this error and scale the "
                               "gradients by the non-finite norm anyway, set `error_if_nonfinite=False`")
    return check


def clip_grad_value_(parameters: Tensor | Iterable[Tensor], clip_value: float, foreach: bool | None = None) -> None:
    """Clamp every gradient element to [-clip_value, clip_value]."""
    clip_value = float(clip_value)
    for p in _with_grads(parameters):
        p.grad = p.grad.maximum(-clip_value).minimum(clip_value)
