"""Kernel fusion on the procedural IR."""
from .fuse import FUSION_KINDS, fuse, kernel_name
