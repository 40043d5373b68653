"""Errors a user gets, one class per kind (see DESIGN.md, "Errors a user gets")."""
from __future__ import annotations

from .graph.program import TraceError


class FeederError(ValueError):
    """A Feeder's function returned the wrong shape or dtype, or raised."""


class ReceiverError(RuntimeError):
    """A Receiver callback raised; persistent tensors keep the values computed so far."""

    def __init__(self, message: str, receiver: str) -> None:
        super().__init__(message)
        self.receiver = receiver


class UnsupportedOpError(NotImplementedError):
    """An op the chosen backend cannot run."""


class DeviceMemoryError(MemoryError):
    """The program needs more device memory than the device has (raised before running)."""


__all__ = ["TraceError", "FeederError", "ReceiverError", "UnsupportedOpError", "DeviceMemoryError"]
