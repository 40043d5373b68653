"""Optimizers: `step()` appends in-place update nodes; `zero_grad()` drops the symbolic grads."""
from __future__ import annotations

from typing import Iterable

import numpy as np

from ..graph.program import TraceError
from ..graph.tensor import Tensor


class Optimizer:
    def __init__(self, params: Iterable[Tensor]) -> None:
        self.params = list(params)
        if not self.params:
            raise TraceError(f"{type(self).__name__}: got an empty parameter list")
        for p in self.params:
            if not (isinstance(p, Tensor) and p.is_persistent):
                raise TraceError(f"{type(self).__name__}: parameters must be persistent Tensors, got {p!r}")
        self.state: dict[str, Tensor] = {}

    def zero_grad(self) -> None:
        """Forget the accumulated gradients (the next backward() starts from zero)."""
        for p in self.params:
            p.grad = None

    def _state_tensor(self, key: str, like: Tensor) -> Tensor:
        """A persistent zeros tensor of optimizer state (listed in state_dict())."""
        if key not in self.state:
            self.state[key] = Tensor(np.zeros(like.shape, np.float32), name=key, requires_grad=False)
        return self.state[key]

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: t.numpy() for k, t in self.state.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        for k, value in state.items():
            if k not in self.state:
                raise KeyError(f"{type(self).__name__}.load_state_dict: unknown state {k!r}")
            self.state[k]._var.value = np.array(value, dtype=np.float32)


class SGD(Optimizer):
    """PyTorch's SGD: weight decay, momentum (dampening 0), optional Nesterov."""

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, momentum: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(params)
        self.lr, self.momentum, self.weight_decay, self.nesterov = lr, momentum, weight_decay, nesterov

    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            d_p = p.grad
            if self.weight_decay:
                d_p = d_p + p * self.weight_decay
            if self.momentum:
                buf = self._state_tensor(f"momentum_buffer.{i}", p)
                # buffers start at zero, so the first step gives buf = d_p as in PyTorch
                buf.assign(buf * self.momentum + d_p)
                d_p = d_p + buf * self.momentum if self.nesterov else buf
            p.assign(p - d_p * self.lr)
