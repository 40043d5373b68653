"""The graph IR and everything every stage agrees on about it: nodes and blocks, the op
table, dtypes, shape rules, the reference semantics of every op, and the graph as text.
Imports nothing of autodiff but `errors`."""
from .graph import Block, Node, Variable
from .ops import Op
