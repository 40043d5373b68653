"""Static memory placement: offsets for buffers with known lifetimes."""
from .placement import (Buffer, Placement, PlacementError, liveness_lower_bound, place_buffers,
                        validate_placement)

__all__ = [
    "Buffer",
    "Placement",
    "PlacementError",
    "liveness_lower_bound",
    "place_buffers",
    "validate_placement",
]
