"""Stage 1 and 2 of the pipeline: the graph IR, tracing and reverse-mode AD."""
from .ops import Op
from .program import Block, Node, Program, TraceError, Variable, current_program, manual_seed, reset
from .tensor import Tensor
