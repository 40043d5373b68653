"""Index checks: an index tensor read by gather (embedding, advanced indexing) or by
cross_entropy's targets is checked on the device, as torch checks it.

The check is ordinary traced work: the largest out-of-range index (as a float, -inf when
every index is in range) is computed on the device and delivered to a Receiver that raises
`IndexOutOfRangeError` naming the op, the value, the size and the user's source line. So
it runs on every backend with the same text, in program order, and a run stops at it as at
any Receiver that raises. `disable={"index_check"}` drops the checks (and, pruned, their
work) for speed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import IndexOutOfRangeError
from ..ir import ops as O
from ..ir.ops import Op
from .program import user_source_line
from .tensor import Tensor, constant
from .trace import make_node


@dataclass(frozen=True, eq=False)   # compared by identity, as the closure it replaced
class IndexCheck:
    """The Receiver of one index check: data rather than a closure, so that an exported
    program (autodiff/export/) carries it without the model's code."""
    opname: str
    size: int
    where: str
    autodiff_internal = True   # reads no persistent tensor (ir.ops.internal_callback)

    def __call__(self, value: np.ndarray) -> None:
        if float(value) != float("-inf"):
            raise IndexOutOfRangeError(f"{self.opname}: index {int(value)} is out of range for size {self.size} "
                                       f"(valid: 0 to {self.size - 1}; at {self.where})")


def check_indices(indices: Tensor, size: int, opname: str) -> None:
    """Raise (at run time, on the device's data) when an index is outside [0, size)."""
    if indices.numel() == 0:
        return
    where = user_source_line()
    position = indices.float()
    out_of_range = (position < 0.0) + (position > size - 1.0)
    lowest = constant(float("-inf"), position.shape)
    worst = Tensor._wrap(make_node(Op.WHERE, [out_of_range.node, position.node, lowest.node]))
    if worst.ndim:
        worst = worst.max()

    check = IndexCheck(opname, size, where)
    make_node(Op.RECEIVER, [worst.node], O.ReceiverArgs(check, f"{opname} index check", 1, check=True), "Receiver")
