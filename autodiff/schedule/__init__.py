"""Scheduling on the procedural IR: which products the tiled matmul kernel computes and how
each is tiled, operand packing, and which small kernels run together as megakernels."""
