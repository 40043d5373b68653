"""Tracing: Tensor, the functions on tensors, indexing, Program, ir_for/Feeder/Receiver,
reverse-mode AD and the VJP rules. Builds the graph IR; reaches the compiler only through
`entry.compiler()`."""
