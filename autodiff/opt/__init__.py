"""Graph passes (IR -> IR), one per file, and the pipeline that orders them."""
from .cse import cse
from .inplace import mark_in_place
from .pipeline import CHECK_SWITCHES, PASS_NAMES, PIPELINE, GraphPass, PassRecord, optimize
from .prune import prune
from .rewrite import Graph, rebuild
from .simplify import simplify
