"""Code generation: one C-style renderer with per-language attributes (OpenCL C, CUDA C),
float-vector kernels, the tiled matmul generator, work-group reductions, megakernel
rendering, and `render_program`, the one entry every GPU-like backend uses."""
