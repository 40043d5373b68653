"""One C-style renderer for kernels; OpenCL C and CUDA C differ by a few attributes.

A kernel becomes one function: each work-item computes one output element. Its
value expression is emitted one statement per line with common subexpressions
named once; reductions become loops, and a statement is hoisted out of every
loop whose variables it does not use. Guarded expressions (padding,
concatenation) become if-blocks, and nothing inside one is hoisted out of it, so
an out-of-range load is never executed.

Buffers are parameters (pointer + element offset), named in order of first use,
variables are renamed in order of appearance, and float constants other than 0,
+-1, 0.5 and 2 are arguments too: two kernels that differ only in which buffers
they touch or in a learning rate render to the same source and are built once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from ..errors import UnsupportedOpError
from ..ir.ops import Op
from ..proc.index import Index, Var, flat_index, render_index, unflatten
from ..proc.ir import (Alu, Const, Expr, Guard, IndexValue, Kernel, Load, RandomBits, Reduce, children, walk_expr,
                       substitute_vars)
from .lanes import SELECTIONS, VECTOR_WIDTHS, lane_step, spread, vectorizes, widest, without_lane

LOCAL_SIZE = 64   # one fixed work-group size: PoCL rebuilds a kernel for each new local size
# float constants written into the source; every other one is a kernel argument
WRITTEN_CONSTANTS = frozenset({0.0, 1.0, -1.0, 0.5, 2.0})
ACCUMULATOR = -1  # a Load of this buffer id renders as `acc` (a matmul epilogue's input)
# float sums whose accumulators each take in this many elements or more are compensated:
# below it the plain sum's error (at most length x 2^-24 relative) is as small as the
# reference's pairwise sum gives, and the compensation's three extra operations cost time
COMPENSATE_FROM = 256
SUM_BLOCK = 64   # elements a blocked sum adds plainly before a compensated step (blocked_sum)


# The rendering registry of elementwise ops: a C expression of the operands {0} {1} {2}, with
# {one} and {zero} the literals of the result's type and {t} its C type. A language's
# `math` table (a function per op) takes precedence; every elementwise op of the op table
# has a rendering in every language (py_test/test_registries.py).
C_EXPRESSIONS: dict[Op, str] = {
    Op.ADD: "{0} + {1}", Op.SUB: "{0} - {1}", Op.MUL: "{0} * {1}", Op.DIV: "{0} / {1}",
    Op.NEG: "-{0}", Op.RECIP: "{one} / {0}", Op.DETACH: "{0}", Op.CAST: "({t})({0})",
    Op.LT: "({0} < {1}) ? {one} : {zero}", Op.GT: "({0} > {1}) ? {one} : {zero}",
    Op.EQ: "({0} == {1}) ? {one} : {zero}",
    Op.WHERE: "({0} != 0) ? {1} : {2}",
    # NaN propagates, as in numpy (fmax/fmin would drop it)
    Op.MAXIMUM: "({0} > {1} || {0} != {0}) ? {0} : {1}",
    Op.MINIMUM: "({0} < {1} || {0} != {0}) ? {0} : {1}",
}


class CStyleLanguage:
    """The parts of C that differ between OpenCL C and CUDA C."""
    name = "c"
    kernel_prefix = "void"
    buffer_qualifier = ""
    global_id = "0"
    types = {"float32": "float", "int32": "int"}
    infinity = "INFINITY"
    nan = "NAN"
    math = {Op.EXP: "exp", Op.LOG: "log", Op.SQRT: "sqrt", Op.SIN: "sin", Op.COS: "cos", Op.TANH: "tanh",
            Op.ERF: "erf", Op.POW: "pow"}
    uint = "uint"
    helper_prefix = "inline"
    vector_loads = False    # vloadN / vstoreN and arithmetic on floatN (vector.py)
    vector_widths: tuple[int, ...] = ()   # the float vector widths kernels may use, widest first
    # a CPU device's cores (work-groups run one per core): a kernel too small for one group
    # per core gets smaller groups (`work_group_size`); None (GPUs): LOCAL_SIZE always
    compute_units: int | None = None
    # work-items of a megakernel's one work-group (codegen/megakernel.py)
    megakernel_group = LOCAL_SIZE

    def preamble(self) -> str:
        return f"""// lowbias32 integer hash: the same bits as autodiff.ir.reference.hash_uniform
{self.helper_prefix} {self.uint} ad_mix32({self.uint} x) {{
    x ^= x >> 16; x *= 0x7feb352dU; x ^= x >> 15; x *= 0x846ca68bU; x ^= x >> 16;
    return x;
}}
{self.helper_prefix} float ad_uniform(int seed, int counter, int element) {{
    {self.uint} key = ad_mix32(({self.uint})seed ^ ad_mix32(({self.uint})counter));
    return (float)(ad_mix32(({self.uint})element ^ key) >> 8) * 5.9604644775390625e-08f;
}}
"""

    def renders(self, op: Op) -> bool:
        """Whether an elementwise op has a rendering in this language."""
        return op in self.math or op in C_EXPRESSIONS

    def buffer_param(self, ctype: str, name: str, written: bool) -> str:
        const = "" if written else "const "
        qualifier = f"{self.buffer_qualifier} " if self.buffer_qualifier else ""
        return f"{qualifier}{const}{ctype}* {name}"


class OpenCLLanguage(CStyleLanguage):
    name = "opencl"
    kernel_prefix = "__kernel void"
    buffer_qualifier = "__global"
    global_id = "get_global_id(0)"
    local_id = "get_local_id(0)"
    group_id = "get_group_id(0)"
    barrier = "barrier(CLK_GLOBAL_MEM_FENCE);"
    local_barrier = "barrier(CLK_LOCAL_MEM_FENCE);"
    local_qualifier = "__local"
    math = {**CStyleLanguage.math, Op.EXP: "ad_exp", Op.ERF: "ad_erf", Op.TANH: "ad_tanh"}
    vector_loads = True

    def __init__(self, native_float_width: int = 8, compute_units: int | None = None,
                 megakernel_group: int = LOCAL_SIZE) -> None:
        """`native_float_width`: the device's CL_DEVICE_NATIVE_VECTOR_WIDTH_FLOAT. Vectors wider
        than it only split into several registers, and on x86 without AVX-512 clang warns at
        every build that a float16 argument changes the ABI; float4 is always allowed.
        `compute_units`: a CPU device's CL_DEVICE_MAX_COMPUTE_UNITS (None on a GPU).
        `megakernel_group`: 1 on a CPU (the backend's `single_item_megakernels`): there a
        work-group is a loop over its work-items on one core, so a megakernel of one work-item
        runs its stages' loops as fast (reference L = 1..6 and the larger model within noise,
        machine F), and PoCL generates its code at the first launch without the work-item loops
        around every barrier region (reference L = 1: 2.7 -> 1.6 s)."""
        self.vector_widths = tuple(w for w in VECTOR_WIDTHS if w <= max(4, native_float_width))
        self.compute_units = compute_units
        self.megakernel_group = megakernel_group

    def preamble(self) -> str:
        vectors = "".join(f"AD_EXP(float{w}, int{w})\n" for w in reversed(self.vector_widths))
        erfs = "".join(f"AD_ERF(float{w})\n" for w in reversed(self.vector_widths))
        horizontal = "".join(f"AD_HORIZONTAL(float{w}, float{w // 2})\n" for w in reversed(self.vector_widths))
        tanhs = "".join(f"AD_TANH(float{w}, {w})\n" for w in reversed(self.vector_widths))
        return super().preamble() + _OPENCL_TANH + tanhs + _OPENCL_EXP + vectors + _OPENCL_ERF + erfs + _OPENCL_HORIZONTAL + horizontal


# PoCL 3.0 calls its exp out of line, one element at a time (0.55 ms for 131072 elements
# on 2 cores); this one is plain arithmetic that the work-group loop vectorizes (0.10 ms).
# exp(x) = 2^k * exp(r) with |r| <= ln(2)/2 (ln 2 split in two for an exact k*ln 2), a
# degree-6 polynomial for exp(r) (Cephes' expf coefficients), 2^k applied as two factors.
# Results below FLT_MIN (x < ln FLT_MIN) are 0, not denormal: arithmetic on denormals takes
# a microcode assist on x86 (measured 13x slower: softmax over masked or far-apart scores),
# so none is ever computed. Against numpy's float32 exp: at most 1.9e-7 relative error
# above FLT_MIN; nan, +-inf and overflow as numpy. One text for float and the float vectors
# of vectorized kernels (vector.py), overloaded. CUDA keeps expf.
_OPENCL_EXP = """
#define AD_EXP(T, I) \\
__attribute__((overloadable)) inline T ad_exp(T x) { \\
    T xc = fmin(fmax(x, -87.3365f), 89.0f); \\
    T kf = xc * 1.44269504088896341f; \\
    I k = convert_##I(kf + copysign((T)(0.5f), kf)); \\
    T kk = convert_##T(k); \\
    T r = xc - kk * 0.693359375f + kk * 2.12194440e-4f; \\
    T p = 1.9875691500e-4f; \\
    p = p * r + 1.3981999507e-3f; \\
    p = p * r + 8.3334519073e-3f; \\
    p = p * r + 4.1665795894e-2f; \\
    p = p * r + 1.6666665459e-1f; \\
    p = p * r + 5.0000001201e-1f; \\
    T y = p * r * r + r + 1.0f; \\
    I k1 = k / 2; \\
    y = y * as_##T((k1 + 127) << 23) * as_##T((k - k1 + 127) << 23); \\
    y = select(y, (T)(0.0f), x < -87.33654475f); \\
    y = select(y, (T)(INFINITY), x > 88.72283905206835f); \\
    return select(y, x, x != x); \\
}
AD_EXP(float, int)
"""
# PoCL calls erf out of line too, one element at a time: GELU's forward kernel took 0.47 ms
# for 262,144 elements, and inside a matrix product's epilogue (GELU's gradient) each call
# spilled the register block around it (4.3 ms for a product of 0.45 ms without it; machine
# F). This one is arithmetic and ad_exp, vectorized like them. |x| < 1: x * P(x^2), P of
# degree 6; 1 <= |x|: 1 - exp(-x^2) * Q(1/|x|), Q of degree 8 fitting exp(x^2) erfc(x) on
# [1, 4] (both least squares in relative error against scipy's float64 erf and erfcx, on
# Chebyshev points); past 4 the result rounds to +-1. Against float64 erf: at most 2e-7 relative error below 1, 1e-7
# absolute above it; nan and +-inf as erf, erf(-0) = -0. CUDA keeps erff.
_OPENCL_TANH = """// tanh that keeps a NaN: PoCL 3.1's tanh gave tiny numbers (-2.9e-34) for a NaN the compiler
// knew (a mean over an empty axis fused into tanh: 0.0f * NAN), so a NaN skipped tanh
__attribute__((overloadable)) inline float ad_tanh(float x) {
    return (as_uint(x) & 0x7fffffffu) > 0x7f800000u ? x : tanh(x);   /* NaN by its bits */
}
#define AD_TANH(T, N) \\
__attribute__((overloadable)) inline T ad_tanh(T x) { \\
    return select(tanh(x), x, (as_uint##N(x) & 0x7fffffffu) > 0x7f800000u); \\
}
"""

_OPENCL_ERF = """
#define AD_ERF(T) \\
__attribute__((overloadable)) inline T ad_erf(T x) { \\
    T a = fmin(fabs(x), 4.0f); \\
    T z = a * a; \\
    T p = 7.898066385e-05f; \\
    p = p * z - 8.024311703e-04f; \\
    p = p * z + 5.190048821e-03f; \\
    p = p * z - 2.685480602e-02f; \\
    p = p * z + 1.128361236e-01f; \\
    p = p * z - 3.761262884e-01f; \\
    p = p * z + 1.128379167e+00f; \\
    T t = 1.0f / fmax(a, 1.0f); \\
    T q = -1.207841204e-02f; \\
    q = q * t + 4.146644252e-02f; \\
    q = q * t - 3.244636303e-03f; \\
    q = q * t - 2.106054581e-01f; \\
    q = q * t + 4.749725384e-01f; \\
    q = q * t - 4.620630901e-01f; \\
    q = q * t + 3.947375145e-02f; \\
    q = q * t + 5.594154193e-01f; \\
    q = q * t + 2.469902556e-04f; \\
    T y = select(1.0f - ad_exp(-z) * q, a * p, a < 1.0f); \\
    return select(copysign(y, x), x, x != x); \\
}
AD_ERF(float)
"""
_OPENCL_HORIZONTAL = """// the lanes of a vectorized sum or maximum folded to one float, halves first
__attribute__((overloadable)) inline float ad_hsum(float2 x) { return x.x + x.y; }
__attribute__((overloadable)) inline float ad_hmax(float2 x) { return (x.x > x.y || x.x != x.x) ? x.x : x.y; }
#define AD_HORIZONTAL(T, H) \\
__attribute__((overloadable)) inline float ad_hsum(T x) { return ad_hsum(x.lo + x.hi); } \\
__attribute__((overloadable)) inline float ad_hmax(T x) { \\
    H a = x.lo, b = x.hi; \\
    return ad_hmax(select(b, a, a > b || a != a)); \\
}
"""


class CUDALanguage(CStyleLanguage):
    """CUDA C++ as NVRTC compiles it: no system headers, so no INFINITY or NAN macros (their bit
    patterns instead), the float overloads of the math functions, C linkage so kernels keep
    their names, and helpers that are device functions private to the module."""
    name = "cuda"
    kernel_prefix = 'extern "C" __global__ void'
    buffer_qualifier = ""
    global_id = "(int)(blockIdx.x * blockDim.x + threadIdx.x)"
    local_id = "(int)threadIdx.x"
    group_id = "(int)blockIdx.x"
    barrier = "__syncthreads();"
    local_barrier = "__syncthreads();"
    local_qualifier = "__shared__"
    infinity = "__int_as_float(0x7f800000)"
    nan = "__int_as_float(0x7fffffff)"
    math = {op: name + "f" for op, name in CStyleLanguage.math.items()}   # the float overloads
    uint = "unsigned int"
    helper_prefix = "static __device__ __forceinline__"


class ParamKind(StrEnum):
    BUFFER = "buffer"                   # a buffer's device pointer
    OFFSET = "offset"                   # its element offset (int)
    OFFSET64 = "offset64"               # its element offset (long: the tiled matmul)
    VAR = "var"                         # a loop variable's value, set at each launch
    ARENA = "arena"                     # the arena itself (megakernels)
    STATE = "state"                     # the persistent/feed buffer itself (megakernels)
    TABLE = "table"                     # a megakernel's offset table
    TABLE_BASE = "table_base"           # its first entry for this launch
    CONSTANT = "constant"               # a float constant
    CONSTANTS = "constants"             # a megakernel's float table
    CONSTANTS_BASE = "constants_base"   # its first entry for this launch
    RING_IN = "ring_in"                 # an iterated megakernel's Feeder values, a slot per iteration
    RING_OUT = "ring_out"               # ... and its Receiver values


@dataclass
class Param:
    """One kernel argument (a string of `ParamKind` is accepted as its kind)."""
    kind: ParamKind
    buffer_id: int = -1
    var: Var | None = None
    extra: int = 0      # elements added to an offset (a matmul operand's constant index term)
    value: float = 0.0  # a "constant" argument's value

    def __post_init__(self) -> None:
        self.kind = ParamKind(self.kind)   # a misspelt kind fails when rendered, not when launched


@dataclass
class RenderedKernel:
    name: str
    body: str           # the function text with the name as {name}
    params: list[Param]
    global_size: int | tuple[int, ...]
    local_size: int | tuple[int, ...]
    table: list[int] = field(default_factory=list)   # a megakernel's offset table (buffer ids)
    constants: list[float] = field(default_factory=list)   # a megakernel's float table

    @property
    def source(self) -> str:
        return self.body.replace("{name}", self.name)

    def sizes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(global size, local size), each a tuple: work-items in all, per work-group."""
        return tuple(s if isinstance(s, tuple) else (s,) for s in (self.global_size, self.local_size))


@dataclass(eq=False)
class _Scope:
    parent: "_Scope | None"
    variables: tuple[Var, ...] = ()
    guard: bool = False
    lines: list[str] = field(default_factory=list)

    def chain(self) -> list["_Scope"]:
        out, scope = [], self
        while scope is not None:
            out.append(scope)
            scope = scope.parent
        return out


class KernelRenderer:
    """Renders one kernel; `render()` gives its canonical source and parameter list."""

    def __init__(self, kernel: Kernel, language: CStyleLanguage, buffers: dict, vectorize: bool = False) -> None:
        self.kernel = kernel
        self.lang = language
        self.vectorize = vectorize and language.vector_loads
        self.lanes: dict[Var, int] = {}             # vector lane variables (lanes.py) -> width
        self.buffers = buffers                      # buffer id -> proc Buffer
        self.slots: dict[int, int] = {}             # buffer id -> parameter slot
        self.var_names: dict[Var, str] = {}
        self.outer_vars: list[Var] = []             # loop / run variables passed as ints
        self.memo: dict[Expr, tuple[str, _Scope]] = {}
        self.uses: dict[int, frozenset[Var]] = {}
        self.counter = 0
        self.constants: dict[float, str] = {}      # float constant -> its argument's name (K0, K1, ...)
        # buffer id -> elements of its loads' constant index term passed in its offset
        # argument instead of written into the source (`fold_offsets`); a megakernel stage
        # reads its offsets from a table and folds nothing
        self.folded: dict[int, int] = {}

    # --- names ---------------------------------------------------------------------
    def slot(self, buffer_id: int) -> int:
        if buffer_id not in self.slots:
            self.slots[buffer_id] = len(self.slots)
        return self.slots[buffer_id]

    def var_name(self, var: Var) -> str:
        if var not in self.var_names:   # a variable from outside the kernel: a loop index or the run
            self.var_names[var] = f"L{len(self.outer_vars)}"
            self.outer_vars.append(var)
        return self.var_names[var]

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def ctype(self, dtype: str) -> str:
        return self.lang.types[dtype]

    def literal(self, value: float | int, dtype: str) -> str:
        if dtype == "int32":
            return str(int(value))
        value = float(value)
        if math.isnan(value):
            return self.lang.nan
        if math.isinf(value):
            return self.lang.infinity if value > 0 else f"(-{self.lang.infinity})"
        if value not in WRITTEN_CONSTANTS:
            # an argument, not text: kernels that differ in a learning rate or an epsilon share
            # one source, so changing one rebuilds nothing
            return self.constants.setdefault(value, f"K{len(self.constants)}")
        text = repr(value)
        if "e" not in text and "." not in text:
            text += ".0"
        return f"{text}f"

    # --- scopes ----------------------------------------------------------------------
    def variables_of(self, expr: Expr) -> frozenset[Var]:
        """Every variable `expr` depends on (memoized, iterative)."""
        stack = [(expr, False)]
        while stack:
            e, expanded = stack.pop()
            if id(e) in self.uses:
                continue
            kids = list(children(e))
            if not expanded:
                stack.append((e, True))
                stack.extend((k, False) for k in kids if id(k) not in self.uses)
                continue
            found: set[Var] = set()
            for k in kids:
                found |= self.uses[id(k)]
            for form in _forms(e):
                found |= set(form.variables())
            if isinstance(e, Reduce):
                found -= set(e.variables)
            self.uses[id(e)] = frozenset(found)
        return self.uses[id(expr)]

    def home(self, expr: Expr, scope: _Scope) -> _Scope:
        """The outermost scope `expr` can be computed in: below every loop defining a variable it
        uses, and never outside a guard (its loads may be out of range elsewhere)."""
        used = self.variables_of(expr)
        best = scope
        for s in scope.chain():
            best = s
            if s.guard or used.intersection(s.variables):
                break
        return best

    def emit(self, scope: _Scope, ctype: str, text: str, prefix: str = "v") -> str:
        name = self.fresh(prefix)
        scope.lines.append(f"{ctype} {name} = {text};")
        return name

    # --- vector lanes (lanes.py) ------------------------------------------------------------
    def lane_of(self, expr: Expr) -> Var | None:
        return next((v for v in self.variables_of(expr) if v in self.lanes), None)

    def value_type(self, expr: Expr) -> str:
        """The C type of `expr`'s value: floatW where it depends on a vector lane."""
        lane = self.lane_of(expr)
        return self.ctype(expr.dtype) + (str(self.lanes[lane]) if lane is not None else "")

    def vector_load(self, width: int, pointer: str) -> str:
        """`width` floats from `pointer` on, as one vector."""
        return f"vload{width}(0, {pointer})"

    def load(self, expr: Load, scope: _Scope) -> str:
        slot = self.slot(expr.buffer_id)
        form = flat_index(expr.indices, self.buffers[expr.buffer_id].shape) - self.folded.get(expr.buffer_id, 0)
        lane = next((v for v in form.variables() if v in self.lanes), None)
        if lane is None:
            return f"b{slot}[o{slot} + {self.index(form, scope)}]"
        offset = self.index(without_lane(form, lane), scope)
        if lane_step(form, lane) == 1:
            return self.vector_load(self.lanes[lane], f"b{slot} + o{slot} + {offset}")
        # names the lane without depending on it: one float, widened
        return f"({self.value_type(expr)})(b{slot}[o{slot} + {offset}])"

    # --- expressions -------------------------------------------------------------------
    def index(self, form: Index, scope: _Scope) -> str:
        return render_index(form, self.var_name, lambda e: self.value(e, scope))

    def value(self, expr: Expr, scope: _Scope) -> str:
        """A C expression (a name or a literal) for `expr`, emitting statements as needed."""
        if isinstance(expr, Const):
            return self.literal(expr.value, expr.dtype)
        known = self.memo.get(expr)
        if known is not None and known[1] in scope.chain():
            return known[0]
        target = self.home(expr, scope)
        if isinstance(expr, IndexValue):
            text = f"({self.ctype(expr.dtype)})({self.index(expr.index, target)})"
        elif isinstance(expr, Load) and expr.buffer_id == ACCUMULATOR:
            return "acc"
        elif isinstance(expr, Load):
            text = self.load(expr, target)
        elif isinstance(expr, Alu):
            text = self.alu(expr, [self.value(a, target) for a in expr.args])
        elif isinstance(expr, RandomBits):
            text = (f"ad_uniform({expr.seed & 0x7FFFFFFF}, {self.index(expr.counter, target)}, "
                    f"{self.index(expr.element, target)})")
        elif isinstance(expr, Guard):
            name = self.guard(expr, target)
            self.memo[expr] = (name, target)
            return name
        elif isinstance(expr, Reduce):
            name = self.reduce(expr, target)
            self.memo[expr] = (name, target)
            return name
        else:
            raise UnsupportedOpError(type(expr).__name__, self.lang.name, "no C rendering for this expression")
        name = self.emit(target, self.value_type(expr), text)
        self.memo[expr] = (name, target)
        return name

    def alu(self, e: Alu, args: list[str]) -> str:
        if e.op in SELECTIONS and self.lane_of(e) is not None:
            return self.vector_selection(e, args)
        op, t = e.op, self.ctype(e.dtype)
        one, zero = self.literal(1, e.dtype), self.literal(0, e.dtype)
        if op in self.lang.math:
            return f"{self.lang.math[op]}({', '.join(args)})"
        template = C_EXPRESSIONS.get(op)
        if template is None:
            raise UnsupportedOpError(op, self.lang.name, "no C rendering for it (codegen/renderer.py C_EXPRESSIONS)")
        return template.format(*args, one=one, zero=zero, t=t)

    def vector_selection(self, e: Alu, args: list[str]) -> str:
        """A comparison or selection over vectors is `select`, every operand widened so that
        the condition is an int vector of the same width (C arithmetic widens the rest)."""
        vector = self.value_type(e)
        a, b, *rest = [x if self.lane_of(arg) is not None else f"({vector})({x})" for x, arg in zip(args, e.args)]
        one, zero = f"({vector})({self.literal(1, e.dtype)})", f"({vector})({self.literal(0, e.dtype)})"
        if e.op is Op.WHERE:
            return f"select({rest[0]}, {b}, {a} != 0.0f)"
        return {Op.LT: f"select({zero}, {one}, {a} < {b})", Op.GT: f"select({zero}, {one}, {a} > {b})",
                Op.EQ: f"select({zero}, {one}, {a} == {b})",
                Op.MAXIMUM: f"select({b}, {a}, {a} > {b} || {a} != {a})",
                Op.MINIMUM: f"select({b}, {a}, {a} < {b} || {a} != {a})"}[e.op]

    def guard(self, e: Guard, scope: _Scope) -> str:
        """`if (valid) name = body;`. Under vector lanes the condition is the same in every lane
        (lanes.py accepts no other), so it is one scalar test, and a scalar branch is widened.
        An `otherwise` that reads memory (the last part of a concatenation: its index is out of
        range for the other parts' rows) is computed in an `else` branch; a constant one
        (padding) before the test."""
        name = self.fresh("g")
        ctype = self.value_type(e)

        def widened(part: Expr, text: str) -> str:
            return text if self.lane_of(part) == self.lane_of(e) else f"({ctype})({text})"
        reads = any(isinstance(x, Load) and x.buffer_id != ACCUMULATOR for x in walk_expr(e.otherwise))
        other = _Scope(scope, guard=True) if reads else scope
        otherwise = widened(e.otherwise, self.value(e.otherwise, other))
        cond = " && ".join(f"({lo} <= {v} && {v} < {hi})" for v, lo, hi in
                           ((self.index(self.without_lanes(f), scope), lo, hi) for f, lo, hi in e.valid.ranges))
        scope.lines.append(f"{ctype} {name};" if reads else f"{ctype} {name} = {otherwise};")
        inner = _Scope(scope, guard=True)
        value = widened(e.body, self.value(e.body, inner))
        scope.lines.append(f"if ({cond}) {{")
        scope.lines.extend("    " + line for line in inner.lines)
        scope.lines.append(f"    {name} = {value};")
        if reads:
            scope.lines.append("} else {")
            scope.lines.extend("    " + line for line in other.lines)
            scope.lines.append(f"    {name} = {otherwise};")
        scope.lines.append("}")
        return name

    def without_lanes(self, form: Index) -> Index:
        for lane in self.lanes:
            form = without_lane(form, lane)
        return form

    def reduction_width(self, e: Reduce) -> tuple[int, int]:
        """(lanes, tail) for the innermost axis of a float sum or maximum whose loads are
        contiguous along it (or do not depend on it): the widest width dividing the axis, else
        the widest that fits with a scalar loop over the last `tail` elements (an axis of 255);
        (1, 0) keeps the scalar loop. A compensated (long) sum takes no tail: its tail would
        add up uncompensated."""
        if not self.vectorize or e.op not in (Op.SUM, Op.MAX) or e.dtype != "float32" or not e.variables:
            return 1, 0
        if self.lane_of(e) is not None:
            return 1, 0     # already a vector per output lane: its accumulator is a vector
        last = e.variables[-1]

        def fits(width: int) -> bool:
            body, _, lane = spread(e.body, last, width)
            return vectorizes(body, lane, self.buffers)
        width = widest(last.extent, fits, self.lang.vector_widths)
        if width > 1 or compensates(e.op, e.dtype, reduction_length(e)):
            return width, 0
        for width in self.lang.vector_widths:
            if last.extent >= 2 * width and fits(width):
                return width, last.extent % width
        return 1, 0

    def vector_reduce(self, e: Reduce, scope: _Scope, width: int, tail: int = 0) -> str:
        """The innermost axis in steps of `width` lanes into a vector accumulator, folded to
        one float at the end (ad_hsum / ad_hmax: halves combined, NaN kept by the max); the
        last `tail` elements of the axis (when `width` does not divide it) in a scalar loop."""
        last = e.variables[-1]
        body, outer, lane = spread(e.body, last, width)
        self.lanes[lane] = width
        variables = e.variables[:-1] + (outer,)
        for v in variables:
            self.var_names[v] = self.fresh("r")
        vector = f"float{width}"
        lanes = self.fresh("lanes")
        scope.lines.append(f"{vector} {lanes} = ({vector})({start_value(e.op, e.dtype, self.lang)});")
        compensation = self.compensation(e, scope, vector, reduction_length(e) // width)
        inner = _Scope(scope, variables=variables + (lane,))
        value = self.value(body, inner)
        if self.lane_of(body) is None:
            value = f"({vector})({value})"
        if compensation is not None:
            lines = self.blocked_sum((outer,), inner.lines, value, lanes, compensation, vector)
        else:
            inner.lines.append(combine(e.op, lanes, value, vector=True, ctype=vector))
            lines = self.loops((outer,), inner.lines)
        rest = None
        if tail:
            rest = self.fresh("rest")
            scope.lines.append(f"float {rest} = {start_value(e.op, e.dtype, self.lang)};")
            step = Var(f"{last.name}_tail", tail)
            self.var_names[step] = self.fresh("r")
            at_tail = substitute_vars(e.body, {last: Index.of(step) + outer.extent * width})
            ends = _Scope(scope, variables=e.variables[:-1] + (step,))
            end_value = self.value(at_tail, ends)
            ends.lines.append(combine(e.op, rest, end_value))
            lines += self.loops((step,), ends.lines)
        lines = self.loops(e.variables[:-1], lines)
        scope.lines.extend(lines)
        acc = self.emit(scope, "float", f"{'ad_hsum' if e.op is Op.SUM else 'ad_hmax'}({lanes})", "acc")
        if rest is not None:
            scope.lines.append(combine(e.op, acc, rest))
        return acc

    def compensation(self, e: Reduce, scope: _Scope, ctype: str, length: int) -> str | None:
        """The running compensation of a long float sum (declared here), else None."""
        if not compensates(e.op, e.dtype, length):
            return None
        name = self.fresh("comp")
        scope.lines.append(f"{ctype} {name} = ({ctype})(0.0f);")
        return name

    def reduce(self, e: Reduce, scope: _Scope) -> str:
        width, tail = self.reduction_width(e)
        if width > 1:
            return self.vector_reduce(e, scope, width, tail)
        for v in e.variables:
            self.var_names[v] = self.fresh("r")
        t = self.value_type(e)      # floatW when the body differs per output lane
        widen = (lambda text: f"({t})({text})") if t != self.ctype(e.dtype) else (lambda text: text)
        acc = self.fresh("acc")
        compensation = None
        if e.op in (Op.SUM, Op.MAX):
            scope.lines.append(f"{t} {acc} = {widen(start_value(e.op, e.dtype, self.lang))};")
            compensation = self.compensation(e, scope, t, reduction_length(e))
        else:   # ARGMAX: the first index of the maximum
            best = self.fresh("best")
            scope.lines.append(f"float {best} = -{self.lang.infinity};")
            scope.lines.append(f"int {acc} = 0;")
        inner = _Scope(scope, variables=e.variables)
        value = self.value(e.body, inner)
        scalar = t == self.ctype(e.dtype)
        if compensation is not None:
            scope.lines.extend(self.blocked_sum(e.variables, inner.lines, value, acc, compensation, t))
            return acc
        if e.op in (Op.SUM, Op.MAX):
            inner.lines.append(combine(e.op, acc, value, vector=not scalar, ctype=t))
        else:
            (var,) = e.variables
            inner.lines.append(f"if ({value} > {best}) {{ {best} = {value}; {acc} = {self.var_names[var]}; }}")
        scope.lines.extend(self.loops(e.variables, inner.lines))
        return acc

    def loops(self, variables: tuple[Var, ...], body: list[str]) -> list[str]:
        for v in reversed(variables):
            name = self.var_names[v]
            body = [f"for (int {name} = 0; {name} < {v.extent}; {name}++) {{"] + ["    " + line for line in body] + ["}"]
        return body

    def blocked_sum(self, variables: tuple[Var, ...], statements: list[str], value: str, acc: str,
                    compensation: str, ctype: str = "float") -> list[str]:
        """The loops of a long float sum (of floats, or of float vectors) over `variables`, the
        innermost in blocks: a plain sum per block (one dependent add per element, as fast as
        the uncompensated loop), each block's sum then added to `acc` with compensation. Kahan
        on every element measured 4x slower: a chain of four dependent adds per element made
        a float16 column sum over 512 rows latency-bound (56 -> 15 us on machine F)."""
        last = variables[-1]
        name = self.var_names[last]
        block = min(last.extent, SUM_BLOCK)
        part, start = self.fresh("part"), self.fresh("rb")
        end = f"{start} + {block}" if last.extent % block == 0 else \
            f"({start} + {block} < {last.extent} ? {start} + {block} : {last.extent})"
        body = [f"for (int {start} = 0; {start} < {last.extent}; {start} += {block}) {{",
                f"    {ctype} {part} = ({ctype})(0.0f);",
                f"    for (int {name} = {start}; {name} < {end}; {name}++) {{"]
        body += ["        " + line for line in statements] + [f"        {part} += {value};", "    }",
                                                              "    " + combine(Op.SUM, acc, part, compensation=compensation,
                                                                               ctype=ctype),
                                                              "}"]
        return self.loops(variables[:-1], body)

    # --- the kernel ---------------------------------------------------------------------
    def render_body(self) -> tuple[list[str], int]:
        """The statements computing element `gid` of the output, and the element count.

        The output's variables are written as digits of `gid` (i0 = gid / 4096, ...) inside
        every access expression, whose simplification then folds the digits back together
        where a load walks the output's own order (i0*4096 + i1*64 + i2 -> gid, a row
        broadcast -> gid / 64): fewer integer divisions, and PoCL then vectorizes loops it
        would otherwise leave scalar (softmax's exp over (8, 4, 64, 64): 0.63 -> 0.1 ms).
        """
        kernel = self.kernel
        out = kernel.out
        self.slot(out.id)
        size = max(out.size, 1)
        gid = Var("gid", size)
        self.var_names[gid] = "gid"
        digits = unflatten(Index.of(gid), out.shape)
        value = substitute_vars(kernel.value, dict(zip(kernel.variables, digits)))
        root = _Scope(None, variables=(gid,))
        result = self.value(value, root)
        return root.lines + [f"b0[o0 + gid] = {result};"], size

    def render_expression(self, value: Expr, variables: tuple[Var, ...]) -> tuple[list[str], str]:
        """Statements and the final value of `value`, its variables named i0, i1, ..."""
        root = _Scope(None, variables=variables)
        for n, v in enumerate(variables):
            self.var_names[v] = f"i{n}"
        result = self.value(value, root)
        return root.lines, result

    def signature(self) -> tuple[str, list[Param]]:
        """The function's first line (its name as {name}) and its parameters: each buffer the
        body used (pointer and element offset), the loop variables it reads, its constants."""
        params: list[Param] = []
        declarations: list[str] = []
        for buffer_id, slot in self.slots.items():
            buffer = self.buffers[buffer_id]
            declarations.append(self.lang.buffer_param(self.ctype(buffer.dtype), f"b{slot}", slot == 0))
            declarations.append(f"const int o{slot}")
            params += [Param("buffer", buffer_id), Param("offset", buffer_id, extra=self.folded.get(buffer_id, 0))]
        for n, var in enumerate(self.outer_vars):
            declarations.append(f"const int L{n}")
            params.append(Param("var", var=var))
        for value, name in self.constants.items():
            declarations.append(f"const float {name}")
            params.append(Param("constant", value=value))
        return f"{self.lang.kernel_prefix} {{name}}({', '.join(declarations)}) {{", params

    def fold_offsets(self) -> None:
        """Each read-only buffer's lowest element read goes into its offset argument: kernels
        that read equal windows of a buffer at different places (the q, k and v thirds of one
        projection) then render to one text and build once. The base stays at or below every
        address the kernel reads, and every index written in the source is 0 or more."""
        forms: dict[int, list[Index]] = {}
        for e in walk_expr(self.kernel.value):
            if isinstance(e, Load) and e.buffer_id in self.buffers and e.buffer_id != self.kernel.out.id:
                forms.setdefault(e.buffer_id, []).append(flat_index(e.indices, self.buffers[e.buffer_id].shape))
        for buffer_id, found in forms.items():
            lowest = min(f.bounds()[0] for f in found)
            if lowest > 0:   # (below 0: a guarded load's bound; the base could leave the buffer)
                self.folded[buffer_id] = lowest

    def render(self) -> RenderedKernel:
        self.fold_offsets()
        body, size = self.render_body()
        header, params = self.signature()
        lines = [header, f"    const int gid = {self.lang.global_id};", f"    if (gid >= {size}) return;"]
        lines += ["    " + line for line in body]
        lines.append("}")
        local = work_group_size(size, self.lang.compute_units)
        global_size = (size + local - 1) // local * local
        return RenderedKernel(self.kernel.name, "\n".join(lines), params, global_size, local)


def work_group_size(items: int, compute_units: int | None) -> int:
    """Work-items per group of a kernel of `items` work-items: LOCAL_SIZE, halved while the
    kernel would have fewer groups than the CPU has cores. PoCL runs a work-group on one core,
    so a column sum over 512 rows with 8 float16 work-items had used one of two cores."""
    local = LOCAL_SIZE
    if compute_units is None:
        return local
    while local > 1 and -(-items // local) < compute_units:
        local //= 2
    return local


def reduction_length(e: Reduce) -> int:
    """Elements one accumulator of `e` takes in."""
    length = 1
    for v in e.variables:
        length *= v.extent
    return length


def compensates(op: Op, dtype: str, length: int) -> bool:
    """Whether an accumulator taking in `length` elements of a reduction is compensated."""
    return op is Op.SUM and dtype == "float32" and length >= COMPENSATE_FROM


def start_value(op: Op, dtype: str, language: CStyleLanguage) -> str:
    """The identity a sum or maximum starts from (the kernels' and the reference's)."""
    if op is Op.SUM:
        return "0.0f" if dtype == "float32" else "0"
    return f"(-{language.infinity})" if dtype == "float32" else "(-2147483647 - 1)"


def combine(op: Op, acc: str, value: str, vector: bool = False, compensation: str | None = None,
            ctype: str = "float") -> str:
    """One step of a sum or a maximum (NaN wins, as in numpy), of floats or float vectors.

    With a `compensation` variable a sum is compensated (Kahan): the low bits each addition
    loses are carried into the next, so the error no longer grows with the length (a plain
    float sum of 2^24 times 0.1 was 1% off)."""
    if op is Op.SUM and compensation is not None:
        c = compensation
        return (f"{{ {ctype} y_ = ({value}) - {c}; {ctype} t_ = {acc} + y_; {c} = (t_ - {acc}) - y_; "
                f"{acc} = t_; }}")
    if op is Op.SUM:
        return f"{acc} += {value};"
    if vector:
        return f"{acc} = select({acc}, {value}, {value} > {acc} || {value} != {value});"
    return f"{acc} = ({value} > {acc} || {value} != {value}) ? {value} : {acc};"


def _forms(e: Expr) -> list[Index]:
    if isinstance(e, Load):
        return list(e.indices)
    if isinstance(e, IndexValue):
        return [e.index]
    if isinstance(e, Guard):
        return [f for f, _, _ in e.valid.ranges]
    if isinstance(e, RandomBits):
        return [e.counter, e.element]
    return []


def render_kernel(kernel: Kernel, language: CStyleLanguage, buffers: dict, vectorize: bool = False) -> RenderedKernel:
    """`vectorize`: sums and maxima along a contiguous axis in float vectors (lanes.py)."""
    return KernelRenderer(kernel, language, buffers, vectorize).render()
