"""Every error a user gets, one class per kind. This module imports nothing of autodiff, so
every stage, from the tracer to the runtimes, raises the same classes."""
from __future__ import annotations


class TraceError(ValueError):
    """A user error found while tracing: names the op, the shapes and the user's line."""


class FeederError(ValueError):
    """A Feeder's function returned the wrong shape or dtype, or raised."""


class ReceiverError(RuntimeError):
    """A Receiver callback raised; persistent tensors keep the values computed so far."""

    def __init__(self, message: str, receiver: str) -> None:
        super().__init__(message)
        self.receiver = receiver


class UnsupportedOpError(NotImplementedError):
    """An op the chosen backend cannot run: names the op and the backend."""

    def __init__(self, op: object, backend: str, detail: str = "") -> None:
        name = getattr(op, "value", op)
        super().__init__(f"op '{name}' is not supported by the {backend} backend" + (f": {detail}" if detail else ""))
        self.op = op
        self.backend = backend


class IndexOutOfRangeError(IndexError):
    """An index tensor held a value outside its table (gather, embedding, cross_entropy targets),
    found by the check the tracer adds; names the op, the value, the size and the user's line."""


class DeviceMemoryError(MemoryError):
    """The program needs more device memory than the device has (raised before running)."""


class KernelBuildError(RuntimeError):
    """A kernel failed to build: its name, its numbered source and the compiler log."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted: truncated, corrupted (a checksum differs) or
    not safetensors (e.g. a pickle from torch.save). Names the path and what is wrong."""


class ExportError(ValueError):
    """An exported program's folder that cannot be read or run as given (autodiff/export/)."""


__all__ = ["TraceError", "FeederError", "ReceiverError", "UnsupportedOpError", "DeviceMemoryError",
           "KernelBuildError", "CheckpointError", "IndexOutOfRangeError",
           "ExportError", "DistributedError"]


class DistributedError(RuntimeError):
    """A collective failed or timed out, or a rank failed: names the rank and the collective."""
