"""Optimizers: `step()` appends in-place update nodes; `zero_grad()` drops the symbolic grads.

The Python of `step()` runs once, while tracing, so everything that changes from
one step to the next (moment buffers, step counters, a decayed learning rate)
is a persistent tensor updated on the device, never a Python number: a body
traced once by `ir_for` and run n times then does what n eager steps would.

The update formulas follow PyTorch's single-tensor implementations
(`torch.optim.sgd._single_tensor_sgd`, `torch.optim.adam._single_tensor_adam`)
operation for operation, so trajectories match PyTorch's from the same weights.
State tensors are made when the optimizer is built, so `load_state_dict` works
before or after the training loop is traced.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping

import numpy as np

from ..errors import TraceError
from ..ir.dtypes import FLOAT, INT
from ..ir.graph import Variable
from ..frontend.tensor import Tensor, constant


class Optimizer:
    """Base class: the parameters, and the persistent state tensors by stable name."""

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

    def step(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no step()")

    def _state_tensor(self, key: str, like: Tensor) -> Tensor:
        """A persistent float32 zeros tensor shaped like `like` (listed in state_dict())."""
        if key not in self.state:
            self.state[key] = Tensor(np.zeros(like.shape, np.float32), name=key, requires_grad=False)
        return self.state[key]

    def _counter(self, key: str) -> Tensor:
        """A persistent 0-d int32 counter starting at 0 (listed in state_dict())."""
        if key not in self.state:
            self.state[key] = Tensor(np.zeros((), np.int32), name=key, dtype=INT, requires_grad=False)
        return self.state[key]

    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies of every state tensor's current value, by stable name."""
        return {k: t.numpy() for k, t in self.state.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray], strict: bool = True) -> None:
        """Set the state tensors' values (for the next execute()); dtypes and shapes are kept.

        All or nothing: every key and shape is checked before any value is written."""
        self._prepare_load(state, strict)()

    def _prepare_load(self, state: Mapping[str, np.ndarray], strict: bool = True) -> Callable[[], None]:
        """Check `state` and convert its values; returns the function that writes them (split so
        that `checkpoint.restore` checks every object before writing any, as Module does)."""
        missing = [k for k in self.state if k not in state]
        unexpected = [k for k in state if k not in self.state]
        if unexpected or (strict and missing):
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing {missing}, "
                           f"unexpected {unexpected}")
        writes: list[tuple[Variable, np.ndarray]] = []
        for key, value in state.items():
            var = self.state[key]._var
            array = np.asarray(value)
            if array.shape != var.shape:
                raise TraceError(f"{type(self).__name__}.load_state_dict: {key} has shape "
                                 f"{var.shape}, got {array.shape}")
            writes.append((var, np.array(array, dtype=var.value.dtype)))

        def write() -> None:
            for var, array in writes:
                var.value = array
        return write


class SGD(Optimizer):
    """PyTorch's SGD (weight decay, momentum with dampening 0, Nesterov) plus step decay.

    Step decay: the step taken after `t` earlier steps uses
    `lr_t = max(lr * gamma ** (t // decay_every), min_lr)`, with `t` counted on
    the device (state "step"), so the decay also happens inside `ir_for`.
    `gamma=1` (the default) means a constant learning rate and no counter.
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, momentum: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, gamma: float = 1.0,
                 decay_every: int = 1, min_lr: float = 0.0) -> None:
        super().__init__(params)
        if lr < 0 or momentum < 0 or weight_decay < 0 or min_lr < 0:
            raise ValueError(f"SGD: lr, momentum, weight_decay, min_lr must be >= 0, got "
                             f"{lr}, {momentum}, {weight_decay}, {min_lr}")
        if nesterov and momentum <= 0:
            raise ValueError("SGD: Nesterov momentum needs momentum > 0")
        if int(decay_every) != decay_every or decay_every < 1:
            raise ValueError(f"SGD: decay_every must be a positive integer, got {decay_every}")
        if not gamma > 0:
            raise ValueError(f"SGD: gamma must be > 0, got {gamma}")
        self.lr, self.momentum, self.weight_decay, self.nesterov = lr, momentum, weight_decay, nesterov
        self.gamma, self.decay_every, self.min_lr = gamma, int(decay_every), min_lr
        if momentum:
            for i, p in enumerate(self.params):
                self._state_tensor(f"momentum_buffer.{i}", p)
        if self.decays:
            self._counter("step")

    @property
    def decays(self) -> bool:
        return self.gamma != 1.0

    def learning_rate(self) -> Tensor | float:
        """The learning rate the next step uses: a traced 0-d tensor when decaying
        (pass it to a Receiver to watch it), else the constant `lr`."""
        if not self.decays:
            return self.lr
        decays_so_far = self.state["step"] // self.decay_every
        lr = self.gamma ** decays_so_far * self.lr
        return lr.maximum(self.min_lr) if self.min_lr > 0 else lr

    def step(self) -> None:
        lr = self.learning_rate()
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            d_p = p.grad
            if self.weight_decay:
                d_p = d_p + p * self.weight_decay
            if self.momentum:
                buf = self.state[f"momentum_buffer.{i}"]
                # buffers start at zero, so the first step gives buf = d_p as in PyTorch
                buf.assign(buf * self.momentum + d_p)
                d_p = d_p + buf * self.momentum if self.nesterov else buf
            p.assign(p - d_p * lr)
        if self.decays:
            self.state["step"].add_(1)


class Adam(Optimizer):
    """PyTorch's Adam (L2 weight decay added to the gradient), without amsgrad.

    State per parameter i: "exp_avg.i", "exp_avg_sq.i" (float32, like the
    parameter) and "step.i" (0-d int32), as in PyTorch's per-parameter state.
    """

    decoupled_weight_decay = False

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params)
        beta1, beta2 = betas
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"{type(self).__name__}: lr, eps, weight_decay must be >= 0, got "
                             f"{lr}, {eps}, {weight_decay}")
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"{type(self).__name__}: betas must be in [0, 1), got {betas}")
        self.lr, self.betas, self.eps, self.weight_decay = lr, (beta1, beta2), eps, weight_decay
        for i, p in enumerate(self.params):
            self._state_tensor(f"exp_avg.{i}", p)
            self._state_tensor(f"exp_avg_sq.{i}", p)
            self._counter(f"step.{i}")

    def step(self) -> None:
        beta1, beta2 = self.betas
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            grad = p.grad
            exp_avg, exp_avg_sq = self.state[f"exp_avg.{i}"], self.state[f"exp_avg_sq.{i}"]
            step = self.state[f"step.{i}"].add_(1).float()
            if self.weight_decay:
                if self.decoupled_weight_decay:
                    p.assign(p * (1 - self.lr * self.weight_decay))
                else:
                    grad = grad + p * self.weight_decay
            # exp_avg.lerp_(grad, 1 - beta1): PyTorch's lerp for a weight below 0.5
            exp_avg.assign(exp_avg + (1 - beta1) * (grad - exp_avg))
            # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            exp_avg_sq.assign(exp_avg_sq * beta2 + (1 - beta2) * grad * grad)
            bias_correction1 = _one_minus_power(beta1, step)
            bias_correction2 = _one_minus_power(beta2, step)
            step_size = self.lr / bias_correction1
            denom = exp_avg_sq.sqrt() / bias_correction2.sqrt() + self.eps
            # param.addcdiv_(exp_avg, denom, value=-step_size)
            p.assign(p - step_size * exp_avg / denom)


class AdamW(Adam):
    """PyTorch's AdamW: Adam with decoupled weight decay `p *= 1 - lr * weight_decay`."""

    decoupled_weight_decay = True

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def _one_minus_power(beta: float, t: Tensor) -> Tensor:
    """1 - beta ** t for a float32 step count t >= 1, accurate to float32 rounding.

    Written directly, beta ** t (near 1 for beta = 0.999) loses the low digits that
    1 - beta ** t needs: a relative error of ~1e-5 in Adam's bias correction at
    step 1, where PyTorch computes it in float64. Instead use
    1 - beta**t = -expm1(t * log(beta)) and expm1(x) = tanh(x / 2) * (exp(x) + 1),
    which keeps its relative accuracy for small |x|.
    """
    if beta == 0.0:
        return constant(1.0, t.shape, FLOAT)
    x = t * math.log(beta)
    return -(x * 0.5).tanh() * (x.exp() + 1)
