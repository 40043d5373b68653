"""Backends: the numpy reference device (and, later, OpenCL and CUDA)."""
