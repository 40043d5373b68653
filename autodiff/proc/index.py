"""Access expressions: symbolic integer index arithmetic, kept simplified.

Every index is a linear form `sum(coef * atom) + const` over atoms: iteration
variables (each with an extent, 0 <= v < extent), floor divisions and modulos of
linear forms by positive constants, and run-time values (a loaded int32, e.g. a
gather index). Building `//` and `%` simplifies on the spot with bounds analysis,
so a reshape followed by its inverse gives back the plain variables:
`(i*64 + j) // 64 -> i` and `(i*64 + j) % 64 -> j` when 0 <= j < 64.

Forms are immutable and hashable, so kernels equal up to buffers compare equal.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import numpy as np


@dataclass(frozen=True)
class Var:
    """An iteration variable: 0 <= value < extent."""
    name: str
    extent: int

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True)
class DivAtom:
    """floor(form / divisor), divisor > 0."""
    form: "Index"
    divisor: int

    def __hash__(self) -> int:   # the form caches its own hash: no recursive rehashing
        return hash((1, self.form, self.divisor))


@dataclass(frozen=True)
class ModAtom:
    """form mod divisor (floor modulo), divisor > 0."""
    form: "Index"
    divisor: int

    def __hash__(self) -> int:
        return hash((2, self.form, self.divisor))


@dataclass(frozen=True)
class DynAtom:
    """An int32 value computed at run time (e.g. a loaded index), within [low, high]."""
    value: object   # a proc.ir expression
    low: int
    high: int


Atom = Union[Var, DivAtom, ModAtom, DynAtom]


@dataclass(frozen=True)
class Index:
    """sum(coef * atom for atom, coef in terms) + const, terms sorted canonically."""
    terms: tuple[tuple[Atom, int], ...]
    const: int

    def __post_init__(self) -> None:
        # whether a run-time value (DynAtom) sits anywhere inside: expression walks ask this
        # of every access expression, and almost none has one
        object.__setattr__(self, "dynamic", any(
            isinstance(a, DynAtom) or (isinstance(a, (DivAtom, ModAtom)) and a.form.dynamic) for a, _ in self.terms))
        # Forms nest (a DivAtom holds a form) and are dict keys all through fusion and
        # rendering: hashing them recursively every time was most of a CNN's compile time.
        object.__setattr__(self, "_hash", hash((self.terms, self.const)))
        object.__setattr__(self, "_text", None)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Index) or self._hash != other._hash:
            return False
        return self.const == other.const and self.terms == other.terms

    # --- construction -------------------------------------------------------
    @staticmethod
    def of(value: "int | Atom | Index") -> "Index":
        if isinstance(value, Index):
            return value
        if isinstance(value, (int, np.integer)):
            return Index((), int(value))
        return Index(((value, 1),), 0)

    def __add__(self, other: "int | Index | Atom") -> "Index":
        other = Index.of(other)
        if not other.terms and other.const == 0:   # x + 0 (flat_index starts from 0)
            return self
        if not self.terms and self.const == 0:
            return other
        coefs: dict[Atom, int] = dict(self.terms)
        for atom, coef in other.terms:
            coefs[atom] = coefs.get(atom, 0) + coef
        return _make(coefs, self.const + other.const)

    __radd__ = __add__

    def __neg__(self) -> "Index":
        return self * -1

    def __sub__(self, other: "int | Index | Atom") -> "Index":
        return self + (-Index.of(other))

    def __mul__(self, factor: int) -> "Index":
        factor = int(factor)
        if factor == 1:   # forms are kept simplified: x * 1 is x
            return self
        return _make({a: c * factor for a, c in self.terms}, self.const * factor)

    __rmul__ = __mul__

    def __floordiv__(self, divisor: int) -> "Index":
        divisor = int(divisor)
        assert divisor > 0
        if divisor == 1:
            return self
        key = (self, divisor)
        known = _QUOTIENTS.get(key)
        if known is None:
            known = _QUOTIENTS[key] = self._floordiv(divisor)
            if len(_QUOTIENTS) > _MEMO_LIMIT:
                _QUOTIENTS.clear()
        return known

    def _floordiv(self, divisor: int) -> "Index":
        # terms whose coefficient divides exactly come out of the floor unchanged
        exact = {a: c // divisor for a, c in self.terms if c % divisor == 0}
        rest = Index(tuple((a, c) for a, c in self.terms if c % divisor), self.const % divisor)
        outside = _make(exact, self.const // divisor)
        low, high = rest.bounds()
        if 0 <= low and high < divisor:
            return outside
        if rest.is_const():
            return outside + rest.const // divisor
        # (k*A + R) // (k*m) == A // m when 0 <= R < k
        split = _split_by_factor(self, divisor)
        if split is not None:
            k, main, _ = split
            return main // (divisor // k)
        # (a // p) // q == a // (p*q)
        if len(rest.terms) == 1 and rest.const == 0 and rest.terms[0][1] == 1 and isinstance(rest.terms[0][0], DivAtom):
            inner = rest.terms[0][0]
            return outside + inner.form // (inner.divisor * divisor)
        return outside + Index.of(DivAtom(rest, divisor))

    def __mod__(self, divisor: int) -> "Index":
        divisor = int(divisor)
        assert divisor > 0
        if divisor == 1:
            return Index.of(0)
        key = (self, divisor)
        known = _REMAINDERS.get(key)
        if known is None:
            known = _REMAINDERS[key] = self._mod(divisor)
            if len(_REMAINDERS) > _MEMO_LIMIT:
                _REMAINDERS.clear()
        return known

    def _mod(self, divisor: int) -> "Index":
        rest = Index(tuple((a, c % divisor) for a, c in self.terms if c % divisor), self.const % divisor)
        rest = _make(dict(rest.terms), rest.const)
        low, high = rest.bounds()
        if 0 <= low and high < divisor:
            return rest
        if rest.is_const():
            return Index.of(rest.const % divisor)
        # (k*A + R) % (k*m) == k*(A % m) + R when 0 <= R < k
        split = _split_by_factor(rest, divisor)
        if split is not None:
            k, main, remainder = split
            return (main % (divisor // k)) * k + remainder
        return Index.of(ModAtom(rest, divisor))

    # --- queries -----------------------------------------------------------------
    def is_const(self) -> bool:
        return not self.terms

    def bounds(self) -> tuple[int, int]:
        """Inclusive [low, high] over every value of the variables."""
        low = high = self.const
        for atom, coef in self.terms:
            a_low, a_high = atom_bounds(atom)
            if coef >= 0:
                low, high = low + coef * a_low, high + coef * a_high
            else:
                low, high = low + coef * a_high, high + coef * a_low
        return low, high

    def variables(self) -> list[Var]:
        out: dict[Var, None] = {}
        stack: list[Index] = [self]
        while stack:
            form = stack.pop()
            for atom, _ in form.terms:
                if isinstance(atom, Var):
                    out[atom] = None
                elif isinstance(atom, (DivAtom, ModAtom)):
                    stack.append(atom.form)
        return list(out)

    def substitute(self, mapping: Callable[[Atom], "Index | None"],
                   memo: "dict[Index, Index] | None" = None) -> "Index":
        """Replace atoms: `mapping(atom)` gives the new form of a Var or DynAtom, or None to keep it.
        A form in which nothing is replaced is returned as it is (forms are kept simplified,
        so rebuilding it would give it again; fusion substitutes into many such forms).
        `memo` remembers results across calls with the same mapping: the nested forms of
        windowed accesses (convolutions) repeat across every load of a kernel."""
        if memo is not None:
            known = memo.get(self)
            if known is not None:
                return known
        replaced: list["Index | None"] = []
        for atom, _ in self.terms:
            if isinstance(atom, (DivAtom, ModAtom)):
                inner = atom.form.substitute(mapping, memo)
                if inner is atom.form:
                    replaced.append(None)
                else:
                    replaced.append(inner // atom.divisor if isinstance(atom, DivAtom) else inner % atom.divisor)
            else:
                replaced.append(mapping(atom))
        out = self
        if any(new is not None for new in replaced):
            out = Index.of(self.const)
            for (atom, coef), new in zip(self.terms, replaced):
                out = out + (Index.of(atom) if new is None else new) * coef
        if memo is not None:
            memo[self] = out
        return out

    def __repr__(self) -> str:
        # cached, and built from the nested forms' cached text: the canonical order of
        # terms sorts nested forms by their text
        if self._text is None:
            object.__setattr__(self, "_text", render_index(self, lambda v: v.name, str, nested=repr))
        return self._text


# `//` and `%` remembered per (form, divisor): the bounds analysis behind them ran thousands of
# times per compile on the same forms (every load of a fused kernel re-derives its indices)
_QUOTIENTS: dict[tuple[Index, int], Index] = {}
_REMAINDERS: dict[tuple[Index, int], Index] = {}
_MEMO_LIMIT = 200_000


def atom_bounds(atom: Atom) -> tuple[int, int]:
    if isinstance(atom, Var):
        return 0, atom.extent - 1
    if isinstance(atom, DynAtom):
        return atom.low, atom.high
    low, high = atom.form.bounds()
    if isinstance(atom, DivAtom):
        return low // atom.divisor, high // atom.divisor
    if 0 <= low and high < atom.divisor:
        return low, high
    return 0, atom.divisor - 1


def _sort_key(atom: Atom) -> tuple:
    if isinstance(atom, Var):
        return (0, atom.name)
    if isinstance(atom, DivAtom):
        return (1, repr(atom.form), atom.divisor)
    if isinstance(atom, ModAtom):
        return (2, repr(atom.form), atom.divisor)
    return (3, repr(atom.value))


def _make(coefs: dict[Atom, int], const: int) -> Index:
    coefs = {a: c for a, c in coefs.items() if c != 0 and not (isinstance(a, Var) and a.extent == 1)}
    # split-then-merge: c*b*(g // b) + c*(g % b) is c*g
    changed = True
    while changed:
        changed = False
        for atom in list(coefs):
            if not isinstance(atom, ModAtom) or atom not in coefs:
                continue
            c = coefs[atom]
            div = _quotient_atom(atom)
            if coefs.get(div) == c * atom.divisor:
                del coefs[atom], coefs[div]
                for inner, k in atom.form.terms:
                    coefs[inner] = coefs.get(inner, 0) + c * k
                const += c * atom.form.const
                coefs = {a: v for a, v in coefs.items() if v != 0}
                changed = True
                break
    terms = tuple(sorted(coefs.items(), key=lambda t: _sort_key(t[0])))
    return Index(terms, int(const))


def _quotient_atom(atom: ModAtom) -> Atom:
    """The atom of form // divisor for `atom` = form % divisor, simplified as `//` does, so that
    ((g // 4096) % 4) pairs with g // 16384 (the digits of a row-major index)."""
    quotient = atom.form // atom.divisor
    if len(quotient.terms) == 1 and quotient.const == 0 and quotient.terms[0][1] == 1:
        return quotient.terms[0][0]
    return DivAtom(atom.form, atom.divisor)


def _split_by_factor(form: "Index", divisor: int) -> tuple[int, "Index", "Index"] | None:
    """(k, A, R) with form = k*A + R, k > 1 dividing `divisor` and 0 <= R < k, if one exists."""
    for k in sorted({abs(c) for _, c in form.terms if c > 1}, reverse=True):
        if divisor % k:
            continue
        main = {a: c // k for a, c in form.terms if c % k == 0}
        rest = Index(tuple((a, c) for a, c in form.terms if c % k), form.const % k)
        low, high = rest.bounds()
        if 0 <= low and high < k and main:
            return k, _make(main, form.const // k), rest
    return None


def flat_index(indices: tuple[Index, ...], shape: tuple[int, ...]) -> Index:
    """Row-major element offset of a multi-index."""
    offset = Index.of(0)
    stride = 1
    for index, size in zip(reversed(indices), reversed(shape)):
        offset = offset + index * stride
        stride *= size
    return offset


def unflatten(offset: Index, shape: tuple[int, ...]) -> tuple[Index, ...]:
    """The multi-index of a row-major offset (inverse of flat_index)."""
    if 0 in shape:
        # an empty tensor: no element is ever read, and a stride after a 0 axis is 0
        return tuple(Index.of(0) for _ in shape)
    out = []
    stride = 1
    strides = []
    for size in reversed(shape):
        strides.append(stride)
        stride *= size
    for size, stride in zip(shape, reversed(strides)):
        out.append((offset // stride) % size if size > 1 else Index.of(0))
    return tuple(out)


def render_index(form: Index, name_of: Callable[[Var], str], render_dyn: Callable[[object], str],
                 nested: Callable[[Index], str] | None = None) -> str:
    """C-like text: `i0*64 + i1`, `(i0 + 3) / 4`, `(i1 % 8)`; integer math on non-negatives.
    `nested` renders the forms inside `/` and `%` (default: this function, recursively)."""
    inner = nested or (lambda f: render_index(f, name_of, render_dyn))
    parts: list[str] = []
    for atom, coef in form.terms:
        if isinstance(atom, Var):
            text = name_of(atom)
        elif isinstance(atom, DynAtom):
            text = render_dyn(atom.value)
        elif isinstance(atom, DivAtom):
            text = f"(({inner(atom.form)}) / {atom.divisor})"
        else:
            text = f"(({inner(atom.form)}) % {atom.divisor})"
        parts.append(text if coef == 1 else f"{text}*{coef}" if coef > 0 else f"{text}*({coef})")
    if form.const or not parts:
        parts.append(str(form.const))
    return " + ".join(parts)


def evaluate_index(form: Index, values: Callable[[Atom], np.ndarray]) -> np.ndarray:
    """Vectorized value of a form; `values` gives arrays for Vars and DynAtoms (broadcastable)."""
    total: np.ndarray | int = form.const
    for atom, coef in form.terms:
        if isinstance(atom, DivAtom):
            v = evaluate_index(atom.form, values) // atom.divisor
        elif isinstance(atom, ModAtom):
            v = evaluate_index(atom.form, values) % atom.divisor
        else:
            v = values(atom)
        total = total + v * coef
    return np.asarray(total, dtype=np.int64)
