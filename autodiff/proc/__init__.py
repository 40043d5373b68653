"""The procedural IR: kernels over access expressions, loops and host transfers."""
from .ir import ProcProgram
from .lower import lower
