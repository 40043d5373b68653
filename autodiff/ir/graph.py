"""The graph IR: nodes, blocks and persistent variables (the `Program` that owns them is
the frontend's).

A program is a root `Block`: an ordered list of nodes in the order they were
traced. That order is a valid topological order (a node's inputs are always
created before it) and it is also the order of effects: Feeders are called,
Receivers deliver and persistent tensors are updated in block order. A `FOR`
node owns a body block that runs `count` times; body nodes may read values of
enclosing blocks (loop-invariant), never the other way round.

A persistent tensor is a `Variable`. Reading it is a `READ` node, created lazily
in the block where it is used; an in-place update is an `ASSIGN` node, after
which the next use creates a fresh `READ`. So a `READ` always means "the value
at this point of the block", and the numpy reference only has to run the block
in order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from .dtypes import dtype_name, itemsize
from .ops import Op, OpArgs


@dataclass(eq=False)
class Node:
    id: int
    op: Op
    inputs: tuple["Node", ...]
    shape: tuple[int, ...]
    dtype: str
    args: OpArgs
    block: "Block"
    where: str = ""

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * itemsize(self.dtype)

    def __repr__(self) -> str:
        return f"%{self.id}:{self.op.value}{list(self.shape)}"


@dataclass(eq=False)
class Block:
    """An ordered list of nodes; the root of a program or the body of a FOR."""
    parent: "Block | None" = None
    nodes: list[Node] = field(default_factory=list)
    owner: "Node | None" = None   # the FOR node whose body this is

    def encloses(self, other: "Block") -> bool:
        """True when `other` is this block or nested inside it."""
        block: Block | None = other
        while block is not None:
            if block is self:
                return True
            block = block.parent
        return False

    def walk(self) -> Iterator[Node]:
        """Every node of this block and its nested bodies, in program order."""
        stack: list[Iterator[Node]] = [iter(self.nodes)]
        while stack:
            node = next(stack[-1], None)
            if node is None:
                stack.pop()
                continue
            yield node
            if node.op is Op.FOR:
                stack.append(iter(node.args.body.nodes))


class Variable:
    """A persistent device tensor: a parameter, optimizer state, or any user tensor.

    Its value is a numpy array, or after a device run a value left on the device
    (backends.base.DeviceValue): reading `value` downloads that once and keeps the array;
    `stored` is whichever of the two it holds, for moving a value without downloading it."""
    __slots__ = ("id", "name", "_value", "requires_grad", "grad", "__weakref__")

    def __init__(self, id: int, name: str, value: np.ndarray, requires_grad: bool = True,
                 grad: object = None) -> None:
        self.id, self.name, self._value = id, name, value
        self.requires_grad = requires_grad
        self.grad = grad   # the Tensor accumulated by backward() since zero_grad, or None

    def __repr__(self) -> str:
        return f"Variable(id={self.id}, name={self.name!r}, shape={self.shape}, dtype={self.dtype})"

    @property
    def value(self) -> np.ndarray:
        value = self._value
        if not isinstance(value, np.ndarray):   # left on the device by a run: download it now
            value = self._value = value.array()
        return value

    @value.setter
    def value(self, value: np.ndarray) -> None:
        self._value = value

    @property
    def stored(self) -> Any:
        """The array, or the device value not downloaded yet."""
        return self._value

    @stored.setter
    def stored(self, value: Any) -> None:
        self._value = value

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._value.shape)

    @property
    def dtype(self) -> str:
        return dtype_name(self._value.dtype)

    @property
    def nbytes(self) -> int:
        return int(self._value.nbytes)
