"""Optimizers: `step()` appends in-place update nodes; `zero_grad()` drops the symbolic grads.

The Python of `step()` runs once, while tracing, so everything that changes from
one step to the next (moment buffers, step counters, a scheduled learning rate)
is a persistent tensor updated on the device, never a Python number: a body
traced once by `ir_for` and run n times then does what n eager steps would.

The update formulas follow PyTorch's single-tensor implementations
(`torch.optim.sgd._single_tensor_sgd`, `adam._single_tensor_adam`, `rmsprop`, `adagrad`)
operation for operation, so trajectories match PyTorch's from the same weights.
State tensors are made when the optimizer is built, so `load_state_dict` works
before or after the training loop is traced.

Parameter groups and state dicts are PyTorch's: `params` may be a list of dicts with their
own hyper-parameters (`optimizer.param_groups`), and `state_dict()` is
`{'state': {index: {name: array}}, 'param_groups': [{..., 'params': [index, ...]}]}`, which
torch's `load_state_dict` accepts once the arrays are torch tensors (`to_torch`), and ours
accepts torch's. A hyper-parameter is read when `step()` is traced: changing it afterwards
warns, since the traced program keeps the old value; a scheduler (`lr_scheduler`) computes
the rate on the device instead.
"""
from __future__ import annotations

import math
import re
import warnings
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ..errors import TraceError
from ..ir.dtypes import FLOAT, INT
from ..ir.graph import Variable
from ..frontend.tensor import Tensor, constant

# torch's flags that change the update; a loaded group may carry them only at these values
_FIXED_FLAGS = {"amsgrad": False, "differentiable": False, "dampening": 0}
# torch's flags about how it computes (not what): accepted and ignored
_IGNORED_FLAGS = ("foreach", "fused", "capturable")
_LEGACY_KEY = re.compile(r"^(.+)\.(\d+)$")   # checkpoints before param groups: "exp_avg.0"


class ParamGroup(dict):
    """One entry of `optimizer.param_groups`: torch's dict of 'params' and hyper-parameters.

    Setting a hyper-parameter after the optimizer's step() was traced warns: the traced
    program read the old value (use an lr_scheduler to vary the rate while it runs)."""

    def __init__(self, optimizer: "Optimizer", values: Mapping[str, Any]) -> None:
        super().__init__(values)
        self._optimizer = optimizer

    def __setitem__(self, key: str, value: Any) -> None:
        if key != "params" and key in self and self._optimizer._step_traced and not _same(self[key], value):
            number = next(i for i, group in enumerate(self._optimizer.param_groups) if group is self)
            warnings.warn(
                f"{type(self._optimizer).__name__}: param_groups[{number}]"
                f"[{key!r}] changed from {self[key]!r} to {value!r} after step() was traced; the traced "
                f"program keeps {self[key]!r}. Change it before tracing, or use a scheduler from "
                "autodiff.nn.optim.lr_scheduler to vary the learning rate on the device", stacklevel=2)
        super().__setitem__(key, value)


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (TypeError, TraceError):
        return a is b


class Optimizer:
    """Base class: parameter groups, and per-parameter persistent state tensors.

    `state[i]` holds the state tensors of parameter i (numbered over the groups in order, as
    in torch's state_dict) by torch's names (`exp_avg`, `momentum_buffer`, `step`, ...).
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[Mapping[str, Any]], defaults: Mapping[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.param_groups: list[ParamGroup] = []
        self.params: list[Tensor] = []
        self.state: dict[int, dict[str, Tensor]] = {}
        self._initial: dict[int, float] = {}   # id(state tensor) -> its fill (load of a never-stepped state)
        self._step_traced = False
        self._scheduler: Any = None   # an lr_scheduler.LRScheduler computing hyper-parameters on the device
        groups = list(params)
        if not groups:
            raise TraceError(f"{type(self).__name__}: got an empty parameter list")
        for group in groups if isinstance(groups[0], Mapping) else [{"params": groups}]:
            self.add_param_group(group)

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a group (a dict with 'params' and hyper-parameters; missing ones are the
        defaults) and make its parameters' state tensors."""
        if not isinstance(param_group, Mapping):
            raise TraceError(f"{type(self).__name__}: a param group must be a dict, got {type(param_group).__name__}")
        params = param_group.get("params")
        params = [params] if isinstance(params, Tensor) else list(params or [])
        if not params:
            raise TraceError(f"{type(self).__name__}: a param group has no 'params'")
        unknown = [k for k in param_group if k != "params" and k not in self.defaults]
        if unknown:
            raise TraceError(f"{type(self).__name__}: unknown hyper-parameters {unknown} in a param group "
                             f"(known: {list(self.defaults)})")
        for p in params:
            if not (isinstance(p, Tensor) and p.is_persistent):
                raise TraceError(f"{type(self).__name__}: parameters must be persistent Tensors, got {p!r}")
            if any(p is q for q in self.params):
                raise TraceError(f"{type(self).__name__}: parameter {p.name!r} appears in more than one group")
        group = ParamGroup(self, {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}})
        dict.__setitem__(group, "params", params)
        self._check_group(group)
        self.param_groups.append(group)
        for p in params:
            self.params.append(p)
            self.state[len(self.params) - 1] = {}
            self._init_state(len(self.params) - 1, p, group)

    def __getattr__(self, name: str) -> Any:
        """`opt.lr`, `opt.momentum`, ...: the first group's value (reading only)."""
        groups = self.__dict__.get("param_groups")
        if groups and name in groups[0]:
            return groups[0][name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def _check_group(self, group: Mapping[str, Any]) -> None:
        """Raise ValueError for hyper-parameters torch rejects (each optimizer adds its rules)."""
        if _value_of(group["lr"]) < 0:
            raise ValueError(f"{type(self).__name__}: invalid learning rate {group['lr']}")
        for key, fixed in _FIXED_FLAGS.items():
            if key in group and group[key] != fixed:
                raise TraceError(f"{type(self).__name__}: {key}={group[key]!r} is not supported")

    def _init_state(self, index: int, param: Tensor, group: Mapping[str, Any]) -> None:
        """Make parameter `index`'s state tensors (each optimizer says which)."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the accumulated gradients (the next backward() starts from zero)."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """Trace one update of every parameter that has a gradient."""
        for index, param, group, hyper in self._each_param():
            grad = param.grad
            if grad is None:
                continue
            self._update(index, param, -grad if group.get("maximize") else grad, hyper)
        self._step_traced = True

    def _update(self, index: int, param: Tensor, grad: Tensor, hyper: Callable[[str], Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no step()")

    def _each_param(self) -> Iterable[tuple[int, Tensor, ParamGroup, Callable[[str], Any]]]:
        """(index, parameter, its group, the group's hyper-parameter reader) for every parameter.

        The reader gives a scheduled value (a traced tensor computed from the scheduler's
        counter at this point of the trace) where a scheduler sets one, else the group's."""
        index = 0
        for g, group in enumerate(self.param_groups):
            values: dict[str, Any] = {}

            def hyper(key: str, g: int = g, group: ParamGroup = group, values: dict = values) -> Any:
                if key not in values:
                    scheduled = self._scheduler._scheduled(g, key) if self._scheduler is not None else None
                    values[key] = group[key] if scheduled is None else scheduled
                return values[key]
            for param in group["params"]:
                yield index, param, group, hyper
                index += 1

    def _state_tensor(self, index: int, key: str, like: Tensor, fill: float = 0.0) -> Tensor:
        """A persistent float32 tensor shaped like `like`, filled with `fill` (in state_dict())."""
        tensor = Tensor(np.full(like.shape, fill, np.float32), name=f"{key}.{index}", requires_grad=False)
        self.state[index][key] = tensor
        self._initial[id(tensor)] = fill
        return tensor

    def _counter(self, index: int, key: str = "step") -> Tensor:
        """A persistent 0-d int32 counter starting at 0 (in state_dict())."""
        tensor = Tensor(np.zeros((), np.int32), name=f"{key}.{index}", dtype=INT, requires_grad=False)
        self.state[index][key] = tensor
        self._initial[id(tensor)] = 0
        return tensor

    # --- state dicts -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """torch's layout: {'state': {i: {name: array}}, 'param_groups': [{..., 'params': [i, ...]}]},
        host copies of the state tensors' current values."""
        groups, start = [], 0
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = list(range(start, start + len(group["params"])))
            start += len(group["params"])
            groups.append(packed)
        state = {i: {k: t.numpy() for k, t in s.items()} for i, s in self.state.items() if s}
        return {"state": state, "param_groups": groups}

    def _checkpoint_state(self) -> dict[str, np.ndarray]:
        """The state tensors flat, as checkpoint files store them: 'state.<i>.<name>'. The
        hyper-parameters are not stored: they are the program's, as its code is."""
        return {f"state.{i}.{k}": t.numpy() for i, s in self.state.items() for k, t in s.items()}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Set the state tensors' values (for the next execute()) and the groups'
        hyper-parameters from ours or torch's state_dict (or a checkpoint's flat form).

        All or nothing: every key and shape is checked before any value is written."""
        self._prepare_load(state_dict, strict)()

    def _prepare_load(self, state_dict: Mapping[str, Any], strict: bool = True) -> Callable[[], None]:
        """Check `state_dict` and convert its values; returns the function that writes them
        (split so that `checkpoint.restore` checks every object before writing any)."""
        if "state" in state_dict and "param_groups" in state_dict:
            values = {(int(i), k): v for i, s in state_dict["state"].items() for k, v in s.items()
                      if v is not None}   # torch's SGD keeps momentum_buffer None without momentum
            # torch makes a parameter's state at its first step: a parameter with no entry
            # (an optimizer that never stepped) starts again from the initial state
            fresh = {int(i) for i in state_dict["state"]}
            values.update({(i, k): np.full(t.shape, self._initial[id(t)], t.dtype)
                           for i, s in self.state.items() if i not in fresh for k, t in s.items()})
            groups = self._check_groups(state_dict["param_groups"])
        else:
            values, groups = self._flat_values(state_dict), []
        expected = {(i, k): t for i, s in self.state.items() for k, t in s.items()}
        missing = [f"state.{i}.{k}" for i, k in expected if (i, k) not in values]
        unexpected = [f"state.{i}.{k}" for i, k in values if (i, k) not in expected]
        if unexpected or (strict and missing):
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing {missing}, unexpected {unexpected}")
        writes: list[tuple[Variable, np.ndarray]] = []
        for (i, k), value in values.items():
            var = expected[i, k]._var
            array = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)
            if array.shape != var.shape:
                raise TraceError(f"{type(self).__name__}.load_state_dict: state.{i}.{k} has shape "
                                 f"{var.shape}, got {array.shape}")
            writes.append((var, np.array(array, dtype=var.value.dtype)))

        def write() -> None:
            for var, array in writes:
                var.value = array
            for group, saved in zip(self.param_groups, groups):
                for key, value in saved.items():
                    group[key] = value
        return write

    def _flat_values(self, flat: Mapping[str, Any]) -> dict[tuple[int, str], Any]:
        """A checkpoint's 'state.<i>.<name>' keys (or the older '<name>.<i>') by (i, name)."""
        values: dict[tuple[int, str], Any] = {}
        for key, value in flat.items():
            parts = key.split(".", 2)
            if len(parts) == 3 and parts[0] == "state" and parts[1].isdigit():
                values[int(parts[1]), parts[2]] = value
            elif (legacy := _LEGACY_KEY.match(key)) is not None:
                values[int(legacy.group(2)), legacy.group(1)] = value
            else:
                raise KeyError(f"{type(self).__name__}.load_state_dict: unexpected key {key!r}")
        return values

    def _check_groups(self, saved: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The saved groups' hyper-parameters that ours have, checked against our groups."""
        if len(saved) != len(self.param_groups):
            raise ValueError(f"{type(self).__name__}.load_state_dict: {len(saved)} param groups, "
                             f"this optimizer has {len(self.param_groups)}")
        kept = []
        for number, (group, values) in enumerate(zip(self.param_groups, saved)):
            if len(values["params"]) != len(group["params"]):
                raise ValueError(f"{type(self).__name__}.load_state_dict: param group {number} has "
                                 f"{len(values['params'])} parameters, ours {len(group['params'])}")
            for key, fixed in _FIXED_FLAGS.items():
                if key in values and values[key] != fixed and key not in group:
                    raise TraceError(f"{type(self).__name__}.load_state_dict: {key}={values[key]!r} "
                                     "is not supported")
            own = {k: _plain(v) for k, v in values.items() if k in group and k != "params"}
            self._check_group({**group, **own})
            kept.append(own)
        return kept


def _value_of(x: Any) -> float:
    return float(x) if not isinstance(x, Tensor) else 0.0


def _plain(value: Any) -> Any:
    """A loaded hyper-parameter as a Python value (torch may store 0-d tensors, betas as a list)."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    return value


class SGD(Optimizer):
    """PyTorch's SGD (weight decay, momentum with dampening 0, Nesterov, maximize), plus step decay.

    Step decay (ours; an lr_scheduler.StepLR does the same): the step taken after `t`
    earlier steps uses `lr_t = max(lr * gamma ** (t // decay_every), min_lr)`, with `t`
    counted on the device (state 'step' of each parameter), so it also decays inside
    `ir_for`. `gamma=1` (the default) means a constant learning rate and no counter.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[Mapping[str, Any]], lr: float = 1e-3,
                 momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False, *, maximize: bool = False, foreach: bool | None = None,
                 differentiable: bool = False, fused: bool | None = None, gamma: float = 1.0,
                 decay_every: int = 1, min_lr: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize, foreach=foreach,
                                      differentiable=differentiable, fused=fused, gamma=gamma,
                                      decay_every=decay_every, min_lr=min_lr))

    def _check_group(self, group: Mapping[str, Any]) -> None:
        super()._check_group(group)
        momentum, decay, min_lr = group["momentum"], group["weight_decay"], group["min_lr"]
        if momentum < 0 or decay < 0 or min_lr < 0:
            raise ValueError(f"SGD: momentum, weight_decay, min_lr must be >= 0, got {momentum}, {decay}, {min_lr}")
        if group["nesterov"] and momentum <= 0:
            raise ValueError("SGD: Nesterov momentum needs momentum > 0")
        if int(group["decay_every"]) != group["decay_every"] or group["decay_every"] < 1:
            raise ValueError(f"SGD: decay_every must be a positive integer, got {group['decay_every']}")
        if not group["gamma"] > 0:
            raise ValueError(f"SGD: gamma must be > 0, got {group['gamma']}")

    def _init_state(self, index: int, param: Tensor, group: Mapping[str, Any]) -> None:
        if group["momentum"]:
            self._state_tensor(index, "momentum_buffer", param)
        if group["gamma"] != 1.0:
            self._counter(index)

    @property
    def decays(self) -> bool:
        return any(group["gamma"] != 1.0 for group in self.param_groups)

    def learning_rate(self, group: int = 0) -> Tensor | float:
        """The learning rate group `group`'s next step uses: a traced 0-d tensor when it
        decays or is scheduled (pass it to a Receiver to watch it), else the constant."""
        first = sum(len(g["params"]) for g in self.param_groups[:group])
        for index, _, _, hyper in self._each_param():
            if index == first:
                return self._decayed(index, self.param_groups[group], hyper)
        raise IndexError(f"SGD has {len(self.param_groups)} param groups, no group {group}")

    def _decayed(self, index: int, group: Mapping[str, Any], hyper: Callable[[str], Any]) -> Tensor | float:
        lr = hyper("lr")
        if group["gamma"] == 1.0:
            return lr
        decays_so_far = self.state[index]["step"] // int(group["decay_every"])
        lr = group["gamma"] ** decays_so_far * lr
        return lr.maximum(group["min_lr"]) if group["min_lr"] > 0 else lr

    def step(self) -> None:
        for index, p, group, hyper in self._each_param():
            if p.grad is None:
                continue
            lr = self._decayed(index, group, hyper)
            d_p = -p.grad if group["maximize"] else p.grad
            if group["weight_decay"]:
                d_p = d_p + p * group["weight_decay"]
            if group["momentum"]:
                momentum = hyper("momentum")
                buf = self.state[index]["momentum_buffer"]
                # buffers start at zero, so the first step gives buf = d_p as in PyTorch
                buf.assign(buf * momentum + d_p)
                d_p = d_p + buf * momentum if group["nesterov"] else buf
            p.assign(p - d_p * lr)
            if group["gamma"] != 1.0:
                self.state[index]["step"].add_(1)
        self._step_traced = True


class Adam(Optimizer):
    """PyTorch's Adam (L2 weight decay added to the gradient), without amsgrad.

    State per parameter: 'exp_avg', 'exp_avg_sq' (float32, like the parameter) and 'step'
    (0-d int32; torch keeps a float32 one), as in PyTorch's per-parameter state.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[Mapping[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 amsgrad: bool = False, *, foreach: bool | None = None, maximize: bool = False,
                 capturable: bool = False, differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize, foreach=foreach, capturable=capturable,
                                      differentiable=differentiable, fused=fused,
                                      decoupled_weight_decay=decoupled_weight_decay))

    def _check_group(self, group: Mapping[str, Any]) -> None:
        super()._check_group(group)
        beta1, beta2 = group["betas"]
        if group["eps"] < 0 or group["weight_decay"] < 0:
            raise ValueError(f"{type(self).__name__}: eps, weight_decay must be >= 0, got "
                             f"{group['eps']}, {group['weight_decay']}")
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"{type(self).__name__}: betas must be in [0, 1), got {group['betas']}")

    def _init_state(self, index: int, param: Tensor, group: Mapping[str, Any]) -> None:
        self._counter(index)
        self._state_tensor(index, "exp_avg", param)
        self._state_tensor(index, "exp_avg_sq", param)

    def _update(self, index: int, p: Tensor, grad: Tensor, hyper: Callable[[str], Any]) -> None:
        lr, (beta1, beta2), eps, weight_decay = hyper("lr"), hyper("betas"), hyper("eps"), hyper("weight_decay")
        state = self.state[index]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        step = state["step"].add_(1).float()
        if weight_decay:
            if hyper("decoupled_weight_decay"):
                p.assign(p * (1 - lr * weight_decay))
            else:
                grad = grad + p * weight_decay
        # exp_avg.lerp_(grad, 1 - beta1): PyTorch's lerp for a weight below 0.5
        exp_avg.assign(exp_avg + (1 - beta1) * (grad - exp_avg))
        # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        exp_avg_sq.assign(exp_avg_sq * beta2 + (1 - beta2) * grad * grad)
        bias_correction1 = _one_minus_power(beta1, step)
        bias_correction2 = _one_minus_power(beta2, step)
        step_size = lr / bias_correction1
        denom = exp_avg_sq.sqrt() / bias_correction2.sqrt() + eps
        # param.addcdiv_(exp_avg, denom, value=-step_size)
        p.assign(p - step_size * exp_avg / denom)


class AdamW(Adam):
    """PyTorch's AdamW: Adam with decoupled weight decay `p *= 1 - lr * weight_decay`."""

    def __init__(self, params: Iterable[Tensor] | Iterable[Mapping[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 amsgrad: bool = False, *, maximize: bool = False, foreach: bool | None = None,
                 capturable: bool = False, differentiable: bool = False, fused: bool | None = None) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize, foreach=foreach, capturable=capturable,
                         differentiable=differentiable, fused=fused, decoupled_weight_decay=True)


class RMSprop(Optimizer):
    """PyTorch's RMSprop: a running mean of squared gradients (centered: minus the squared
    running mean of gradients) scales each step; optional momentum and L2 weight decay.

    State per parameter: 'step', 'square_avg', 'momentum_buffer' (momentum > 0),
    'grad_avg' (centered), as in torch."""

    def __init__(self, params: Iterable[Tensor] | Iterable[Mapping[str, Any]], lr: float = 1e-2,
                 alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0,
                 centered: bool = False, capturable: bool = False, foreach: bool | None = None,
                 maximize: bool = False, differentiable: bool = False) -> None:
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, capturable=capturable, foreach=foreach,
                                      maximize=maximize, differentiable=differentiable))

    def _check_group(self, group: Mapping[str, Any]) -> None:
        super()._check_group(group)
        for key in ("alpha", "eps", "weight_decay", "momentum"):
            if group[key] < 0:
                raise ValueError(f"RMSprop: invalid {key} value: {group[key]}")

    def _init_state(self, index: int, param: Tensor, group: Mapping[str, Any]) -> None:
        self._counter(index)
        self._state_tensor(index, "square_avg", param)
        if group["momentum"] > 0:
            self._state_tensor(index, "momentum_buffer", param)
        if group["centered"]:
            self._state_tensor(index, "grad_avg", param)

    def _update(self, index: int, p: Tensor, grad: Tensor, hyper: Callable[[str], Any]) -> None:
        state = self.state[index]
        lr, alpha, eps, weight_decay = hyper("lr"), hyper("alpha"), hyper("eps"), hyper("weight_decay")
        state["step"].add_(1)
        if weight_decay:
            grad = grad + p * weight_decay
        square_avg = state["square_avg"]
        square_avg.assign(square_avg * alpha + (1 - alpha) * grad * grad)
        if "grad_avg" in state:
            grad_avg = state["grad_avg"]
            grad_avg.assign(grad_avg + (1 - alpha) * (grad - grad_avg))   # lerp_(grad, 1 - alpha)
            avg = (square_avg - grad_avg * grad_avg).sqrt() + eps
        else:
            avg = square_avg.sqrt() + eps
        if "momentum_buffer" in state:
            buf = state["momentum_buffer"]
            buf.assign(buf * hyper("momentum") + grad / avg)
            p.assign(p - buf * lr)
        else:
            p.assign(p - lr * grad / avg)


class Adagrad(Optimizer):
    """PyTorch's Adagrad: steps scaled by the root of the sum of squared gradients, with the
    rate lr / (1 + (step - 1) * lr_decay). State per parameter: 'step' and 'sum'."""

    def __init__(self, params: Iterable[Tensor] | Iterable[Mapping[str, Any]], lr: float = 1e-2,
                 lr_decay: float = 0.0, weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, foreach: bool | None = None, *, maximize: bool = False,
                 differentiable: bool = False, fused: bool | None = None) -> None:
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                                      maximize=maximize, differentiable=differentiable, fused=fused))

    def _check_group(self, group: Mapping[str, Any]) -> None:
        super()._check_group(group)
        for key in ("lr_decay", "weight_decay", "initial_accumulator_value", "eps"):
            if group[key] < 0:
                raise ValueError(f"Adagrad: invalid {key} value: {group[key]}")

    def _init_state(self, index: int, param: Tensor, group: Mapping[str, Any]) -> None:
        self._counter(index)
        self._state_tensor(index, "sum", param, fill=group["initial_accumulator_value"])

    def _update(self, index: int, p: Tensor, grad: Tensor, hyper: Callable[[str], Any]) -> None:
        state = self.state[index]
        step = state["step"].add_(1).float()
        if hyper("weight_decay"):
            grad = grad + p * hyper("weight_decay")
        clr = hyper("lr") / ((step - 1) * hyper("lr_decay") + 1)
        state["sum"].assign(state["sum"] + grad * grad)
        p.assign(p - clr * grad / (state["sum"].sqrt() + hyper("eps")))


def _one_minus_power(beta: float | Tensor, t: Tensor) -> Tensor:
    """1 - beta ** t for a float32 step count t >= 1, accurate to float32 rounding.

    Written directly, beta ** t (near 1 for beta = 0.999) loses the low digits that
    1 - beta ** t needs: a relative error of ~1e-5 in Adam's bias correction at
    step 1, where PyTorch computes it in float64. Instead use
    1 - beta**t = -expm1(t * log(beta)) and expm1(x) = tanh(x / 2) * (exp(x) + 1),
    which keeps its relative accuracy for small |x|. A traced beta (cycled by OneCycleLR)
    takes its logarithm on the device.
    """
    if isinstance(beta, Tensor):
        x = t * beta.log()
    elif beta == 0.0:
        return constant(1.0, t.shape, FLOAT)
    else:
        x = t * math.log(beta)
    return -(x * 0.5).tanh() * (x.exp() + 1)


# torch.optim.lr_scheduler's place: `from autodiff.nn.optim import lr_scheduler`
from . import lr_scheduler  # noqa: E402,F401
