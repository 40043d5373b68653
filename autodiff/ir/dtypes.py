"""The element types a program may hold, as one record each.

Every tensor is float32 (values) or int32 (indices, labels, argmax); both are 4
bytes, but code that needs an item size asks this table rather than writing 4.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    name: str        # numpy's name
    itemsize: int    # bytes per element
    short: str       # as printed in the IR (f32[2,3])
    ctype: str       # the C type of the generated kernels


FLOAT = "float32"
INT = "int32"
DTYPE_RECORDS = {FLOAT: DType(FLOAT, 4, "f32", "float"), INT: DType(INT, 4, "i32", "int")}
DTYPES = tuple(DTYPE_RECORDS)
ITEMSIZE = 4   # every dtype above is 4 bytes; arena offsets are counted in these elements


def dtype_record(name: str) -> DType:
    try:
        return DTYPE_RECORDS[name]
    except KeyError:
        raise TypeError(f"dtype {name} is not supported; autodiff holds {list(DTYPES)}") from None


_NAMES: dict = {}   # numpy dtype -> its name


def dtype_name(dtype: object) -> str:
    """str(dtype) of a numpy dtype, remembered: numpy builds the string anew on every call,
    which was 8% of the time of tracing a training step again (persistent tensors' dtypes)."""
    name = _NAMES.get(dtype)
    if name is None:
        name = _NAMES[dtype] = str(dtype)
    return name


def itemsize(name: str) -> int:
    return dtype_record(name).itemsize
