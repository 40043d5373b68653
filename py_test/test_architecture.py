"""The layout's rules, checked from the imports (parsed with ast, function-level imports too):
data flows one way through the stages, and no import circle crosses a folder."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "autodiff"

# top to bottom: a module may import its own folder and the folders above it, never below
LAYERS = ["errors", "loggers", "comm", "ir", "frontend", "opt", "proc", "fusion", "schedule", "alloc", "codegen",
          "backends", "tune", "profiler", "compiler", "visualize", "printing", "distributed", "checkpoint", "export", "nn",
          "__init__"]
# circles allowed inside one folder, and why: Tensor's methods delegate to the functions,
# indexing, autodiff and VJP modules, which build Tensors
ALLOWED_CIRCLES = {"frontend"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports() -> dict[str, set[str]]:
    """module -> the autodiff modules it imports (a `from pkg import name` of a submodule counts
    as that submodule)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != module and target.startswith("autodiff"):
                    graph[module].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_module_is_in_a_layer():
    unknown = sorted({layer(m) for m in imports()} - set(LAYERS))
    assert not unknown, f"folders with no place in LAYERS: {unknown}"


def test_no_import_from_a_lower_stage_to_a_higher_one():
    rank = {name: n for n, name in enumerate(LAYERS)}
    upward = [f"{module} imports {target}" for module, targets in sorted(imports().items()) for target in sorted(targets)
              if rank[layer(target)] > rank[layer(module)]]
    assert not upward, "imports against the flow:\n" + "\n".join(upward)


def test_no_import_circle_crosses_a_folder():
    found = circles(imports())
    crossing = [c for c in found if len({layer(m) for m in c}) > 1]
    assert not crossing, f"import circles across folders: {crossing}"
    inside = sorted({layer(c[0]) for c in found})
    assert set(inside) <= ALLOWED_CIRCLES, f"import circles inside {inside}; allowed only in {ALLOWED_CIRCLES}"


def test_the_checker_sees_circles():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
