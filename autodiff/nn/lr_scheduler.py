"""Learning-rate schedulers (torch.optim.lr_scheduler), computed on the device.

A scheduler keeps a persistent int32 step counter (`last_epoch`, 0 after construction as in
torch); `scheduler.step()` traces `counter += 1`, and the optimizer's `step()` asks the
scheduler for each group's rate, computed from the counter where the step is traced. So
`optimizer.step(); scheduler.step()` written inside an `ir_for` body changes the rate every
iteration, as in an eager torch loop.

torch updates `group['lr']` recursively (chainable forms); here each rate is torch's closed
form of the counter (equal up to float32 rounding). `get_last_lr()` returns traced 0-d
tensors (pass them to a Receiver to watch them), not floats. One scheduler drives an
optimizer; combine schedules with SequentialLR. A LambdaLR's function receives the step as a
float32 0-d tensor and must build its factor from traced operations (`0.95 ** epoch`,
`ad.minimum(1.0, (epoch + 1) / 10)`), not Python's `min` or `math`.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import TraceError
from ..frontend.functions import where
from ..frontend.tensor import Tensor, as_tensor
from ..ir.dtypes import INT

__all__ = ["LRScheduler", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "LambdaLR",
           "ConstantLR", "LinearLR", "OneCycleLR", "SequentialLR"]


class LRScheduler:
    """Base class: the counter, the optimizer link, state dicts; subclasses give `_rate`."""

    def __init__(self, optimizer: Any, last_epoch: int = -1) -> None:
        if last_epoch != -1:
            raise TraceError(f"{type(self).__name__}: last_epoch={last_epoch} is not supported; resume with "
                             "load_state_dict (or checkpoint.restore), which sets the device counter")
        if not hasattr(optimizer, "param_groups"):
            raise TraceError(f"{type(self).__name__}: {type(optimizer).__name__} is not an Optimizer")
        if optimizer._step_traced:
            raise TraceError(f"{type(self).__name__}: {type(optimizer).__name__}.step() was already traced with "
                             "a constant learning rate; build the scheduler before tracing the training loop")
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            if "initial_lr" not in group:
                dict.__setitem__(group, "initial_lr", group["lr"])
        self.base_lrs: list[float] = [group["initial_lr"] for group in optimizer.param_groups]
        self._owner: LRScheduler | None = None   # a SequentialLR that drives this one
        self._replaced: LRScheduler | None = optimizer._scheduler   # the optimizer's scheduler before this one
        self._counter = Tensor(np.zeros((), np.int32), name=f"{type(self).__name__}.last_epoch", dtype=INT,
                               requires_grad=False)
        optimizer._scheduler = self

    @property
    def last_epoch(self) -> Tensor:
        """The step counter (a persistent int32 tensor; `.numpy()` after a run)."""
        return self._counter

    def step(self, epoch: Any = None) -> None:
        """Trace `last_epoch += 1`: the next optimizer step uses the next rate."""
        if epoch is not None:
            raise TraceError(f"{type(self).__name__}.step: the epoch argument is deprecated in torch and not supported")
        self._counter.add_(1)

    def get_last_lr(self) -> list[Tensor]:
        """Each group's rate for the next optimizer step, as traced 0-d tensors."""
        epoch = self._counter.float()
        return [as_tensor(self._rate(g, epoch)) for g in range(len(self.base_lrs))]

    get_lr = get_last_lr

    def _rate(self, group: int, epoch: Tensor) -> Tensor | float:
        """Group `group`'s learning rate at step `epoch` (a float32 0-d tensor)."""
        raise NotImplementedError(f"{type(self).__name__} has no rate")

    def _momentum(self, group: int, epoch: Tensor) -> Tensor | None:
        """Group `group`'s scheduled momentum (OneCycleLR cycles it), or None."""
        return None

    def _scheduled(self, group: int, key: str) -> Any:
        """What the optimizer's step() reads for hyper-parameter `key` of `group`, or None to
        keep the group's own value."""
        replaced = self._replaced
        while replaced is not None:
            if replaced._owner is not self:
                raise TraceError(f"{type(self.optimizer).__name__} has two schedulers ({type(replaced).__name__}, "
                                 f"{type(self).__name__}): chaining them is not supported; combine them with "
                                 "SequentialLR, or LambdaLR with the product of the factors")
            replaced = replaced._replaced
        epoch = self._counter.float()
        if key == "lr":
            return self._rate(group, epoch)
        if key in ("momentum", "betas"):
            momentum = self._momentum(group, epoch)
            if momentum is None:
                return None
            return momentum if key == "momentum" else (momentum, self.optimizer.param_groups[group]["betas"][1])
        return None

    def state_dict(self) -> dict[str, np.ndarray]:
        """The counter's value (what a checkpoint stores; the schedule itself is the program's)."""
        return {"last_epoch": self._counter.numpy()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Set the counter from ours or torch's state_dict (its other entries are ignored)."""
        self._prepare_load(state_dict)()

    def _prepare_load(self, state_dict: Mapping[str, Any], strict: bool = True) -> Callable[[], None]:
        if "last_epoch" not in state_dict:
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing ['last_epoch'], got {list(state_dict)}")
        value = np.array(np.asarray(state_dict["last_epoch"]), dtype=np.int32)
        if value.shape != ():
            raise TraceError(f"{type(self).__name__}.load_state_dict: last_epoch must be a scalar, got {value.shape}")
        var = self._counter._var

        def write() -> None:
            var.value = value
        return write


def _per_group(value: Any, count: int, name: str, owner: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{owner}: expected {count} values for {name}, got {len(value)}")
        return list(value)
    return [value] * count


class StepLR(LRScheduler):
    """lr * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer: Any, step_size: int, gamma: float = 0.1, last_epoch: int = -1) -> None:
        self.step_size, self.gamma = int(step_size), gamma
        super().__init__(optimizer, last_epoch)

    def _rate(self, group: int, epoch: Tensor) -> Tensor:
        return self.base_lrs[group] * self.gamma ** (epoch.int() // self.step_size).float()


class MultiStepLR(LRScheduler):
    """lr * gamma ** (the number of milestones reached; a repeated milestone counts each time)."""

    def __init__(self, optimizer: Any, milestones: Sequence[int], gamma: float = 0.1, last_epoch: int = -1) -> None:
        self.milestones, self.gamma = sorted(int(m) for m in milestones), gamma
        super().__init__(optimizer, last_epoch)

    def _rate(self, group: int, epoch: Tensor) -> Tensor | float:
        if not self.milestones:
            return self.base_lrs[group]
        reached = sum(epoch.ge(float(m)).float() for m in self.milestones)
        return self.base_lrs[group] * self.gamma ** reached


class ExponentialLR(LRScheduler):
    """lr * gamma ** epoch."""

    def __init__(self, optimizer: Any, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def _rate(self, group: int, epoch: Tensor) -> Tensor:
        return self.base_lrs[group] * self.gamma ** epoch


class CosineAnnealingLR(LRScheduler):
    """eta_min + (lr - eta_min) (1 + cos(pi epoch / T_max)) / 2 (past T_max it rises again, as torch's)."""

    def __init__(self, optimizer: Any, T_max: int, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer, last_epoch)

    def _rate(self, group: int, epoch: Tensor) -> Tensor:
        cosine = (epoch * (math.pi / self.T_max)).cos()
        return self.eta_min + (self.base_lrs[group] - self.eta_min) * (cosine + 1) * 0.5


class LambdaLR(LRScheduler):
    """lr * lr_lambda(epoch), the function (one, or one per group) traced on a float32 0-d epoch."""

    def __init__(self, optimizer: Any, lr_lambda: Callable[[Tensor], Any] | Sequence[Callable[[Tensor], Any]],
                 last_epoch: int = -1) -> None:
        self.lr_lambdas = _per_group(lr_lambda, len(optimizer.param_groups), "lr_lambda", "LambdaLR")
        super().__init__(optimizer, last_epoch)

    def _rate(self, group: int, epoch: Tensor) -> Tensor | float:
        factor = self.lr_lambdas[group](epoch)
        if isinstance(factor, bool) or not isinstance(factor, (Tensor, int, float)):
            raise TraceError(f"LambdaLR: lr_lambda returned {type(factor).__name__}; build the factor from "
                             "the epoch tensor with traced operations")
        return self.base_lrs[group] * factor


class ConstantLR(LRScheduler):
    """lr * factor until total_iters steps, then lr."""

    def __init__(self, optimizer: Any, factor: float = 1.0 / 3, total_iters: int = 5, last_epoch: int = -1) -> None:
        if not 0 <= factor <= 1:
            raise ValueError("Constant multiplicative factor expected to be between 0 and 1.")
        self.factor, self.total_iters = factor, total_iters
        super().__init__(optimizer, last_epoch)

    def _rate(self, group: int, epoch: Tensor) -> Tensor:
        return where(epoch.lt(float(self.total_iters)), self.base_lrs[group] * self.factor, self.base_lrs[group])


class LinearLR(LRScheduler):
    """lr * (start_factor + (end_factor - start_factor) min(epoch, total_iters) / total_iters): linear warmup."""

    def __init__(self, optimizer: Any, start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5,
                 last_epoch: int = -1) -> None:
        if not 0 < start_factor <= 1:
            raise ValueError("Starting multiplicative factor expected to be greater than 0 and less or equal to 1.")
        if not 0 <= end_factor <= 1:
            raise ValueError("Ending multiplicative factor expected to be between 0 and 1.")
        self.start_factor, self.end_factor, self.total_iters = start_factor, end_factor, total_iters
        super().__init__(optimizer, last_epoch)

    def _rate(self, group: int, epoch: Tensor) -> Tensor:
        done = epoch.minimum(float(self.total_iters)) * (1.0 / self.total_iters)
        return self.base_lrs[group] * (self.start_factor + (self.end_factor - self.start_factor) * done)


class OneCycleLR(LRScheduler):
    """torch's 1cycle policy: the rate rises from max_lr / div_factor to max_lr over pct_start of
    total_steps, then falls to that / final_div_factor (three_phase: back down first), cosine or
    linear; the momentum (or Adam's beta1) cycles the other way between max and base_momentum.
    Past total_steps the last phase's formula continues (torch raises)."""

    def __init__(self, optimizer: Any, max_lr: float | Sequence[float], total_steps: int | None = None,
                 epochs: int | None = None, steps_per_epoch: int | None = None, pct_start: float = 0.3,
                 anneal_strategy: str = "cos", cycle_momentum: bool = True,
                 base_momentum: float | Sequence[float] = 0.85, max_momentum: float | Sequence[float] = 0.95,
                 div_factor: float = 25.0, final_div_factor: float = 1e4, three_phase: bool = False,
                 last_epoch: int = -1) -> None:
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")
            total_steps = epochs * steps_per_epoch
        if total_steps <= 0 or not 0 <= pct_start <= 1 or anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"OneCycleLR: total_steps must be > 0, pct_start in [0, 1], anneal_strategy 'cos' or "
                             f"'linear'; got {total_steps}, {pct_start}, {anneal_strategy!r}")
        count = len(optimizer.param_groups)
        self.total_steps, self.anneal_strategy, self.cycle_momentum = total_steps, anneal_strategy, cycle_momentum
        maxima = _per_group(max_lr, count, "max_lr", "OneCycleLR")
        # (initial, max, min) rate and (max, base) momentum per group, as torch stores them in the group
        self._lrs = [(m / div_factor, m, m / div_factor / final_div_factor) for m in maxima]
        self._momenta = list(zip(_per_group(max_momentum, count, "max_momentum", "OneCycleLR"),
                                 _per_group(base_momentum, count, "base_momentum", "OneCycleLR")))
        if cycle_momentum:
            self._check_momentum(optimizer)
        end1 = float(pct_start * total_steps) - 1
        # (end step, rate from, rate to, momentum from, momentum to) by index into _lrs / _momenta
        self._phases = ([(end1, 0, 1, 0, 1), (float(2 * pct_start * total_steps) - 2, 1, 0, 1, 0),
                         (total_steps - 1.0, 0, 2, 0, 0)] if three_phase
                        else [(end1, 0, 1, 0, 1), (total_steps - 1.0, 1, 2, 1, 0)])
        super().__init__(optimizer, last_epoch)
        for group, (initial, _, _) in zip(optimizer.param_groups, self._lrs):
            dict.__setitem__(group, "initial_lr", initial)
        self.base_lrs = [initial for initial, _, _ in self._lrs]

    @staticmethod
    def _check_momentum(optimizer: Any) -> None:
        for group in optimizer.param_groups:
            if "betas" in group:
                continue
            if "momentum" not in group:
                raise ValueError("optimizer must support momentum or beta1 with `cycle_momentum` option enabled")
            if not group["momentum"]:
                raise TraceError(f"OneCycleLR: cycle_momentum needs {type(optimizer).__name__} built with "
                                 "momentum > 0 (its momentum buffers are made then); or pass cycle_momentum=False")

    def _anneal(self, start: float, end: float, pct: Tensor) -> Tensor:
        if self.anneal_strategy == "cos":
            return end + (start - end) * 0.5 * ((pct * math.pi).cos() + 1)
        return (end - start) * pct + start

    def _cycle(self, values: tuple[float, ...], epoch: Tensor, first: int, second: int) -> Tensor:
        """The value of a phased quantity at `epoch`: each phase's anneal, chosen by where."""
        result: Tensor | None = None
        starts = [0.0] + [phase[0] for phase in self._phases[:-1]]
        for start, phase in reversed(list(zip(starts, self._phases))):
            end = phase[0]
            value = self._anneal(values[phase[first]], values[phase[second]], (epoch - start) * (1.0 / (end - start)))
            result = value if result is None else where(epoch.le(end), value, result)
        return result

    def _rate(self, group: int, epoch: Tensor) -> Tensor:
        return self._cycle(self._lrs[group], epoch, 1, 2)

    def _momentum(self, group: int, epoch: Tensor) -> Tensor | None:
        return self._cycle(self._momenta[group], epoch, 3, 4) if self.cycle_momentum else None


class SequentialLR(LRScheduler):
    """schedulers[i] from milestones[i - 1] on, each seeing the steps since its milestone."""

    def __init__(self, optimizer: Any, schedulers: Sequence[LRScheduler], milestones: Sequence[int],
                 last_epoch: int = -1) -> None:
        if len(schedulers) < 1 or len(milestones) != len(schedulers) - 1:
            raise ValueError(f"SequentialLR: expected {len(schedulers) - 1} milestones for {len(schedulers)} "
                             f"schedulers, got {len(milestones)}")
        if any(s.optimizer is not optimizer for s in schedulers):
            raise ValueError("SequentialLR: every scheduler must belong to the same optimizer")
        self._schedulers, self._milestones = list(schedulers), [int(m) for m in milestones]
        super().__init__(optimizer, last_epoch)
        for scheduler in self._schedulers:
            scheduler._owner = self

    def _rate(self, group: int, epoch: Tensor) -> Tensor:
        starts = [0] + self._milestones
        result = as_tensor(self._schedulers[-1]._rate(group, epoch - float(starts[-1])))
        for scheduler, start, end in reversed(list(zip(self._schedulers[:-1], starts, self._milestones))):
            result = where(epoch.lt(float(end)), scheduler._rate(group, epoch - float(start)), result)
        return result
