"""A matched matrix product (see `schedule/matmul.py`) rendered by the tiled matmul generator
of the language: `matmul_source.py` (OpenCL, for CPUs) or `matmul_cuda.py` (CUDA).

Everything around the product (bias, activation, `p - lr * grad`) becomes the epilogue: a
small helper function called with the accumulator, rendered by the same C renderer as every
other kernel. On OpenCL a second helper takes a float vector of a row's neighbouring outputs
(the register block's own vectors), so that a bias or a mask is read as one vector load.
"""
from __future__ import annotations

from ..proc.index import Index
from ..proc.ir import Buffer, Expr, Kernel, Load, Reduce, replace_expr, walk_expr
from ..schedule.matmul import MatmulMatch
from ..schedule.tiling import Tiling, rule_tiling
from .lanes import spread, vectorizes
from .matmul_cuda import CudaTile, cuda_matmul_fits, cuda_tile, render_cuda_matmul
from .matmul_source import Epilogue, render_matmul, unaligned_typedef, unaligned_vector
from .renderer import ACCUMULATOR, CStyleLanguage, KernelRenderer, Param, RenderedKernel


class _VectorEpilogueRenderer(KernelRenderer):
    """Reads vectors through the tiled kernel's 4-byte-aligned vector type, as its body does:
    a vloadN is an out-of-line call in PoCL, around which LLVM spills the register block."""

    def vector_load(self, width: int, pointer: str) -> str:
        return f"*(__global const {unaligned_vector(width)}*)({pointer})"


def _vector_epilogue(kernel: Kernel, value: Expr, language: CStyleLanguage, buffers: dict, width: int,
                     scalar: KernelRenderer) -> tuple[list[str], str] | None:
    """The epilogue on `width` neighbouring outputs of a row at once, as statements and the
    floatW result (its column variable is the first column / width), or None where a node
    cannot be computed across the lanes (lanes.py) or the helper would need other arguments
    than the scalar one's."""
    *batch, m, n = kernel.variables
    if n.extent % width or any(isinstance(e, Reduce) for e in walk_expr(value)):
        return None
    spread_value, n_vector, lane = spread(value, n, width)
    spread_value = replace_expr(spread_value, Load(ACCUMULATOR, (), "float32"),
                                Load(ACCUMULATOR, (Index.of(lane),), "float32"))
    with_accumulator = {**buffers, ACCUMULATOR: Buffer(ACCUMULATOR, "acc", (width,), "float32", "temp")}
    if not vectorizes(spread_value, lane, with_accumulator):
        return None
    renderer = _VectorEpilogueRenderer(kernel, language, buffers, vectorize=True)
    renderer.lanes[lane] = width
    renderer.var_names[lane] = "lane"   # never printed: loads are rendered at lane 0
    lines, result = renderer.render_expression(spread_value, (*batch, m, n_vector))
    if (renderer.slots, renderer.outer_vars, renderer.constants) != (scalar.slots, scalar.outer_vars,
                                                                     scalar.constants):
        return None
    if renderer.lane_of(spread_value) is None:
        result = f"(float{width})({result})"
    return lines, result


def render_matmul_kernel(kernel: Kernel, match: MatmulMatch, language: CStyleLanguage,
                         buffers: dict, tiling: Tiling | CudaTile | None = None,
                         vectorize: bool = True) -> RenderedKernel | None:
    """The tiled kernel with the rest of the kernel's value as its epilogue function, or None
    where the language's generator cannot take the product; `tiling` defaults to the rules'
    (`choose_tiling` for OpenCL, `cuda_tile` for CUDA). With `vectorize` (OpenCL) whole
    vectors of outputs go through the epilogue at once where it allows (`_vector_epilogue`)."""
    cuda = language.name == "cuda"
    if cuda and not cuda_matmul_fits(match.shape):
        return None
    accumulator = Load(ACCUMULATOR, (), "float32")
    epilogue_value = replace_expr(kernel.value, match.product, accumulator)
    *batch, m, n = kernel.variables
    renderer = KernelRenderer(kernel, language, buffers)
    body_lines, value = renderer.render_expression(epilogue_value, kernel.variables)
    params = [Param("buffer", kernel.out.id), Param("offset64", kernel.out.id),
              Param("buffer", match.a.buffer_id), Param("offset64", match.a.buffer_id, extra=match.a_offset),
              Param("buffer", match.b.buffer_id), Param("offset64", match.b.buffer_id, extra=match.b_offset)]
    helper_params, call_args = [], []
    for buffer_id, slot in renderer.slots.items():   # buffers the epilogue reads (the output too)
        ctype = renderer.ctype(buffers[buffer_id].dtype)
        helper_params += [language.buffer_param(ctype, f"b{slot}", False), f"const int o{slot}"]
        call_args += [f"b{slot}", f"o{slot}"]
        params += [Param("buffer", buffer_id), Param("offset", buffer_id)]
    for index, var in enumerate(renderer.outer_vars):
        helper_params.append(f"const int L{index}")
        call_args.append(f"L{index}")
        params.append(Param("var", var=var))
    for constant, name in renderer.constants.items():
        helper_params.append(f"const float {name}")
        call_args.append(name)
        params.append(Param("constant", value=constant))
    # batch variables from the flat batch index b
    index_lines, stride = [], 1
    for position in reversed(range(len(batch))):
        extent = batch[position].extent
        index_lines.append(f"const int i{position} = (b / {stride}) % {extent};")
        stride *= extent
    index_lines += [f"const int i{len(batch)} = m;", f"const int i{len(batch) + 1} = n;"]
    row, flat_batch = "m", "b"
    if match.folded_rows:   # the kernel's rows are (batch, m) flattened
        row, flat_batch = "row", "batch0"
        index_lines = [f"const int b = row / {match.folded_rows};",
                       f"const int m = row % {match.folded_rows};"] + index_lines
    arguments = [f"const int {row}", "const int n", f"const int {flat_batch}"] + helper_params
    helper = [language.helper_prefix + " float {name}_epilogue(" + ", ".join(["const float acc"] + arguments) + ") {"]
    helper += ["    " + line for line in index_lines + body_lines] + [f"    return {value};", "}"]
    call = ", ".join(["acc", "m", "n", "b"] + call_args)
    placeholder = "AUTODIFFMATMULKERNEL"
    epilogue = Epilogue(f"{placeholder}_epilogue({call})", tuple(helper_params))
    if cuda:
        tiled = render_cuda_matmul(match.shape, epilogue, placeholder, tiling or cuda_tile(match.shape, 1))
    else:
        tiling = tiling or rule_tiling(match.shape)
        width = tiling.vector_width
        vector = _vector_epilogue(kernel, epilogue_value, language, buffers, width, renderer) \
            if vectorize and language.vector_loads else None
        if vector is not None:
            vector_lines, vector_value = vector
            vector_index = [line if not line.startswith(f"const int i{len(batch) + 1} = ") else
                            f"const int i{len(batch) + 1} = n / {width};" for line in index_lines]
            helper += unaligned_typedef(width)
            helper += [f"{language.helper_prefix} float{width} {{name}}_epilogue_v("
                       + ", ".join([f"const float{width} acc"] + arguments) + ") {"]
            helper += ["    " + line for line in vector_index + vector_lines] + [f"    return {vector_value};", "}"]
            epilogue = Epilogue(epilogue.expression, epilogue.parameters, f"{placeholder}_epilogue_v({call})")
        tiled = render_matmul(match.shape, epilogue, tiling=tiling, name=placeholder)
    body = "\n".join(helper) + "\n" + tiled.source.replace(placeholder, "{name}")
    global_size = tuple(int(g) for g in tiled.global_size)
    local_size = tuple(int(s) for s in tiled.local_size)
    return RenderedKernel(kernel.name, body, params, global_size, local_size)
