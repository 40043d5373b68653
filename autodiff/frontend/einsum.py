"""torch.einsum in terms of sums, permutes, reshapes, broadcasting and matmul.

Each operand first takes its repeated labels' diagonals (`ii->i`, traces) and sums the
labels nobody else needs; then operands are contracted left to right, two at a time: the
labels both share and still need are batch axes, the shared labels nobody needs later are
contracted by one batched matmul (an elementwise product when there are none); at the end
the labels are permuted into the output's order. `...` stands for broadcast axes aligned
from the right, as in torch; a size-1 axis broadcasts against its label's size.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .functions import iota, matmul, where
from .tensor import Tensor, as_tensor
from .trace import trace_error

Labels = list[str]   # one label per axis; letters, or "...0", "...1", ... for ellipsis axes


def einsum(equation: str, *operands: Tensor | Sequence[Tensor]) -> Tensor:
    """Sum of products over the labels of `equation` ("ij,jk->ik", "bij,bjk->bik", "i,j->ij",
    "ii->", "...ij->...ji"); without "->" the output is the labels used once, sorted.
    int32 operands give float32 (the contraction runs as a float32 matmul)."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    tensors = [as_tensor(t).float() for t in operands]
    terms, output = _parse(equation.replace(" ", ""), tensors)
    pending = [_own_labels(t, labels, terms[:i] + terms[i + 1:], output)
               for i, (t, labels) in enumerate(zip(tensors, terms))]
    x, labels = pending[0]
    for i, (y, other) in enumerate(pending[1:], start=1):
        later = [label for _, rest in pending[i + 1:] for label in rest]
        x, labels = _contract(x, labels, y, other, set(output) | set(later))
    x, labels = _sum_labels(x, labels, [label for label in labels if label not in output])
    return x.permute([labels.index(label) for label in output]) if output else x


def _parse(equation: str, tensors: list[Tensor]) -> tuple[list[Labels], Labels]:
    lhs, arrow, rhs = equation.partition("->")
    texts = lhs.split(",")
    if len(texts) != len(tensors):
        raise trace_error("einsum", f"{equation!r} has {len(texts)} operand(s) but {len(tensors)} "
                          "were given")
    spans = [t.ndim - (len(text) - 3) if "..." in text else 0 for text, t in zip(texts, tensors)]
    width = max(spans, default=0)
    terms = [_labels(text, t.ndim, span, width, equation) for text, t, span in zip(texts, tensors, spans)]
    if arrow:
        output = _labels(rhs, None, width, width, equation)
        used = {label for term in terms for label in term}
        for label in output:
            if label not in used or output.count(label) > 1:
                raise trace_error("einsum", f"output subscript {label!r} of {equation!r} appears "
                                  "more than once or in no input")
    else:
        counts: dict[str, int] = {}
        for term in terms:
            for label in term:
                counts[label] = counts.get(label, 0) + 1
        ellipsis = [f"...{i}" for i in range(width)]
        output = ellipsis + sorted(label for label, n in counts.items() if n == 1 and label not in ellipsis)
    return terms, output


def _labels(text: str, ndim: int | None, span: int, width: int, equation: str) -> Labels:
    """One label per axis of a term; `span` axes of "..." are the last of `width` ellipsis labels."""
    if text.count("...") > 1 or (text.replace("...", "") and not text.replace("...", "").isalpha()):
        raise trace_error("einsum", f"subscripts must be letters and at most one '...', got {text!r} "
                          f"in {equation!r}")
    head, dots, tail = text.partition("...")
    labels = list(head) + ([f"...{i}" for i in range(width - span, width)] if dots else []) + list(tail)
    if ndim is not None and (len(labels) != ndim or span < 0):
        raise trace_error("einsum", f"subscripts {text!r} do not match an operand of rank {ndim} "
                          f"in {equation!r}")
    return labels


def _own_labels(x: Tensor, labels: Labels, others: list[Labels], output: Labels) -> tuple[Tensor, Labels]:
    """Take the diagonal of each repeated label, then sum the labels used nowhere else."""
    labels = list(labels)
    for label in dict.fromkeys(labels):
        while labels.count(label) > 1:
            first = labels.index(label)
            second = labels.index(label, first + 1)
            if x.shape[first] != x.shape[second]:
                raise trace_error("einsum", f"subscript {label!r} is repeated for axes of sizes "
                                  f"{x.shape[first]} and {x.shape[second]}")
            same = iota(x.shape, first).eq(iota(x.shape, second))
            x = where(same, x, 0.0).sum(second)
            del labels[second]
    needed = set(output) | {label for term in others for label in term}
    return _sum_labels(x, labels, [label for label in labels if label not in needed])


def _sum_labels(x: Tensor, labels: Labels, summed: Labels) -> tuple[Tensor, Labels]:
    if not summed:
        return x, labels
    x = x.sum(tuple(labels.index(label) for label in summed))
    return x, [label for label in labels if label not in summed]


def _contract(a: Tensor, la: Labels, b: Tensor, lb: Labels, keep: set[str]) -> tuple[Tensor, Labels]:
    a, la = _sum_labels(a, la, [label for label in la if label not in lb and label not in keep])
    b, lb = _sum_labels(b, lb, [label for label in lb if label not in la and label not in keep])
    a, b = _broadcast_shared(a, la, b, lb)
    batch = [label for label in la if label in lb and label in keep]
    summed = [label for label in la if label in lb and label not in keep]
    left = [label for label in la if label not in lb]
    right = [label for label in lb if label not in la]
    size = dict(zip(la, a.shape)) | dict(zip(lb, b.shape))

    def sizes(labels: Labels) -> tuple[int, ...]:
        return tuple(size[label] for label in labels)

    a = a.permute([la.index(label) for label in batch + left + summed])
    b = b.permute([lb.index(label) for label in batch + summed + right])
    if not summed:   # no contraction: a broadcast product (outer, Hadamard)
        a = a.reshape(sizes(batch + left) + (1,) * len(right))
        b = b.reshape(sizes(batch) + (1,) * len(left) + sizes(right))
        return a * b, batch + left + right
    product = lambda labels: int(np.prod(sizes(labels), dtype=np.int64))   # noqa: E731
    a = a.reshape(product(batch), product(left), product(summed))
    b = b.reshape(product(batch), product(summed), product(right))
    out = matmul(a, b).reshape(sizes(batch + left + right))
    return out, batch + left + right


def _broadcast_shared(a: Tensor, la: Labels, b: Tensor, lb: Labels) -> tuple[Tensor, Tensor]:
    """Expand size-1 axes of a label the other operand has larger."""
    a_shape, b_shape = list(a.shape), list(b.shape)
    for i, label in enumerate(la):
        if label not in lb:
            continue
        j = lb.index(label)
        if a_shape[i] != b_shape[j]:
            if 1 not in (a_shape[i], b_shape[j]):
                raise trace_error("einsum", f"subscript {label!r} has sizes {a_shape[i]} and "
                                  f"{b_shape[j]} that cannot be broadcast")
            a_shape[i] = b_shape[j] = max(a_shape[i], b_shape[j])
    return a.expand_to(tuple(a_shape), "einsum"), b.expand_to(tuple(b_shape), "einsum")
