"""nn.Module: parameters, buffers, submodules and PyTorch-compatible state dicts."""
from __future__ import annotations

import warnings
import weakref
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from ..errors import TraceError
from ..ir.graph import Variable
from ..frontend.program import Program, current_program
from ..frontend.tensor import Tensor, TensorLike

# attributes a forward is not taken to have read: the module's bookkeeping and the mode,
# which train()/eval() change on purpose before tracing again
_UNWATCHED = frozenset({"training"})


class Parameter(Tensor):
    """A persistent Tensor that a Module lists as a parameter, like torch.nn.Parameter.

    `Parameter(persistent_tensor)` shares that tensor's device value (as torch shares its
    storage); `Parameter(array)` makes a new persistent tensor. Operations on a Parameter
    give plain Tensors."""

    def __init__(self, data: TensorLike = None, requires_grad: bool = True, name: str | None = None) -> None:
        if data is None:
            data = np.zeros((0,), np.float32)   # torch: Parameter() is an empty tensor
        if isinstance(data, Tensor):
            if not data.is_persistent:
                raise TraceError(f"Parameter: {data!r} is an intermediate value of the traced program; "
                                 "a parameter needs a persistent tensor or an array")
            self._program, self._var, self._node = data._program, data._var, None
            self.requires_grad = requires_grad
            return
        super().__init__(data, name=name, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


class Module:
    """Base class of layers. Persistent Tensors assigned as attributes are parameters (unless
    registered as buffers); Modules assigned as attributes are submodules (named like PyTorch's)."""

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_non_persistent_buffers", set())
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_traced_in", None)   # weak reference to the program that traced it
        object.__setattr__(self, "_warned", set())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"call super().__init__() before assigning {name!r} in {type(self).__name__}")
        self._warn_if_traced(name, value)
        if name in self._buffers and not isinstance(value, (Parameter, Module)):
            if value is not None and not (isinstance(value, Tensor) and value.is_persistent):
                raise TypeError(f"cannot assign {type(value).__name__} as buffer {name!r} "
                                "(a persistent Tensor or None is expected)")
            self._buffers[name] = value
            object.__setattr__(self, name, value)
            return
        registry = (self._parameters if isinstance(value, Tensor) and value.is_persistent
                    else self._modules if isinstance(value, Module) else None)
        for other in (self._parameters, self._modules, self._buffers):
            if other is not registry:
                other.pop(name, None)
        if registry is not None:
            registry[name] = value   # a name assigned again keeps its place, as in torch
        object.__setattr__(self, name, value)

    def _warn_if_traced(self, name: str, value: Any) -> None:
        """A forward reads its Python numbers once, while tracing: changing one afterwards
        does not change the traced program, which would silently keep the old value."""
        if not self._traced_now() or name.startswith("_") or name in _UNWATCHED or name in self._warned:
            return
        old = self.__dict__.get(name)
        if isinstance(old, (bool, int, float)) and isinstance(value, (bool, int, float)) and old != value:
            self._warned.add(name)
            warnings.warn(f"{type(self).__name__}.{name} changed from {old!r} to {value!r} after the "
                          f"module was traced: the traced program keeps {name}={old!r}; trace the "
                          "forward again (in a new program) to use the new value", stacklevel=3)

    def _traced_now(self) -> bool:
        """Whether the current program has traced this module's forward (a new program,
        after ad.reset(), traces it afresh with the values of that time)."""
        program: Program | None = self._traced_in() if self._traced_in is not None else None
        return program is not None and program is current_program()

    def __delattr__(self, name: str) -> None:
        for registry in (self._parameters, self._buffers, self._modules):
            registry.pop(name, None)
        self._non_persistent_buffers.discard(name)
        object.__delattr__(self, name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        object.__setattr__(self, "_traced_in", weakref.ref(current_program()))
        return self.forward(*args, **kwargs)

    # --- registration ---------------------------------------------------------
    def register_parameter(self, name: str, param: Tensor | None) -> None:
        if param is not None and not (isinstance(param, Tensor) and param.is_persistent):
            raise TypeError(f"register_parameter: {name!r} must be a persistent Tensor or None")
        setattr(self, name, param)
        if param is None:
            self._parameters[name] = None

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        """A persistent tensor that is state but not a parameter (optimizers do not see it);
        listed in state_dict() when `persistent`, as in torch."""
        if tensor is not None and not (isinstance(tensor, Tensor) and tensor.is_persistent):
            raise TypeError(f"register_buffer: {name!r} must be a persistent Tensor or None, got {tensor!r}")
        if "." in name or not name:
            raise KeyError(f"register_buffer: bad buffer name {name!r}")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        self._buffers[name] = tensor
        if tensor is not None:
            tensor.requires_grad = False
        if persistent:
            self._non_persistent_buffers.discard(name)
        else:
            self._non_persistent_buffers.add(name)
        object.__setattr__(self, name, tensor)

    def add_module(self, name: str, module: "Module | None") -> None:
        setattr(self, name, module)
        if module is None:
            self._modules[name] = None

    # --- traversal ------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        """Depth-first, in assignment order (PyTorch's order); iterative."""
        stack: list[tuple[str, Module]] = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            yield name, module
            children = [(f"{name}.{n}" if name else n, m) for n, m in module._modules.items() if m is not None]
            stack.extend(reversed(children))

    def modules(self) -> Iterator["Module"]:
        return (m for _, m in self.named_modules())

    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        return ((n, m) for n, m in self._modules.items() if m is not None)

    def children(self) -> list["Module"]:
        return [m for m in self._modules.values() if m is not None]

    def _named_members(self, kind: str, prefix: str) -> Iterator[tuple[str, Tensor]]:
        seen: set[int] = set()
        for module_name, module in self.named_modules(prefix):
            for name, tensor in getattr(module, kind).items():
                if tensor is not None and id(tensor._var) not in seen:
                    seen.add(id(tensor._var))
                    yield (f"{module_name}.{name}" if module_name else name), tensor

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        return self._named_members("_parameters", prefix)

    def parameters(self) -> list[Tensor]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        return self._named_members("_buffers", prefix)

    def buffers(self) -> list[Tensor]:
        return [b for _, b in self.named_buffers()]

    def apply(self, fn: Callable[["Module"], Any]) -> "Module":
        """Call `fn` on every submodule, then on this module (torch's post-order); iterative."""
        stack: list[tuple[Module, bool]] = [(self, False)]
        while stack:
            module, expanded = stack.pop()
            if expanded:
                fn(module)
                continue
            stack.append((module, True))
            stack.extend((child, False) for child in reversed(module.children()))
        return self

    # --- state ------------------------------------------------------------------
    def _state_tensors(self) -> dict[str, Tensor]:
        """The tensors of state_dict() in torch's order: per module its parameters, then its
        persistent buffers, then its submodules'; a shared tensor under each of its names."""
        state: dict[str, Tensor] = {}
        for module_name, module in self.named_modules():
            prefix = f"{module_name}." if module_name else ""
            for name, p in module._parameters.items():
                if p is not None:
                    state[prefix + name] = p
            for name, b in module._buffers.items():
                if b is not None and name not in module._non_persistent_buffers:
                    state[prefix + name] = b
        return state

    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies of every parameter's and persistent buffer's current value, by PyTorch name."""
        return {name: t.numpy() for name, t in self._state_tensors().items()}

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Set parameter and buffer values (numpy arrays or anything with .numpy(), e.g. torch
        tensors; torch's int64 num_batches_tracked becomes int32).

        All or nothing: every key and shape is checked before any value is written."""
        self._prepare_load(state, strict)()

    def _prepare_load(self, state: Mapping[str, Any], strict: bool = True) -> Callable[[], None]:
        """Check `state` against the parameters and buffers and convert its values; returns the
        function that writes them. Split in two so that `checkpoint.restore` can check the model,
        the optimizer and the rest before writing any of them (a failed restore leaves every
        value as it was)."""
        tensors = self._state_tensors()
        missing = [k for k in tensors if k not in state]
        unexpected = [k for k in state if k not in tensors]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing {missing}, unexpected {unexpected}")
        writes: list[tuple[Variable, np.ndarray]] = []
        for name, value in state.items():
            if name not in tensors:
                continue
            if hasattr(value, "detach"):
                value = value.detach().cpu().numpy()
            array = np.asarray(value)
            var = tensors[name]._var
            if array.shape != var.shape:
                raise TraceError(f"load_state_dict: {name} has shape {var.shape}, got {array.shape}")
            writes.append((var, np.array(array, dtype=var.value.dtype)))

        def write() -> None:
            for var, array in writes:
                var.value = array
        return write

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def train(self, mode: bool = True) -> "Module":
        """Set the mode the next trace of forward uses (Dropout, BatchNorm read it while tracing)."""
        for _, module in self.named_modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class ModuleList(Module):
    """Submodules in a list, named "0", "1", ... (torch.nn.ModuleList)."""

    def __init__(self, modules: Iterable[Module] | None = None) -> None:
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def _renumber(self, modules: list[Module]) -> None:
        for name in list(self._modules):
            delattr(self, name)
        for i, module in enumerate(modules):
            self.add_module(str(i), module)

    def __getitem__(self, index: int | slice) -> "Module | ModuleList":
        modules = list(self._modules.values())
        if isinstance(index, slice):
            return ModuleList(modules[index])
        return modules[self._index(index)]

    def __setitem__(self, index: int, module: Module) -> None:
        self.add_module(str(self._index(index)), module)

    def __delitem__(self, index: int | slice) -> None:
        modules = list(self._modules.values())
        del modules[index if isinstance(index, slice) else self._index(index)]
        self._renumber(modules)

    def _index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for a ModuleList of {len(self)}")
        return index % len(self)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(list(self._modules.values()))

    def __iadd__(self, modules: Iterable[Module]) -> "ModuleList":
        return self.extend(modules)

    def append(self, module: Module) -> "ModuleList":
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules: Iterable[Module]) -> "ModuleList":
        for module in modules:
            self.append(module)
        return self

    def insert(self, index: int, module: Module) -> None:
        modules = list(self._modules.values())
        modules.insert(index, module)
        self._renumber(modules)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("ModuleList has no forward(): iterate over it")


class ModuleDict(Module):
    """Submodules by name, in insertion order (torch.nn.ModuleDict)."""

    def __init__(self, modules: Mapping[str, Module] | Iterable[tuple[str, Module]] | None = None) -> None:
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __getitem__(self, key: str) -> Module:
        return self._modules[key]

    def __setitem__(self, key: str, module: Module) -> None:
        self.add_module(key, module)

    def __delitem__(self, key: str) -> None:
        if key not in self._modules:
            raise KeyError(key)
        delattr(self, key)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._modules))

    def __contains__(self, key: object) -> bool:
        return key in self._modules

    def keys(self) -> list[str]:
        return list(self._modules)

    def values(self) -> list[Module]:
        return list(self._modules.values())

    def items(self) -> list[tuple[str, Module]]:
        return list(self._modules.items())

    def update(self, modules: Mapping[str, Module] | Iterable[tuple[str, Module]]) -> None:
        pairs = modules.items() if isinstance(modules, Mapping) else modules
        for key, module in pairs:
            self[key] = module

    def pop(self, key: str) -> Module:
        module = self[key]
        del self[key]
        return module

    def clear(self) -> None:
        for key in self.keys():
            del self[key]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("ModuleDict has no forward(): index it")
