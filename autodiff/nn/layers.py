"""Layers with PyTorch's parameter names, shapes and default initialisation."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..graph.program import current_program
from ..graph.tensor import Tensor
from . import functional as F
from .module import Module


def uniform_parameter(shape: tuple[int, ...], bound: float, name: str) -> Tensor:
    """U(-bound, bound) from the program's generator (reproducible with manual_seed)."""
    values = current_program().rng.uniform(-bound, bound, size=shape).astype(np.float32)
    return Tensor(values, name=name)


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
