"""Parameter initialisation, torch.nn.init's functions and the layers' shared helper.

Values are drawn on the host from the program's seeded generator (reproducible with
manual_seed) and become the tensor's initial value: the distributions are torch's, the
numbers are not (torch's generator is not ours). Kept apart from the layers so that the
functional conv code and the layers need not import each other.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from ..errors import TraceError
from ..frontend.program import current_program
from ..frontend.tensor import Tensor

_LINEAR_GAINS = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                 "conv_transpose3d", "sigmoid")


def uniform_parameter(shape: tuple[int, ...], bound: float, name: str) -> Tensor:
    """U(-bound, bound) from the program's generator (reproducible with manual_seed)."""
    from .module import Parameter   # module.py imports nothing of init.py; this keeps it so
    values = current_program().rng.uniform(-bound, bound, size=shape).astype(np.float32)
    return Parameter(values, name=name)


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """torch's recommended gain for a nonlinearity (the scale kaiming/xavier multiply by)."""
    if nonlinearity in _LINEAR_GAINS:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = float(param)
        else:
            raise ValueError(f"negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def _calculate_fan_in_and_fan_out(tensor: Tensor) -> tuple[int, int]:
    if tensor.ndim < 2:
        raise ValueError("Fan in and fan out can not be computed for tensor with fewer than 2 dimensions")
    receptive = int(np.prod(tensor.shape[2:], dtype=np.int64))
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def _fan(tensor: Tensor, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {mode} not supported, please use one of fan_in, fan_out")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def _generator(tensor: Tensor, generator: object, opname: str) -> np.random.Generator:
    """The program's generator, or a numpy Generator the caller gives (torch's does not fit)."""
    if generator is None:
        return tensor._program.rng
    if isinstance(generator, np.random.Generator):
        return generator
    raise TraceError(f"nn.init.{opname}: generator must be None or a numpy.random.Generator "
                     f"(torch.Generator streams are not reproduced), got {type(generator).__name__}")


def _write(tensor: Tensor, values: np.ndarray, opname: str) -> Tensor:
    """Make `values` the persistent tensor's value (what the next execute() starts from)."""
    if not tensor.is_persistent:
        raise TraceError(f"nn.init.{opname}: {tensor!r} is an intermediate value of the traced "
                         "program; only persistent tensors (parameters, buffers) can be initialised")
    var = tensor._var
    var.value = np.broadcast_to(np.asarray(values), var.shape).astype(var.value.dtype)
    return tensor


def uniform_(tensor: Tensor, a: float = 0.0, b: float = 1.0, generator: object = None) -> Tensor:
    rng = _generator(tensor, generator, "uniform_")
    return _write(tensor, rng.uniform(a, b, size=tensor.shape), "uniform_")


def normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0, generator: object = None) -> Tensor:
    rng = _generator(tensor, generator, "normal_")
    return _write(tensor, rng.normal(mean, std, size=tensor.shape), "normal_")


def trunc_normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0,
                  generator: object = None) -> Tensor:
    """N(mean, std) redrawn until inside [a, b] (torch's distribution, by rejection)."""
    rng = _generator(tensor, generator, "trunc_normal_")
    values = rng.normal(mean, std, size=tensor.shape)
    outside = (values < a) | (values > b)
    while outside.any():
        values[outside] = rng.normal(mean, std, size=int(outside.sum()))
        outside = (values < a) | (values > b)
    return _write(tensor, values, "trunc_normal_")


def constant_(tensor: Tensor, val: float) -> Tensor:
    return _write(tensor, np.full(tensor.shape, val), "constant_")


def zeros_(tensor: Tensor) -> Tensor:
    return constant_(tensor, 0.0)


def ones_(tensor: Tensor) -> Tensor:
    return constant_(tensor, 1.0)


def xavier_uniform_(tensor: Tensor, gain: float = 1.0, generator: object = None) -> Tensor:
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    bound = math.sqrt(3.0) * std
    return uniform_(tensor, -bound, bound, generator)


def xavier_normal_(tensor: Tensor, gain: float = 1.0, generator: object = None) -> Tensor:
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return normal_(tensor, 0.0, std, generator)


def _kaiming_std(tensor: Tensor, a: float, mode: str, nonlinearity: str) -> float | None:
    """The std of kaiming init, or None for a tensor without elements (torch warns: no-op)."""
    if 0 in tensor.shape:
        warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=3)
        return None
    return calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode))


def kaiming_uniform_(tensor: Tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                     generator: object = None) -> Tensor:
    std = _kaiming_std(tensor, a, mode, nonlinearity)
    if std is None:
        return tensor
    bound = math.sqrt(3.0) * std
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor: Tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                    generator: object = None) -> Tensor:
    std = _kaiming_std(tensor, a, mode, nonlinearity)
    if std is None:
        return tensor
    return normal_(tensor, 0.0, std, generator)
