"""Losses, functional and as modules, with torch.nn.functional's arguments and reductions.

Every loss is a composite of primitive ops, so it runs on every backend and gets its
gradient from the ops' VJP rules. Class-index losses (cross_entropy, nll_loss) follow
torch's weighted-mean rule: with `reduction='mean'` the sum of the per-element losses is
divided by the sum of the weights of the targets that are not `ignore_index` (their count
without `weight`), which is nan when every target is ignored, as in torch.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..frontend.composites import log_softmax, one_hot
from ..frontend.functions import where
from ..frontend.tensor import Tensor, as_tensor, constant
from ..frontend.trace import trace_error
from ..ir.dtypes import INT
from .module import Module

REDUCTIONS = ("none", "mean", "sum")


def _reduce(loss: Tensor, reduction: str, opname: str, batchmean: bool = False) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    if batchmean and reduction == "batchmean":
        return loss.sum() / loss.shape[0] if loss.ndim else loss.sum()
    allowed = REDUCTIONS + (("batchmean",) if batchmean else ())
    raise trace_error(opname, f"reduction must be one of {allowed}, got {reduction!r}")


def mse_loss(input: Tensor, target: Tensor, size_average: Any = None, reduce: Any = None,
             reduction: str = "mean", weight: Tensor | None = None) -> Tensor:
    _deprecated(size_average, reduce, "mse_loss")
    if weight is not None:
        raise trace_error("mse_loss", "the weight argument is not supported")
    diff = input - _same_shape(input, target, "mse_loss")
    return _reduce(diff * diff, reduction, "mse_loss")


def _same_shape(input: Tensor, target: Tensor, opname: str) -> Tensor:
    target = as_tensor(target, input)
    if input.shape != target.shape:
        raise trace_error(opname, f"input {input.shape} and target {target.shape} differ")
    return target


def _class_last(x: Tensor) -> Tensor:
    """(N, C, d1, ...) -> (N, d1, ..., C): the class axis last, where the reductions run."""
    if x.ndim <= 2:
        return x
    return x.permute((0,) + tuple(range(2, x.ndim)) + (1,))


def _check_weight(weight: Any, classes: int, opname: str) -> Tensor | None:
    if weight is None:
        return None
    weight = weight if isinstance(weight, Tensor) else Tensor(np.asarray(weight, np.float32),
                                                             requires_grad=False)
    if weight.shape != (classes,):
        raise trace_error(opname, f"weight must have shape ({classes},), got {weight.shape}")
    return weight


def _class_targets(scores: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
                   opname: str) -> tuple[Tensor, Tensor]:
    """The target rows as one-hot weights (each row weight[t], 0 where t == ignore_index) and
    each element's weight (the mean's denominator terms); `scores` has its class axis last."""
    if target.shape != scores.shape[:-1]:
        raise trace_error(opname, f"class-index targets must have shape {scores.shape[:-1]}, got "
                          f"{target.shape} for input {scores.shape}")
    if target.numel() == 0:   # an empty batch: nothing to pick (and no index to check)
        picked = constant(0.0, scores.shape)
        return picked, picked.sum(-1)
    kept = target.ne(ignore_index)
    # an ignored target may lie outside [0, C): send it to class 0, whose row the mask clears
    picked = one_hot(where(kept, target, 0), scores.shape[-1], opname) * kept.float().unsqueeze(-1)
    if weight is not None:
        picked = picked * weight
    return picked, picked.sum(-1)


def _weighted_mean(loss: Tensor, weights: Tensor, reduction: str, opname: str) -> Tensor:
    if reduction == "mean":
        total = weights.sum()
        none_kept = total.eq(0.0)
        # no target kept: nan as in torch (0 / 0), but zero gradients, as torch's backward
        # writes none: the division's branch gets no gradient there (not 0 * inf = nan)
        return where(none_kept, total / total, loss.sum() / where(none_kept, 1.0, total))
    return _reduce(loss, reduction, opname)


def _check_input(input: Tensor, opname: str) -> None:
    if input.ndim == 0:
        raise trace_error(opname, "input must have a class axis: (C,), (N, C) or (N, C, d1, ...), got a 0-d tensor")


def nll_loss(input: Tensor, target: Tensor, weight: Tensor | None = None, size_average: Any = None,
             ignore_index: int = -100, reduce: Any = None, reduction: str = "mean") -> Tensor:
    """Negative log likelihood of int32 class indices under log-probabilities `input`
    ((C,), (N, C) or (N, C, d1, ...)), torch's weighted mean and ignore_index."""
    _deprecated(size_average, reduce, "nll_loss")
    _check_input(input, "nll_loss")
    if target.dtype != INT:
        raise trace_error("nll_loss", f"target must be int32 class indices, got {target.dtype}")
    scores = _class_last(input)
    picked, weights = _class_targets(scores, target, _check_weight(weight, scores.shape[-1], "nll_loss"),
                                     ignore_index, "nll_loss")
    loss = -(scores * picked).sum(-1)
    return _weighted_mean(loss, weights, reduction, "nll_loss")


def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None, size_average: Any = None,
                  ignore_index: int = -100, reduce: Any = None, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """Cross entropy of logits `input` ((C,), (N, C) or (N, C, d1, ...), classes on axis 1).

    `target` is int32 class indices (the input's shape without the class axis), or float32
    class probabilities of the input's shape, as in PyTorch. With class indices and
    label smoothing e the target row is (1 - e) * weight[t] at t plus e / C * weight[c] at
    every c, and the mean divides by the weights of the targets kept, as torch does.
    """
    _deprecated(size_average, reduce, "cross_entropy")
    _check_input(input, "cross_entropy")
    if not 0.0 <= label_smoothing <= 1.0:
        raise trace_error("cross_entropy", f"label_smoothing must be between 0.0 and 1.0, got {label_smoothing}")
    logp = log_softmax(_class_last(input), -1)
    classes = logp.shape[-1]
    weight = _check_weight(weight, classes, "cross_entropy")
    if target.dtype == INT:
        picked, weights = _class_targets(logp, target, weight, ignore_index, "cross_entropy")
        if label_smoothing:
            spread = target.ne(ignore_index).float().unsqueeze(-1) * (label_smoothing / classes)
            picked = picked * (1 - label_smoothing) + (spread * weight if weight is not None else spread)
        return _weighted_mean(-(logp * picked).sum(-1), weights, reduction, "cross_entropy")
    probs = _same_shape(_class_last(input), _class_last(target), "cross_entropy")
    if label_smoothing:
        probs = probs * (1 - label_smoothing) + label_smoothing / classes
    if weight is not None:
        probs = probs * weight
    return _reduce(-(logp * probs).sum(-1), reduction, "cross_entropy")


def binary_cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None, size_average: Any = None,
                         reduce: Any = None, reduction: str = "mean") -> Tensor:
    """-w (t log x + (1 - t) log(1 - x)) for probabilities x, each log clamped at -100 as in torch."""
    _deprecated(size_average, reduce, "binary_cross_entropy")
    target = _same_shape(input, target, "binary_cross_entropy")
    loss = -(target * input.log().maximum(-100.0) + (1 - target) * (1 - input).log().maximum(-100.0))
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction, "binary_cross_entropy")


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor, weight: Tensor | None = None,
                                     size_average: Any = None, reduce: Any = None, reduction: str = "mean",
                                     pos_weight: Tensor | None = None) -> Tensor:
    """binary_cross_entropy(sigmoid(x), t) in the stable form torch uses:
    (1 - t) x - (1 + (pos_weight - 1) t) log_sigmoid(x), log_sigmoid(x) = min(x, 0) - log(1 + exp(-|x|))."""
    _deprecated(size_average, reduce, "binary_cross_entropy_with_logits")
    target = _same_shape(input, target, "binary_cross_entropy_with_logits")
    log_sigmoid = input.minimum(0.0) - ((-input.abs()).exp() + 1).log()
    log_weight = (pos_weight - 1) * target + 1 if pos_weight is not None else 1.0
    loss = (1 - target) * input - log_weight * log_sigmoid
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction, "binary_cross_entropy_with_logits")


def l1_loss(input: Tensor, target: Tensor, size_average: Any = None, reduce: Any = None,
            reduction: str = "mean") -> Tensor:
    _deprecated(size_average, reduce, "l1_loss")
    return _reduce((input - _same_shape(input, target, "l1_loss")).abs(), reduction, "l1_loss")


def smooth_l1_loss(input: Tensor, target: Tensor, size_average: Any = None, reduce: Any = None,
                   reduction: str = "mean", beta: float = 1.0) -> Tensor:
    """0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta (beta = 0: the L1 loss)."""
    _deprecated(size_average, reduce, "smooth_l1_loss")
    if beta < 0:
        raise trace_error("smooth_l1_loss", f"beta must be >= 0, got {beta}")
    diff = (input - _same_shape(input, target, "smooth_l1_loss")).abs()
    if beta == 0:
        return _reduce(diff, reduction, "smooth_l1_loss")
    loss = where(diff.lt(beta), diff * diff * (0.5 / beta), diff - 0.5 * beta)
    return _reduce(loss, reduction, "smooth_l1_loss")


def huber_loss(input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0,
               weight: Tensor | None = None) -> Tensor:
    """0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta)."""
    if weight is not None:
        raise trace_error("huber_loss", "the weight argument is not supported")
    if delta <= 0:
        raise trace_error("huber_loss", f"delta must be > 0, got {delta}")
    diff = (input - _same_shape(input, target, "huber_loss")).abs()
    loss = where(diff.lt(delta), diff * diff * 0.5, (diff - 0.5 * delta) * delta)
    return _reduce(loss, reduction, "huber_loss")


def kl_div(input: Tensor, target: Tensor, size_average: Any = None, reduce: Any = None,
           reduction: str = "mean", log_target: bool = False) -> Tensor:
    """target (log target - input) for log-probabilities `input`; 0 where target is 0 (torch's
    xlogy); 'batchmean' divides the sum by the batch size (the first axis)."""
    _deprecated(size_average, reduce, "kl_div")
    target = _same_shape(input, target, "kl_div")
    if log_target:
        loss = target.exp() * (target - input)
    else:
        positive = target.gt(0.0)
        loss = where(positive, target * where(positive, target, 1.0).log(), 0.0) - target * input
    return _reduce(loss, reduction, "kl_div", batchmean=True)


def _deprecated(size_average: Any, reduce: Any, opname: str) -> None:
    for name, value in (("size_average", size_average), ("reduce", reduce)):
        if value is not None:
            raise trace_error(opname, f"the deprecated argument {name} is not supported; use reduction=")


# --- modules -------------------------------------------------------------------------------

class _Loss(Module):
    """A loss module: its reduction, and (for the deprecated torch arguments) an error."""

    def __init__(self, size_average: Any = None, reduce: Any = None, reduction: str = "mean") -> None:
        super().__init__()
        _deprecated(size_average, reduce, type(self).__name__)
        self.reduction = reduction


class _WeightedLoss(_Loss):
    def __init__(self, weight: Any = None, size_average: Any = None, reduce: Any = None,
                 reduction: str = "mean") -> None:
        super().__init__(size_average, reduce, reduction)
        if weight is not None and not isinstance(weight, Tensor):
            weight = Tensor(np.asarray(weight, np.float32), name="weight", requires_grad=False)
        self.weight = weight


class CrossEntropyLoss(_WeightedLoss):
    def __init__(self, weight: Any = None, size_average: Any = None, ignore_index: int = -100,
                 reduce: Any = None, reduction: str = "mean", label_smoothing: float = 0.0) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing)


class NLLLoss(_WeightedLoss):
    def __init__(self, weight: Any = None, size_average: Any = None, ignore_index: int = -100,
                 reduce: Any = None, reduction: str = "mean") -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index = ignore_index

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                        reduction=self.reduction)


class BCELoss(_WeightedLoss):
    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy(input, target, weight=self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(_WeightedLoss):
    def __init__(self, weight: Any = None, size_average: Any = None, reduce: Any = None,
                 reduction: str = "mean", pos_weight: Any = None) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        if pos_weight is not None and not isinstance(pos_weight, Tensor):
            pos_weight = Tensor(np.asarray(pos_weight, np.float32), name="pos_weight", requires_grad=False)
        self.pos_weight = pos_weight

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy_with_logits(input, target, weight=self.weight, reduction=self.reduction,
                                                pos_weight=self.pos_weight)


class MSELoss(_Loss):
    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return mse_loss(input, target, reduction=self.reduction)


class L1Loss(_Loss):
    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return l1_loss(input, target, reduction=self.reduction)


class SmoothL1Loss(_Loss):
    def __init__(self, size_average: Any = None, reduce: Any = None, reduction: str = "mean",
                 beta: float = 1.0) -> None:
        super().__init__(size_average, reduce, reduction)
        self.beta = beta

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)


class HuberLoss(_Loss):
    def __init__(self, reduction: str = "mean", delta: float = 1.0) -> None:
        super().__init__(reduction=reduction)
        self.delta = delta

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return huber_loss(input, target, reduction=self.reduction, delta=self.delta)


class KLDivLoss(_Loss):
    def __init__(self, size_average: Any = None, reduce: Any = None, reduction: str = "mean",
                 log_target: bool = False) -> None:
        super().__init__(size_average, reduce, reduction)
        self.log_target = log_target

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return kl_div(input, target, reduction=self.reduction, log_target=self.log_target)
