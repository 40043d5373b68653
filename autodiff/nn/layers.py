"""Layers with PyTorch's parameter names, shapes and default initialisation."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..frontend.program import current_program
from ..frontend.tensor import Tensor
from .init import uniform_parameter
from . import functional as F
from .module import Module


class Linear(Module):
    """y = x @ weight.T + bias, weight (out_features, in_features), PyTorch's init."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features) if in_features else 0.0
        self.weight = uniform_parameter((out_features, in_features), bound, "weight")
        self.bias = uniform_parameter((out_features,), bound, "bias") if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


class Sequential(Module):
    def __init__(self, *modules: Module) -> None:
        super().__init__()
        for i, module in enumerate(modules):
            setattr(self, str(i), module)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def forward(self, x: Any) -> Any:
        for module in self._modules.values():
            x = module(x)
        return x


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.relu()


class Sigmoid(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.sigmoid()


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.tanh()


class GELU(Module):
    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x, self.approximate)


class Softmax(Module):
    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return F.softmax(x, self.dim)


class SiLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.silu(x)


class LayerNorm(Module):
    """PyTorch's LayerNorm: weight (ones) and bias (zeros) of `normalized_shape`."""

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps = shape, eps
        self.weight = Tensor(np.ones(shape, np.float32), name="weight") if elementwise_affine else None
        self.bias = Tensor(np.zeros(shape, np.float32), name="bias") if elementwise_affine and bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class RMSNorm(Module):
    """PyTorch's RMSNorm: x / sqrt(mean(x^2) + eps) * weight; eps=None means float32's eps."""

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float | None = None,
                 elementwise_affine: bool = True) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape = shape
        self.eps = float(np.finfo(np.float32).eps) if eps is None else eps
        self.weight = Tensor(np.ones(shape, np.float32), name="weight") if elementwise_affine else None

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)


class Embedding(Module):
    """Rows of `weight` (num_embeddings, embedding_dim), N(0, 1) init; int32 indices."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        values = current_program().rng.standard_normal((num_embeddings, embedding_dim))
        self.weight = Tensor(values.astype(np.float32), name="weight")

    def forward(self, indices: Tensor) -> Tensor:
        return F.embedding(indices, self.weight)


class Dropout(Module):
    """Zeroes each element with probability p while training (scaled by 1/(1-p)).

    The mask comes from the counter-based RANDOM op: new at every execution, the
    same on every device, reproducible with manual_seed; not PyTorch's stream.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)
