"""Export a compiled program to a folder, and run it from there without the model's code."""
from .loader import ExportedProgram, load_exported
from .writer import export

__all__ = ["ExportedProgram", "export", "load_exported"]
