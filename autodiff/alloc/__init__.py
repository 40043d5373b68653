"""Static memory placement: offsets for buffers with known lifetimes."""
from .placement import (Lifetime, Placement, PlacementError, liveness_lower_bound, place_buffers,
                        validate_placement)

__all__ = [
    "Lifetime",
    "Placement",
    "PlacementError",
    "liveness_lower_bound",
    "place_buffers",
    "validate_placement",
]
