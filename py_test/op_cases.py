"""The op table that drives `test_ops.py`: one row per behaviour worth checking.

A row names its inputs (shape, dtype, value range or explicit values), an
autodiff lambda and a torch lambda (the same one where the APIs agree), and
optional tolerances. The checker builds the inputs, runs both, and compares the
outputs and the gradients of sum(out * random_weights) with respect to every
float input. Int inputs are int32 in autodiff and int64 in torch (what torch
wants for indices and targets).

`test_ops.py::test_every_op_has_a_row` fails when an `Op` appears in no traced
row, so a new primitive needs a row here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import autodiff as ad
import autodiff.nn.functional as F


@dataclass(frozen=True)
class Input:
    """How to make one input: random in [low, high], random ints, or explicit values."""
    shape: tuple[int, ...]
    dtype: str = "float32"
    low: float = -2.0
    high: float = 2.0
    values: tuple | None = None   # explicit data (ties, zeros, repeated indices), any nesting

    def make(self, rng: np.random.Generator) -> np.ndarray:
        if self.values is not None:
            array = np.array(self.values, dtype=self.dtype)
            assert array.shape == self.shape, f"values have shape {array.shape}, not {self.shape}"
            return array
        if self.dtype == "int32":
            return rng.integers(int(self.low), int(self.high), size=self.shape).astype(np.int32)
        return rng.uniform(self.low, self.high, size=self.shape).astype(np.float32)


def X(*shape: int, low: float = -2.0, high: float = 2.0) -> Input:
    """A float32 input, uniform in [low, high]."""
    return Input(tuple(shape), "float32", low, high)


def P(*shape: int, low: float = 0.5, high: float = 2.0) -> Input:
    """A positive float32 input (log, sqrt, division, pow bases)."""
    return Input(tuple(shape), "float32", low, high)


def I(*shape: int, high: int, low: int = 0) -> Input:  # noqa: E743 - reads like the others
    """An int32 input, uniform in [low, high)."""
    return Input(tuple(shape), "int32", low, high)


def V(values: Any, dtype: str = "float32") -> Input:
    """An input with explicit values."""
    return Input(np.array(values).shape, dtype, values=values)


@dataclass(frozen=True)
class OpCase:
    name: str
    inputs: tuple[Input, ...]
    ad_fn: Callable[..., Any]
    torch_fn: Callable[..., Any]
    atol: float = 1e-5
    rtol: float = 1e-4
    grad_atol: float = 1e-4
    grad_rtol: float = 1e-3
    xfail: str | None = None   # "BUG: ..." for a known package bug (strict: fixing it must drop this)

    def __repr__(self) -> str:
        return self.name


CASES: list[OpCase] = []


def case(name: str, inputs: list[Input] | Input, ad_fn: Callable[..., Any],
         torch_fn: Callable[..., Any] | None = None, xfail: str | None = None,
         **tolerances: float) -> None:
    """Add a row; `torch_fn` defaults to `ad_fn` (the APIs agree)."""
    inputs = (inputs,) if isinstance(inputs, Input) else tuple(inputs)
    assert all(c.name != name for c in CASES), f"duplicate row name {name}"
    CASES.append(OpCase(name, inputs, ad_fn, torch_fn or ad_fn, xfail=xfail, **tolerances))


# an operand that is a numpy array, not a tensor (becomes a constant tensor)
NP_CONST = np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4)
T_CONST = torch.from_numpy(NP_CONST)

# --- binary arithmetic -------------------------------------------------------------
case("add", [X(3, 4), X(3, 4)], lambda a, b: a + b)
case("sub", [X(3, 4), X(3, 4)], lambda a, b: a - b)
case("mul", [X(3, 4), X(3, 4)], lambda a, b: a * b)
case("div", [X(3, 4), P(3, 4)], lambda a, b: a / b)
case("div_negative_denominator", [X(3, 4), X(3, 4, low=-2.0, high=-0.5)], lambda a, b: a / b)
case("neg", X(3, 4), lambda a: -a)
case("scalar_left_ops", P(3, 4), lambda a: (1.5 + a) * (2.0 - a) + 3 * a - 1 / a)
case("scalar_right_ops", P(3, 4), lambda a: (a + 1) * (a - 2.5) / 4 + a * 0.5)
case("pow_scalar_fraction", P(3, 4), lambda a: a ** 2.5)
case("pow_square_negative_base", X(3, 4), lambda a: a ** 2)
case("pow_cube_negative_base", X(3, 4), lambda a: a.pow(3))
case("pow_tensor_exponent", [P(3, 4), X(3, 4, low=-1.5, high=1.5)], lambda a, b: a ** b)
case("pow_tensor_exponent_zero_base", [V([[0.0, 0.0, 1.5], [2.0, 0.0, 0.5]]), V([[2.0, 0.5, 1.0], [1.5, 3.0, 2.0]])],
     lambda a, b: a ** b)
case("pow_broadcast_exponent", [P(3, 4), X(4, low=-1.0, high=2.0)], lambda a, b: a.pow(b))
case("rpow_scalar_base", X(3, 4), lambda a: 2.0 ** a)
case("numpy_operand_right", X(3, 4), lambda a: a * NP_CONST + a, lambda a: a * T_CONST + a)
case("numpy_operand_left", X(3, 4), lambda a: NP_CONST - a, lambda a: T_CONST - a)

# --- broadcasting --------------------------------------------------------------------
case("broadcast_0d_tensor", [X(3, 4), X()], lambda a, s: a * s + s)
case("broadcast_col_row", [X(3, 1), X(1, 4)], lambda a, b: a + b)
case("broadcast_col_row_mul", [X(3, 1), X(1, 4)], lambda a, b: a * b - b)
case("broadcast_rank_change", [X(2, 3, 4), X(4)], lambda a, b: a * b)
case("broadcast_rank_change_left", [X(4), X(2, 3, 4)], lambda a, b: a - b)
case("broadcast_both_sides", [X(2, 1, 4), X(3, 1)], lambda a, b: a / (b * b + 1))
case("broadcast_size1_leading", [X(1, 3), X(2, 5, 3)], lambda a, b: a.maximum(b))

# --- unary -----------------------------------------------------------------------------
case("exp", X(3, 4), lambda a: a.exp())
case("log", P(3, 4, low=0.1, high=3.0), lambda a: a.log())
case("sqrt", P(3, 4, low=0.1, high=3.0), lambda a: a.sqrt())
case("rsqrt", P(3, 4, low=0.2, high=3.0), lambda a: a.rsqrt())
case("reciprocal", P(3, 4), lambda a: a.reciprocal())
case("sin", X(3, 4, low=-4, high=4), lambda a: a.sin())
case("cos", X(3, 4, low=-4, high=4), lambda a: a.cos())
case("tanh", X(3, 4, low=-3, high=3), lambda a: a.tanh())
case("tanh_saturated", X(3, 4, low=-30, high=30), lambda a: a.tanh())
case("sigmoid", X(3, 4, low=-5, high=5), lambda a: a.sigmoid())
case("sigmoid_saturated", X(3, 4, low=-60, high=60), lambda a: a.sigmoid())
case("relu", X(3, 4), lambda a: a.relu())
case("relu_at_zero", V([[-1.0, 0.0, 2.0], [0.0, 3.0, -0.5]]), lambda a: a.relu())
case("abs", X(3, 4), lambda a: a.abs())
case("abs_at_zero", V([[-1.0, 0.0, 2.0], [0.0, 3.0, -0.5]]), lambda a: a.abs())
case("erf", X(3, 4), lambda a: a.erf())
case("square", X(3, 4), lambda a: a.square())
case("sign", X(3, 4), lambda a: a.sign() * a)
case("sigmoid_log_lower_tail", X(3, 4, low=-30, high=-8), lambda a: a.sigmoid().log())
case("exp_int", I(3, 4, low=-3, high=3), lambda i: i.exp())
case("relu_int", I(3, 4, low=-3, high=3), lambda i: i.relu())
case("abs_int", I(3, 4, low=-3, high=3), lambda i: i.abs())
case("identity_contiguous", X(3, 4), lambda a: a.contiguous())
case("detach", X(3, 4), lambda a: a.detach() * a + a.detach())
case("free_functions", [X(3, 4), P(3, 4)],
     lambda a, p: ad.exp(a) + ad.log(p) + ad.sqrt(p) + ad.rsqrt(p) + ad.sin(a) + ad.cos(a)
     + ad.tanh(a) + ad.sigmoid(a) + ad.relu(a) + ad.abs(a),
     lambda a, p: torch.exp(a) + torch.log(p) + torch.sqrt(p) + torch.rsqrt(p) + torch.sin(a)
     + torch.cos(a) + torch.tanh(a) + torch.sigmoid(a) + torch.relu(a) + torch.abs(a))

# --- maximum, minimum, where, comparisons ------------------------------------------------
case("maximum", [X(3, 4), X(3, 4)], lambda a, b: a.maximum(b))
case("minimum", [X(3, 4), X(3, 4)], lambda a, b: a.minimum(b))
case("maximum_ties", [V([[1.0, 2.0, -1.0]]), V([[1.0, 0.5, -1.0]])], lambda a, b: a.maximum(b))
case("minimum_ties", [V([[1.0, 2.0, -1.0]]), V([[1.0, 0.5, -1.0]])], lambda a, b: a.minimum(b))
case("maximum_free_broadcast", [X(3, 1), X(4)], lambda a, b: ad.maximum(a, b) + ad.minimum(a, b),
     lambda a, b: torch.maximum(a, b) + torch.minimum(a, b))
case("maximum_scalar", X(3, 4), lambda a: a.maximum(0.5) + a.minimum(-0.5),
     lambda a: a.clamp(min=0.5) + a.clamp(max=-0.5))
case("where", [X(3, 4), X(3, 4)], lambda a, b: ad.where(a.gt(b), a * 2, b),
     lambda a, b: torch.where(a > b, a * 2, b))
case("where_scalar_branch", X(3, 4), lambda a: ad.where(a.lt(0.5), a, 0.0),
     lambda a: torch.where(a < 0.5, a, 0.0))
case("where_broadcast", [X(3, 1), X(1, 4), X()], lambda c, a, b: ad.where(c.gt(0), a, b),
     lambda c, a, b: torch.where(c > 0, a, b))
case("where_float_condition", [V([[1.0, 0.0, 1.0], [0.0, 0.0, 2.0]]), X(2, 3), X(2, 3)],
     lambda c, a, b: ad.where(c, a, b), lambda c, a, b: torch.where(c != 0, a, b))
case("where_method", [X(3, 4), X(3, 4)], lambda a, b: a.where(b.gt(0), b), lambda a, b: a.where(b > 0, b))
case("lt_gt_eq", [V([[1.0, 2.0, 3.0, -1.0]]), V([[1.0, 0.0, 4.0, -1.0]])],
     lambda a, b: ad.concat([a.lt(b), a.gt(b), a.eq(b)]),
     lambda a, b: torch.cat([(a < b).float(), (a > b).float(), (a == b).float()]))
case("le_ge_ne", [V([[1.0, 2.0, 3.0, -1.0]]), V([[1.0, 0.0, 4.0, -1.0]])],
     lambda a, b: ad.concat([a.le(b), a.ge(b), a.ne(b)]),
     lambda a, b: torch.cat([(a <= b).float(), (a >= b).float(), (a != b).float()]))
case("comparison_operators", [V([[1.0, 2.0, 3.0, -1.0]]), V([[1.0, 0.0, 4.0, -1.0]])],
     lambda a, b: ad.concat([a < b, a > b, a <= b, a >= b]),
     lambda a, b: torch.cat([(a < b).float(), (a > b).float(), (a <= b).float(), (a >= b).float()]))
case("comparison_broadcast_scalar", X(3, 4), lambda a: a.gt(0.25) * a + a.lt(-0.5),
     lambda a: (a > 0.25).float() * a + (a < -0.5).float())
case("comparison_int", [I(3, 4, high=4), I(3, 4, high=4)], lambda a, b: a.lt(b) + a.eq(b) * 2,
     lambda a, b: (a < b).int() + (a == b).int() * 2)

# --- reductions -------------------------------------------------------------------------
case("sum_all", X(3, 4), lambda a: a.sum())
case("sum_dim0", X(3, 4), lambda a: a.sum(0))
case("sum_neg_dim_keepdim", X(2, 3, 4), lambda a: a.sum(-1, keepdim=True))
case("sum_tuple_dims", X(2, 3, 4), lambda a: a.sum((0, -1)))
case("sum_int", I(3, 4, low=-5, high=5), lambda a: a.sum(1))
case("mean_all", X(3, 4), lambda a: a.mean())
case("mean_dim1", X(3, 4), lambda a: a.mean(1))
case("mean_neg_dim_keepdim", X(2, 3, 4), lambda a: a.mean(-2, keepdim=True))
case("mean_tuple_dims_keepdim", X(2, 3, 4), lambda a: a.mean((0, 2), keepdim=True))
case("max_all", X(3, 4), lambda a: a.max(), lambda a: torch.amax(a))
case("max_dim", X(3, 4), lambda a: a.max(1), lambda a: torch.amax(a, 1))
case("max_neg_dim_keepdim", X(2, 3, 4), lambda a: a.max(-1, keepdim=True),
     lambda a: torch.amax(a, -1, keepdim=True))
case("max_tuple_dims", X(2, 3, 4), lambda a: a.max((0, 2)), lambda a: torch.amax(a, (0, 2)))
case("max_ties", V([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]]), lambda a: a.max(1), lambda a: torch.amax(a, 1))
case("max_ties_all", V([[1.0, 3.0, 3.0], [3.0, 2.0, 2.0]]), lambda a: a.max(), lambda a: torch.amax(a))
case("max_int", I(3, 4, low=-9, high=9), lambda a: a.max(0), lambda a: torch.amax(a, 0))
case("min_all", X(3, 4), lambda a: a.min(), lambda a: torch.amin(a))
case("min_dim_keepdim", X(3, 4), lambda a: a.min(0, keepdim=True), lambda a: torch.amin(a, 0, keepdim=True))
case("min_neg_dim", X(2, 3, 4), lambda a: a.min(-2), lambda a: torch.amin(a, -2))
case("min_ties", V([[1.0, -3.0, -3.0], [2.0, 2.0, 5.0]]), lambda a: a.min(1), lambda a: torch.amin(a, 1))
case("argmax_int", I(3, 4, low=-9, high=9), lambda a: a.argmax(0))
case("mean_int", I(3, 4, low=-9, high=9), lambda a: a.mean(1), lambda a: a.float().mean(1))
case("sum_0d", X(), lambda a: a.sum() * 2)
case("max_0d", X(), lambda a: a.max(), lambda a: torch.amax(a))
case("argmax_all", X(3, 4), lambda a: a.argmax())
case("argmax_dim", X(3, 4), lambda a: a.argmax(1))
case("argmax_neg_dim_keepdim", X(2, 3, 4), lambda a: a.argmax(-2, keepdim=True))
case("argmax_ties_first", V([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]]), lambda a: a.argmax(1))
case("var_all", X(3, 4), lambda a: a.var())
case("var_dim", X(3, 4), lambda a: a.var(1))
case("var_neg_dim_keepdim", X(2, 3, 4), lambda a: a.var(-1, keepdim=True))
case("var_biased", X(3, 4), lambda a: a.var(0, unbiased=False), lambda a: a.var(0, correction=0))
case("var_tuple_dims", X(2, 3, 4), lambda a: a.var((0, 1)))

# --- movement ----------------------------------------------------------------------------
case("reshape", X(3, 4), lambda a: a.reshape(2, 6))
case("reshape_minus_one", X(2, 3, 4), lambda a: a.reshape(-1, 4) * 2)
case("reshape_tuple_arg", X(2, 3, 4), lambda a: a.reshape((4, 6)))
case("reshape_to_0d", X(1, 1), lambda a: a.reshape(()))
case("view", X(2, 3, 4), lambda a: a.view(6, 4))
case("permute", X(2, 3, 4), lambda a: a.permute(2, 0, 1))
case("permute_negative_dims", X(2, 3, 4), lambda a: a.permute(-1, -3, -2))
case("transpose", X(2, 3, 4), lambda a: a.transpose(0, 2))
case("transpose_negative", X(2, 3, 4), lambda a: a.transpose(-1, -2))
case("T", X(3, 4), lambda a: a.T)
case("mT", X(2, 3, 4), lambda a: a.mT)
case("unsqueeze", X(3, 4), lambda a: a.unsqueeze(1))
case("unsqueeze_negative", X(3, 4), lambda a: a.unsqueeze(-1))
case("squeeze_all", X(1, 3, 1, 4), lambda a: a.squeeze())
case("squeeze_dim", X(3, 1, 4), lambda a: a.squeeze(1))
case("squeeze_dim_not_one", X(3, 4), lambda a: a.squeeze(0))
case("squeeze_negative_dim", X(3, 4, 1), lambda a: a.squeeze(-1))
case("expand", X(3, 1), lambda a: a.expand(3, 4))
case("expand_minus_one_new_axes", X(3, 1), lambda a: a.expand(2, -1, 5))
case("expand_0d", X(), lambda a: a.expand(3, 4))
case("expand_as", [X(1, 4), X(3, 4)], lambda a, b: a.expand_as(b) * b)
case("flatten", X(2, 3, 4), lambda a: a.flatten())
case("flatten_start", X(2, 3, 4), lambda a: a.flatten(1))
case("flatten_range_negative", X(2, 3, 4, 2), lambda a: a.flatten(-3, -2))

# --- basic indexing -------------------------------------------------------------------------
case("index_int", X(3, 4), lambda a: a[1])
case("index_negative_int", X(3, 4), lambda a: a[-1])
case("index_two_ints", X(3, 4), lambda a: a[1, -2])
case("index_slice", X(5, 4), lambda a: a[1:3])
case("index_slice_second_axis", X(3, 5), lambda a: a[:, 1:])
case("index_negative_slice", X(5, 4), lambda a: a[-3:-1])
case("index_slice_overlong_stop", X(5, 4), lambda a: a[2:100])
case("index_step", X(7, 3), lambda a: a[::2])
case("index_steps_two_axes", X(7, 8), lambda a: a[1::3, ::2])
case("index_step_exact_multiple", X(6, 3), lambda a: a[0:6:3])
case("index_step_single", X(5, 3), lambda a: a[1::10])
case("index_none", X(3, 4), lambda a: a[None])
case("index_none_middle", X(3, 4), lambda a: a[:, None])
case("index_mixed", X(4, 5, 6), lambda a: a[1:, None, ::2, -1])
case("index_int_slice_int", X(4, 5, 6), lambda a: a[2, 1:4, 0])
case("index_empty_slice", X(5, 4), lambda a: a[3:1] * 2)
case("index_numpy_int", X(5, 4), lambda a: a[np.int64(2), 1:])
case("index_ellipsis_first", X(2, 3, 4), lambda a: a[..., 1])
case("index_ellipsis_middle", X(2, 3, 4), lambda a: a[0, ..., 1:3])
case("index_ellipsis_none", X(2, 3), lambda a: a[..., None])
case("index_ellipsis_alone", X(2, 3), lambda a: a[...] * 2)

# --- concat, stack, gather ---------------------------------------------------------------------
case("concat_dim0", [X(2, 3), X(4, 3)], lambda a, b: ad.concat([a, b]), lambda a, b: torch.cat([a, b]))
case("concat_negative_dim_three", [X(2, 3), X(2, 1), X(2, 2)], lambda a, b, c: ad.concat([a, b, c], -1),
     lambda a, b, c: torch.cat([a, b, c], -1))
case("concat_same_tensor", X(2, 3), lambda a: ad.cat([a, a * 2], 1), lambda a: torch.cat([a, a * 2], 1))
case("concat_int_and_float", [I(2, 3, high=5), X(2, 3)], lambda i, a: ad.concat([i, a]),
     lambda i, a: torch.cat([i, a]))
case("stack_dim0", [X(2, 3), X(2, 3)], lambda a, b: ad.stack([a, b]), lambda a, b: torch.stack([a, b]))
case("stack_dim1", [X(2, 3), X(2, 3), X(2, 3)], lambda a, b, c: ad.stack([a, b, c], 1),
     lambda a, b, c: torch.stack([a, b, c], 1))
case("stack_negative_dim", [X(2, 3), X(2, 3)], lambda a, b: ad.stack([a, b], -1),
     lambda a, b: torch.stack([a, b], -1))
case("gather_repeated_rows", [X(5, 3), V([0, 2, 2, 4, 0, 0], "int32")], lambda t, i: t[i])
case("gather_2d_indices", [X(6, 4), V([[1, 5, 1], [0, 1, 3]], "int32")], lambda t, i: t[i] * 2)
case("gather_0d_index", [X(5, 3), V(3, "int32")], lambda t, i: t[i])
case("gather_from_intermediate", [X(5, 3), V([1, 1, 4], "int32")], lambda t, i: (t * t)[i])
case("gather_then_matmul", [X(5, 3), I(4, high=5), X(3, 2)], lambda t, i, w: t[i] @ w)
case("gather_transposed_table", [X(3, 5), V([4, 4, 1], "int32")], lambda t, i: t.T[i])

# --- matmul -----------------------------------------------------------------------------------------
case("matmul_1d_1d", [X(4), X(4)], lambda a, b: a @ b)
case("matmul_1d_2d", [X(4), X(4, 3)], lambda a, b: a @ b)
case("matmul_2d_1d", [X(3, 4), X(4)], lambda a, b: a @ b)
case("matmul_2d_2d", [X(3, 4), X(4, 5)], lambda a, b: a @ b)
case("matmul_batched", [X(2, 3, 4), X(2, 4, 5)], lambda a, b: a @ b)
case("matmul_batch_broadcast", [X(2, 1, 3, 4), X(5, 4, 2)], lambda a, b: a @ b)
case("matmul_btd_de", [X(2, 3, 4), X(4, 5)], lambda a, b: a @ b)
case("matmul_2d_3d", [X(3, 4), X(2, 4, 5)], lambda a, b: a @ b)
case("matmul_1d_3d", [X(4), X(2, 4, 3)], lambda a, b: a @ b)
case("matmul_3d_1d", [X(2, 3, 4), X(4)], lambda a, b: a @ b)
case("matmul_outer_k1", [X(3, 1), X(1, 4)], lambda a, b: a @ b)
case("matmul_row_times_square", [X(1, 4), X(4, 4)], lambda a, b: a @ b @ b)
case("matmul_free_function", [X(3, 4), X(4, 2)], lambda a, b: ad.matmul(a, b), lambda a, b: torch.matmul(a, b))
case("matmul_self_transpose", X(3, 4), lambda a: a @ a.T)
case("matmul_int_operand", [X(3, 4), I(4, 2, low=-3, high=3)], lambda a, i: a @ i,
     lambda a, i: a @ i.float())

# --- one tensor used several times; non-contiguous views -------------------------------------------
case("reuse_in_expression", X(3, 4), lambda a: a * a + a.exp() * a - a.sin() / (a * a + 1))
case("reuse_across_branches", [X(3, 4), X(4, 4)], lambda a, w: (a @ w).tanh() @ w.T + a @ (w * w))
case("noncontig_transpose_add", [X(3, 4), X(4, 3)], lambda a, b: a.T + b * a.T)
case("noncontig_permute_exp", [X(2, 3, 4), X(4, 2, 3)], lambda a, b: a.permute(2, 0, 1).exp() * b)
case("noncontig_slice_matmul", [X(3, 5), X(2, 4)], lambda a, b: a[:, 1:3] @ b)
case("noncontig_transpose_reshape", X(3, 4), lambda a: a.T.reshape(-1) * 3)
case("noncontig_mT_matmul", [X(2, 4, 3), X(2, 4, 5)], lambda a, b: a.mT @ b)
case("noncontig_permute_slice_sum", X(4, 3, 5), lambda a: a.permute(1, 0, 2)[:, ::2].sum(-1))
case("noncontig_expand_then_permute", X(3, 1), lambda a: a.expand(3, 4).T * 2)

# --- dtypes and casts -------------------------------------------------------------------------------
case("int_plus_float", [I(3, 4, low=-5, high=5), X(3, 4)], lambda i, a: i + a)
case("float_times_int", [X(3, 4), I(3, 4, low=-5, high=5)], lambda a, i: a * i)
case("int_plus_int", [I(3, 4, low=-5, high=5), I(3, 4, low=-5, high=5)], lambda i, j: i + j * 2 - j)
case("int_times_float_scalar", I(3, 4, low=-5, high=5), lambda i: i * 2.5)
case("int_div_int_is_true_division", [I(3, 4, low=-9, high=9), I(3, 4, low=1, high=4)], lambda i, j: i / j)
case("int_neg", I(3, 4, low=-5, high=5), lambda i: -i)
case("cast_float", I(3, 4, low=-5, high=5), lambda i: i.float() * 0.5)
case("cast_int_truncates", X(3, 4, low=-4, high=4), lambda a: a.int())
case("cast_int_blocks_gradient", X(3, 4, low=-4, high=4), lambda a: a * a.int())
case("cast_float_exp_of_int", I(3, 4, low=-3, high=3), lambda i: i.float().exp())
case("where_int_float_branches", [X(3, 4), I(3, 4, low=-3, high=3)], lambda a, i: ad.where(a.gt(0), i, a),
     lambda a, i: torch.where(a > 0, i, a))
case("creation_helpers", X(3, 4),
     lambda a: a * ad.ones(3, 4) + ad.arange(4) + ad.full((3, 4), 0.5) + ad.zeros(3, 4)
     + ad.ones_like(a) * 2 + ad.full_like(a, 0.25) + ad.zeros_like(a),
     lambda a: a * torch.ones(3, 4) + torch.arange(4) + torch.full((3, 4), 0.5) + torch.zeros(3, 4)
     + torch.ones_like(a) * 2 + torch.full_like(a, 0.25) + torch.zeros_like(a))

# --- nn.functional ------------------------------------------------------------------------------------
case("softmax", X(3, 5), lambda a: F.softmax(a, -1), lambda a: TF.softmax(a, -1))
case("softmax_dim0", X(3, 5), lambda a: F.softmax(a, 0), lambda a: TF.softmax(a, 0))
case("softmax_large_logits", X(2, 4, low=50, high=90), lambda a: F.softmax(a, dim=-1),
     lambda a: TF.softmax(a, dim=-1))
case("softmax_masked_minus_inf", [X(3, 4), V([[0, 1, 0, 0], [1, 1, 0, 1], [0, 0, 0, 0]], "int32")],
     lambda a, m: F.softmax(ad.where(m.gt(0), float("-inf"), a), -1),
     lambda a, m: TF.softmax(a.masked_fill(m > 0, float("-inf")), -1))
case("log_softmax", X(3, 5), lambda a: F.log_softmax(a, -1), lambda a: TF.log_softmax(a, -1))
case("log_softmax_3d_dim1", X(2, 3, 4), lambda a: F.log_softmax(a, 1), lambda a: TF.log_softmax(a, 1))
case("gelu", X(3, 4, low=-4, high=4), lambda a: F.gelu(a), lambda a: TF.gelu(a))
case("gelu_tanh", X(3, 4, low=-4, high=4), lambda a: F.gelu(a, approximate="tanh"),
     lambda a: TF.gelu(a, approximate="tanh"))
case("silu", X(3, 4, low=-4, high=4), lambda a: F.silu(a), lambda a: TF.silu(a))
case("F_relu_sigmoid_tanh", X(3, 4), lambda a: F.relu(a) + F.sigmoid(a) * F.tanh(a),
     lambda a: TF.relu(a) + torch.sigmoid(a) * torch.tanh(a))
case("layer_norm_affine", [X(2, 3, 6), X(6), X(6)], lambda x, w, b: F.layer_norm(x, 6, w, b),
     lambda x, w, b: TF.layer_norm(x, (6,), w, b))
case("layer_norm_plain", X(4, 5), lambda x: F.layer_norm(x, (5,)), lambda x: TF.layer_norm(x, (5,)))
case("layer_norm_two_dims", [X(2, 3, 4), X(3, 4)], lambda x, w: F.layer_norm(x, (3, 4), w),
     lambda x, w: TF.layer_norm(x, (3, 4), w))
case("linear", [X(2, 3, 4), X(5, 4), X(5)], lambda x, w, b: F.linear(x, w, b), lambda x, w, b: TF.linear(x, w, b))
case("mse_loss", [X(3, 4), X(3, 4)], lambda a, b: F.mse_loss(a, b), lambda a, b: TF.mse_loss(a, b))
case("mse_loss_sum", [X(3, 4), X(3, 4)], lambda a, b: F.mse_loss(a, b, reduction="sum"),
     lambda a, b: TF.mse_loss(a, b, reduction="sum"))
case("mse_loss_none", [X(3, 4), X(3, 4)], lambda a, b: F.mse_loss(a, b, reduction="none"),
     lambda a, b: TF.mse_loss(a, b, reduction="none"))
case("cross_entropy_int_targets", [X(4, 5), I(4, high=5)], lambda x, t: F.cross_entropy(x, t),
     lambda x, t: TF.cross_entropy(x, t))
case("cross_entropy_int_targets_sum", [X(4, 5), V([1, 1, 0, 4], "int32")],
     lambda x, t: F.cross_entropy(x, t, reduction="sum"), lambda x, t: TF.cross_entropy(x, t, reduction="sum"))
case("cross_entropy_int_targets_none", [X(4, 5), I(4, high=5)],
     lambda x, t: F.cross_entropy(x, t, reduction="none"), lambda x, t: TF.cross_entropy(x, t, reduction="none"))
case("cross_entropy_1d_logits", [X(5), V(3, "int32")], lambda x, t: F.cross_entropy(x, t),
     lambda x, t: TF.cross_entropy(x, t))
case("cross_entropy_prob_targets", [X(4, 5), X(4, 5)], lambda x, p: F.cross_entropy(x, F.softmax(p, -1)),
     lambda x, p: TF.cross_entropy(x, TF.softmax(p, -1)))
case("cross_entropy_label_smoothing", [X(4, 5), I(4, high=5)],
     lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1),
     lambda x, t: TF.cross_entropy(x, t, label_smoothing=0.1))
case("one_hot", [I(2, 3, high=4), X(2, 3, 4)], lambda t, a: F.one_hot(t, 4) * a,
     lambda t, a: TF.one_hot(t, 4).float() * a)
case("one_hot_values", V([0, 3, 1, 3], "int32"), lambda t: F.one_hot(t, 5), lambda t: TF.one_hot(t, 5).float())

# --- small compositions ----------------------------------------------------------------------------
case("mlp_cross_entropy", [X(4, 3), X(3, 6), X(6), X(6, 5), V([0, 4, 2, 2], "int32")],
     lambda x, w1, b1, w2, t: F.cross_entropy((x @ w1 + b1).relu() @ w2, t),
     lambda x, w1, b1, w2, t: TF.cross_entropy((x @ w1 + b1).relu() @ w2, t))
case("two_outputs", X(3, 4), lambda a: (a.exp(), a.sum(0)))
case("int_and_float_outputs", X(3, 4), lambda a: (a.argmax(1), a.max(1)),
     lambda a: (torch.argmax(a, 1), torch.amax(a, 1)))
case("attention_scores", [X(2, 3, 4), X(2, 3, 4), X(2, 3, 4)],
     lambda q, k, v: F.softmax(q @ k.mT * 0.5, -1) @ v,
     lambda q, k, v: TF.softmax(q @ k.mT * 0.5, -1) @ v)

CASE_IDS = [c.name for c in CASES]


def params() -> list[Any]:
    """CASES as pytest params: readable ids, strict xfail marks on rows with a known bug."""
    return [pytest.param(c, id=c.name,
                         marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [])
            for c in CASES]
