"""autodiff: an ahead-of-time, whole-program reverse-mode AD compiler.

Trace a training program with a PyTorch-like Tensor API, then `execute()` it
as a whole (loops included) on a device. See README.md and ARCHITECTURE.md.
"""
from .errors import (CheckpointError, DeviceMemoryError, DistributedError, ExportError, FeederError,
                     IndexOutOfRangeError, KernelBuildError, ReceiverError, TraceError, UnsupportedOpError)
from .frontend.autodiff import grad
from .frontend.control import Feeder, Receiver, ir_for
from .frontend.functions import (abs, arange, cat, concat, cos, exp, full, full_like, iota, log, matmul,
                                 maximum, minimum, ones, ones_like, rand, randn, random_uniform, relu, rsqrt,
                                 sigmoid, sin, sqrt, stack, tanh, where, zeros, zeros_like)
from .frontend.composites import (clamp, clip, cumsum, expm1, log1p, log_softmax, logsumexp, masked_fill,
                                  softmax, tril, triu)
from .frontend.einsum import einsum
from .frontend.indexing import flip, gather, scatter_add, topk
from .frontend.program import Program, current_program, manual_seed, reset
from .frontend.tensor import Tensor
from .printing import pg, plot_memory, print_graph
from .visualize import draw_graph, to_networkx
from .compiler import CompiledProgram, Report, compile, default_device, execute, set_default_device
from .frontend.structural import CacheInfo, clear_compile_cache, compile_cache_info
from . import checkpoint, distributed, nn
from .checkpoint import load, restore, save
from .export import ExportedProgram, export, load_exported

float32 = "float32"
int32 = "int32"

__version__ = "0.1.0"
from .frontend.transforms import hessian, jacobian, jvp, value_and_grad, vjp
from .frontend.jit import Jitted, Lowered, jit
from .frontend import entry as _entry
_entry.register_printer(print_graph)
