"""A matched matrix product (see `schedule/matmul.py`) rendered by the tiled matmul generator
of the language: `matmul_source.py` (OpenCL, for CPUs) or `matmul_cuda.py` (CUDA).

Everything around the product (bias, activation, `p - lr * grad`) becomes the epilogue: a
small helper function called with the accumulator, rendered by the same C renderer as every other kernel.
"""
from __future__ import annotations

from ..proc.ir import Kernel, Load, replace_expr
from ..schedule.matmul import MatmulMatch
from ..schedule.tiling import Tiling
from .matmul_cuda import CudaTile, cuda_matmul_fits, cuda_tile, render_cuda_matmul
from .matmul_source import Epilogue, render_matmul
from .renderer import ACCUMULATOR, CStyleLanguage, KernelRenderer, Param, RenderedKernel


def render_matmul_kernel(kernel: Kernel, match: MatmulMatch, language: CStyleLanguage,
                         buffers: dict, tiling: Tiling | CudaTile | None = None) -> RenderedKernel | None:
    """The tiled kernel with the rest of the kernel's value as its epilogue function, or None
    where the language's generator cannot take the product; `tiling` defaults to the rules'
    (`choose_tiling` for OpenCL, `cuda_tile` for CUDA)."""
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
    helper = [language.helper_prefix + " float {name}_epilogue(" + ", ".join(["const float acc", f"const int {row}", "const int n",
                                                            f"const int {flat_batch}"] + helper_params) + ") {"]
    helper += ["    " + line for line in index_lines + body_lines] + [f"    return {value};", "}"]
    epilogue = Epilogue(f"{{name}}_epilogue({', '.join(['acc', 'm', 'n', 'b'] + call_args)})",
                        tuple(helper_params))
    placeholder = "AUTODIFFMATMULKERNEL"
    epilogue = Epilogue(epilogue.expression.replace("{name}", placeholder), epilogue.parameters)
    if cuda:
        tiled = render_cuda_matmul(match.shape, epilogue, placeholder, tiling or cuda_tile(match.shape, 1))
    else:
        tiled = render_matmul(match.shape, epilogue, tiling=tiling, name=placeholder)
    body = "\n".join(helper) + "\n" + tiled.source.replace(placeholder, "{name}")
    global_size = tuple(int(g) for g in tiled.global_size)
    local_size = tuple(int(s) for s in tiled.local_size)
    return RenderedKernel(kernel.name, body, params, global_size, local_size)
