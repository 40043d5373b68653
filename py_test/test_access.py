"""Access expressions: views lower to index arithmetic that reads the right elements.

Two levels:
- `autodiff.proc.index` on its own: `//` and `%` simplify with bounds analysis
  (merging axes then splitting them again gives back the plain variables; splitting
  then merging does too), and every simplification keeps the
  value (checked by evaluating over the whole domain);
- random chains of views (reshape, permute, expand, slices with and without steps,
  pad, concat) on a persistent tensor: `Lowering.read` maps every output element to
  the source element numpy's view of the same array holds, and the lowered program
  (fusion off) materializes the view with one copy kernel whose result equals numpy's.
"""
from __future__ import annotations

import random
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import autodiff as ad
from autodiff.frontend.functions import pad
from autodiff.opt.rewrite import Graph
from autodiff.proc.index import DivAtom, Index, ModAtom, Var, evaluate_index, flat_index, unflatten
from autodiff.proc.ir import Const, Guard, Load
from autodiff.proc.ir import loads_of as _loads
from autodiff.proc.lower import Lowering

MAX_ELEMENTS = 360


# --- helpers ---------------------------------------------------------------------------

def grid(variables: tuple[Var, ...]) -> Callable:
    """Values for `evaluate_index`: one broadcast axis per variable."""
    def values(atom):
        axis = variables.index(atom)
        shape = [1] * len(variables)
        shape[axis] = atom.extent
        return np.arange(atom.extent).reshape(shape)
    return values


def full_grid(form: Index, variables: tuple[Var, ...]) -> np.ndarray:
    shape = tuple(v.extent for v in variables)
    return np.broadcast_to(evaluate_index(form, grid(variables)), shape)


# --- simplification of // and % -----------------------------------------------------------

def test_split_of_a_flat_index_gives_back_the_variables():
    i, j = Var("i", 5), Var("j", 64)
    flat = Index.of(i) * 64 + j
    assert flat // 64 == Index.of(i)
    assert flat % 64 == Index.of(j)
    # a constant offset that stays inside the row does not stop the simplification
    assert (flat * 2 + 1) // 128 == Index.of(i)


def test_no_simplification_when_the_bounds_do_not_allow_it():
    i, j = Var("i", 5), Var("j", 65)       # j may reach 64: (i*64 + j) // 64 is not i
    flat = Index.of(i) * 64 + j
    quotient, remainder = flat // 64, flat % 64
    assert quotient != Index.of(i)
    assert remainder != Index.of(j)
    variables = (i, j)
    value = full_grid(flat, variables)
    np.testing.assert_array_equal(full_grid(quotient, variables), value // 64)
    np.testing.assert_array_equal(full_grid(remainder, variables), value % 64)


@pytest.mark.parametrize("shape", [(6, 4), (2, 3, 4), (1, 5, 7), (1, 1), (2, 2, 2, 2)])
def test_unflatten_of_flat_index_gives_back_the_variables(shape):
    variables = tuple(Var(f"i{a}", n) for a, n in enumerate(shape))
    indices = tuple(Index.of(v) for v in variables)
    back = unflatten(flat_index(indices, shape), shape)
    expected = tuple(Index.of(0) if n == 1 else Index.of(v) for v, n in zip(variables, shape))
    assert back == expected


def test_size_one_axis_in_the_middle_keeps_the_value():
    """A size-1 axis between others: the round trip is right in value (its variable is 0)."""
    shape = (5, 1, 7)
    variables = tuple(Var(f"i{a}", n) for a, n in enumerate(shape))
    indices = tuple(Index.of(v) for v in variables)
    back = unflatten(flat_index(indices, shape), shape)
    for got, want in zip(back, (indices[0], Index.of(0), indices[2])):
        np.testing.assert_array_equal(full_grid(got, variables), full_grid(want, variables))


def test_extent_one_variables_vanish_from_forms():
    i0, i1, i2 = Var("i0", 5), Var("i1", 1), Var("i2", 7)
    indices = (Index.of(i0), Index.of(i1), Index.of(i2))
    assert unflatten(flat_index(indices, (5, 1, 7)), (5, 1, 7)) == (indices[0], Index.of(0), indices[2])


def _round_trip(shape: tuple[int, ...], middle: tuple[int, ...]) -> tuple[tuple[Index, ...], tuple[Index, ...]]:
    """Indices into a `shape` buffer read through a `middle` view read through a `shape` view."""
    variables = tuple(Var(f"i{a}", n) for a, n in enumerate(shape))
    indices = tuple(Index.of(v) for v in variables)
    inner = unflatten(flat_index(indices, shape), middle)
    back = unflatten(flat_index(inner, middle), shape)
    for got, want in zip(back, indices):    # right in value whatever the form
        np.testing.assert_array_equal(full_grid(got, variables), full_grid(want, variables))
    return back, indices


@pytest.mark.parametrize("shape,middle", [((2, 3, 4), (24,)), ((2, 3, 4), (6, 4)), ((2, 3, 4), (2, 12)),
                                          ((5, 7), (35,)), ((4, 6), (24, 1)), ((3, 4, 5), (12, 5))])
def test_reshape_then_its_inverse_yields_the_original_variables(shape, middle):
    """Merging axes and splitting them again: (i*64 + j) // 64 -> i and % 64 -> j."""
    back, indices = _round_trip(shape, middle)
    assert back == indices


@pytest.mark.parametrize("shape,middle", [((12,), (3, 4)), ((6, 4), (3, 8)), ((2, 3, 4), (4, 6)),
                                          ((4, 6), (2, 2, 3, 2))])
def test_split_then_merge_yields_the_original_variables(shape, middle):
    back, indices = _round_trip(shape, middle)
    assert back == indices


def test_bounds():
    i, j, k = Var("i", 5), Var("j", 64), Var("k", 3)
    assert (Index.of(i) * 64 + j).bounds() == (0, 4 * 64 + 63)
    assert (Index.of(i) * -2 + k + 7).bounds() == (7 - 8, 7 + 2)
    assert Index.of(12).bounds() == (12, 12)
    # atoms: floor division and modulo of forms that cannot simplify
    form = Index.of(i) * 3 + k                                   # 0 .. 14
    assert (form // 4).bounds() == (0, 3)
    assert (form % 4).bounds() == (0, 3)
    assert ((form + 1) % 100).bounds() == (1, 15)                # stays inside: it is the form itself
    assert (form % 100) == form


def test_floor_division_of_floor_division_composes():
    i, k = Var("i", 9), Var("k", 7)
    form = Index.of(i) * 7 + Index.of(k) * 2   # no term divides by 3
    nested = form // 3 // 5
    assert nested == form // 15
    ((atom, coef),) = nested.terms
    assert isinstance(atom, DivAtom) and atom.divisor == 15 and coef == 1
    variables = (i, k)
    np.testing.assert_array_equal(full_grid(nested, variables), full_grid(form, variables) // 15)


def test_size_one_axes_and_constants():
    i = Var("i", 4)
    assert unflatten(Index.of(i), (1, 4, 1)) == (Index.of(0), Index.of(i), Index.of(0))
    assert Index.of(17) // 5 == Index.of(3)
    assert Index.of(17) % 5 == Index.of(2)
    assert Index.of(i) // 1 == Index.of(i)
    assert Index.of(i) % 1 == Index.of(0)
    # modulo reduces coefficients: (i*5 + 7) % 5 == 2
    assert (Index.of(i) * 5 + 7) % 5 == Index.of(2)


_coef = st.integers(-9, 70)


@settings(max_examples=150, deadline=None)
@given(st.tuples(st.integers(1, 6), st.integers(1, 9), st.integers(1, 5)),
       st.tuples(_coef, _coef, _coef), st.integers(-20, 200), st.integers(1, 40), st.integers(1, 12))
def test_division_and_modulo_keep_their_value(extents, coefs, const, d1, d2):
    """Every simplification of // and %, nested too, agrees with integer floor arithmetic."""
    variables = tuple(Var(f"v{a}", n) for a, n in enumerate(extents))
    form = Index.of(const)
    for v, c in zip(variables, coefs):
        form = form + Index.of(v) * c
    value = full_grid(form, variables)
    low, high = form.bounds()
    assert low == value.min() and high == value.max()     # a linear form's bounds are exact
    cases = {
        "a // d1": (form // d1, value // d1),
        "a % d1": (form % d1, value % d1),
        "a // d1 // d2": (form // d1 // d2, value // d1 // d2),
        "a // d1 % d2": (form // d1 % d2, value // d1 % d2),
        "a % d1 // d2": (form % d1 // d2, value % d1 // d2),
        "(a % d1) * 3 + a // d1": ((form % d1) * 3 + form // d1, (value % d1) * 3 + value // d1),
        "(a // d1 * d1 + a % d1) // d2": ((form // d1 * d1 + form % d1) // d2, value // d2),
    }
    for name, (simplified, expected) in cases.items():
        got = full_grid(simplified, variables)
        np.testing.assert_array_equal(got, expected, err_msg=f"{name}: {simplified!r}")
        s_low, s_high = simplified.bounds()
        assert s_low <= expected.min() and expected.max() <= s_high, f"{name}: bounds {simplified.bounds()}"


def test_mod_and_div_atoms_stay_canonical():
    """Equal forms built in different orders compare equal (kernels equal up to buffers)."""
    i, j = Var("i", 3), Var("j", 10)
    a = (Index.of(j) + Index.of(i) * 10 + 3) // 4
    b = (Index.of(i) * 10 + 3 + j) // 4
    assert a == b and hash(a) == hash(b)
    assert isinstance(a.terms[0][0], DivAtom)
    m = (Index.of(j) * 3 + i) % 7
    assert isinstance(m.terms[0][0], ModAtom)
    assert m == (Index.of(i) + Index.of(j) * 3 + 14) % 7


# --- random view chains ----------------------------------------------------------------------

def _random_shape(size: int, r: random.Random) -> tuple[int, ...]:
    """A random factorization of `size` into at most 4 axes (size-1 axes allowed)."""
    factors, n, p = [], size, 2
    while n > 1:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    r.shuffle(factors)
    rank = r.randint(1, 4)
    shape = [1] * rank
    for f in factors:
        shape[r.randrange(rank)] *= f
    return tuple(shape)


class _Mirror:
    """One view chain applied to a Tensor, to a value array and to an index array at once."""

    def __init__(self, t: ad.Tensor, values: np.ndarray, index: np.ndarray) -> None:
        self.t, self.values, self.index = t, values, index

    def apply(self, tensor_op, numpy_op) -> None:
        self.t = tensor_op(self.t)
        self.values = numpy_op(self.values, 0)
        self.index = numpy_op(self.index, -1)


def _step(m: _Mirror, kind: int, seed: int, log: list[str]) -> None:
    r = random.Random(seed)
    shape = m.values.shape
    size = m.values.size
    ndim = len(shape)
    if kind == 0:                                        # reshape
        new = _random_shape(size, r)
        log.append(f"reshape{new}")
        m.apply(lambda t: t.reshape(new), lambda a, _: a.reshape(new))
    elif kind == 1 and ndim > 1:                         # permute
        perm = list(range(ndim))
        r.shuffle(perm)
        log.append(f"permute{tuple(perm)}")
        m.apply(lambda t: t.permute(*perm), lambda a, _: a.transpose(perm))
    elif kind == 2:                                      # expand a size-1 axis (unsqueeze one first if needed)
        ones = [a for a, n in enumerate(shape) if n == 1]
        if not ones and ndim < 4:
            axis = r.randint(0, ndim)
            log.append(f"unsqueeze({axis})")
            m.apply(lambda t: t.unsqueeze(axis), lambda a, _: np.expand_dims(a, axis))
            shape, ones = m.values.shape, [axis]
        if not ones:
            return
        axis = r.choice(ones)
        count = r.randint(2, 3)
        if size * count > MAX_ELEMENTS:
            return
        target = tuple(count if a == axis else n for a, n in enumerate(shape))
        log.append(f"expand{target}")
        m.apply(lambda t: t.expand(*target), lambda a, _: np.broadcast_to(a, target))
    elif kind in (3, 4):                                 # basic indexing: unit step or a step
        axis = r.randrange(ndim)
        n = shape[axis]
        start = r.randrange(n)
        step = 1 if kind == 3 else r.randint(2, 3)
        stop = r.randint(start + 1, n)
        item = tuple([slice(None)] * axis + [slice(start, stop, step)])
        log.append(f"[{'' if not axis else ':, ' * axis}{start}:{stop}:{step}]")
        m.apply(lambda t: t[item], lambda a, _: a[item])
    elif kind == 5:                                      # pad one axis
        axis = r.randrange(ndim)
        low, high = [0] * ndim, [0] * ndim
        low[axis], high[axis] = r.randint(0, 2), r.randint(0, 2)
        if low[axis] + high[axis] == 0:
            low[axis] = 1
        if size // shape[axis] * (shape[axis] + low[axis] + high[axis]) > MAX_ELEMENTS:
            return
        log.append(f"pad(low={low}, high={high})")
        widths = list(zip(low, high))
        m.apply(lambda t: pad(t, low, high), lambda a, fill: np.pad(a, widths, constant_values=fill))
    elif kind == 6:                                      # concat with a slice of itself
        axis = r.randrange(ndim)
        n = shape[axis]
        start = r.randrange(n)
        stop = r.randint(start + 1, n)
        item = tuple([slice(None)] * axis + [slice(start, stop)])
        first = r.random() < 0.5
        if size // n * (n + stop - start) > MAX_ELEMENTS:
            return
        log.append(f"concat(self{'' if first else '[slice]'}, {'self[slice]' if first else 'self'}; "
                   f"axis={axis}, {start}:{stop})")

        def both(a, piece):
            return [a, piece] if first else [piece, a]
        m.apply(lambda t: ad.concat(both(t, t[item]), axis),
                lambda a, _: np.concatenate(both(a, a[item]), axis))


_chains = st.lists(st.tuples(st.integers(0, 6), st.integers(0, 2 ** 31)), min_size=1, max_size=6)
_bases = st.sampled_from([(2, 3, 4), (6, 5), (24,), (4, 1, 6), (3, 3, 3), (1, 8)])


def _build(base: tuple[int, ...], chain) -> tuple[ad.Tensor, _Mirror, list[str]]:
    size = int(np.prod(base))
    values = np.arange(1, size + 1, dtype=np.float32).reshape(base)   # 0 only where padded
    x = ad.Tensor(values.copy(), name="x", requires_grad=False)
    m = _Mirror(x, values, np.arange(size).reshape(base))
    log: list[str] = []
    for kind, seed in chain:
        _step(m, kind, seed, log)
    return x, m, log


def _source_map(expr, values, source_id: int, source_shape: tuple[int, ...], mask, out_shape) -> np.ndarray:
    """The flat source element each output element reads (-1: a padding zero).

    Also checks that every load taken where its guards hold is in range."""
    if isinstance(expr, Const):
        assert expr.value == 0
        return np.full(out_shape, -1)
    if isinstance(expr, Load):
        assert expr.buffer_id == source_id
        for axis, (form, n) in enumerate(zip(expr.indices, source_shape)):
            at = np.broadcast_to(evaluate_index(form, values), out_shape)
            taken = at[np.broadcast_to(mask, out_shape)]
            assert ((taken >= 0) & (taken < n)).all(), f"axis {axis} index {form!r} leaves [0, {n})"
        return np.broadcast_to(evaluate_index(flat_index(expr.indices, source_shape), values), out_shape)
    if isinstance(expr, Guard):
        valid = np.ones(out_shape, bool)
        for form, lo, hi in expr.valid.ranges:
            at = evaluate_index(form, values)
            valid &= (at >= lo) & (at < hi)
        body = _source_map(expr.body, values, source_id, source_shape, mask & valid, out_shape)
        other = _source_map(expr.otherwise, values, source_id, source_shape, mask & ~valid, out_shape)
        return np.where(valid, body, other)
    raise AssertionError(f"a view read gave {type(expr).__name__}")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_bases, _chains)
def test_lowering_read_maps_each_element_to_numpys_view(base, chain):
    with ad.Program() as program:
        x, m, log = _build(base, chain)
        target = m.t.node                    # a persistent tensor's READ node is made on first use
        graph = Graph(program.root, program.variables)
        lowering = Lowering(graph)
        lowering.lower_block(graph.root)     # views make no kernels; the READ gets x's buffer
        (source,) = lowering.buffers
        out_vars = tuple(lowering.fresh_var("o", n) for n in m.t.shape)
        expr = lowering.read(target, tuple(Index.of(v) for v in out_vars))
        assert m.t.shape == m.index.shape, log
        values = grid(out_vars)
        got = _source_map(expr, values, source.id, source.shape, np.array(True), m.index.shape)
        np.testing.assert_array_equal(got, m.index, err_msg=" -> ".join(log))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_bases, _chains)
def test_lowered_view_chain_equals_numpys_view(base, chain):
    got: list[np.ndarray] = []
    with ad.Program() as program:
        x, m, log = _build(base, chain)
        ad.Receiver(lambda v: got.append(v), [m.t], name="view")
        assert ad.current_program() is program
        compiled = ad.compile(device="numpy-proc", disable={"fusion"})
        kernels = compiled.proc.kernels()
        # a view is read through an access expression: at most one copy, for the Receiver
        assert len(kernels) <= 1 and all(k.kind == "copy" for k in kernels), (log, [k.name for k in kernels])
        if m.t is x:
            assert not kernels
        compiled.run()
    np.testing.assert_array_equal(got[0], m.values, err_msg=" -> ".join(log))
    np.testing.assert_array_equal(x.numpy(), np.arange(1, x.numpy().size + 1).reshape(base))


@pytest.mark.parametrize("which", ["steps", "pad_concat", "expand_permute"])
def test_view_chains_agree_on_every_device(device, which):
    """A few fixed chains through the public API on each device, with fusion on."""
    values = np.arange(1, 61, dtype=np.float32).reshape(3, 4, 5)
    x = ad.Tensor(values, name="x", requires_grad=False)
    if which == "steps":
        y, expected = x[::2, 1:, ::3], values[::2, 1:, ::3]
    elif which == "pad_concat":
        padded = pad(x[:, :2], [1, 0, 0], [0, 2, 1])                        # (4, 4, 6)
        y = ad.concat([padded[:3, :, :5], x], 1)
        expected = np.concatenate([np.pad(values[:, :2], [(1, 0), (0, 2), (0, 1)])[:3, :, :5], values], 1)
    else:
        y = x.permute(2, 0, 1).reshape(5, 12, 1).expand(5, 12, 3).transpose(0, 2)[1:, :, ::5]
        expected = np.broadcast_to(values.transpose(2, 0, 1).reshape(5, 12, 1), (5, 12, 3))
        expected = expected.swapaxes(0, 2)[1:, :, ::5]
    got: list[np.ndarray] = []
    ad.Receiver(lambda v: got.append(v), [y * 2], name="y")
    ad.execute(device=device)
    np.testing.assert_array_equal(got[0], expected * 2)


def test_an_update_reads_its_tensor_only_where_it_writes():
    p = ad.Tensor(np.arange(4, dtype=np.float32).reshape(2, 2), name="p", requires_grad=False)
    p.copy_(p.T)
    compiled = ad.compile(device="numpy-proc", disable={"fusion"})
    for kernel in compiled.proc.kernels():
        own = tuple(Index.of(v) for v in kernel.variables)
        for load in [e for e in _loads(kernel.value) if e.buffer_id == kernel.out.id]:
            assert load.indices == own, f"{kernel.name} writes {kernel.out.name} and reads it at {load.indices}"


def test_transposing_copy_into_a_tensor_gives_the_transpose(device):
    """Right on the numpy devices (numpy-proc buffers each kernel's output); the race above
    would show on OpenCL, where work-items overwrite elements others still have to read."""
    values = np.arange(9, dtype=np.float32).reshape(3, 3)
    p = ad.Tensor(values, name="p", requires_grad=False)
    p.copy_(p.T)
    ad.execute(device=device)
    np.testing.assert_array_equal(p.numpy(), values.T)
