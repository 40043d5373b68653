"""nn.Module: parameters, submodules and PyTorch-compatible state dicts."""
from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

import numpy as np

from ..errors import TraceError
from ..ir.graph import Variable
from ..frontend.tensor import Tensor


class Module:
    """Base class of layers. Persistent Tensors assigned as attributes are parameters;
    Modules assigned as attributes are submodules (named like PyTorch's)."""

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"call super().__init__() before assigning {name!r} in {type(self).__name__}")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Tensor) and value.is_persistent:
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        """Depth-first, in assignment order (PyTorch's order); iterative."""
        stack: list[tuple[str, Module]] = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            yield name, module
            children = [(f"{name}.{n}" if name else n, m) for n, m in module._modules.items()]
            stack.extend(reversed(children))

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        seen: set[int] = set()
        for module_name, module in self.named_modules(prefix):
            for name, param in module._parameters.items():
                if id(param) not in seen:
                    seen.add(id(param))
                    yield (f"{module_name}.{name}" if module_name else name), param

    def parameters(self) -> list[Tensor]:
        return [p for _, p in self.named_parameters()]

    def children(self) -> list["Module"]:
        return list(self._modules.values())

    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies of every parameter's current value, by PyTorch name."""
        return {name: p.numpy() for name, p in self.named_parameters()}

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Set parameter values (numpy arrays or anything with .numpy(), e.g. torch tensors).

        All or nothing: every key and shape is checked before any value is written."""
        self._prepare_load(state, strict)()

    def _prepare_load(self, state: Mapping[str, Any], strict: bool = True) -> Callable[[], None]:
        """Check `state` against the parameters and convert its values; returns the function that
        writes them. Split in two so that `checkpoint.restore` can check the model, the optimizer
        and the rest before writing any of them (a failed restore leaves every value as it was)."""
        params = dict(self.named_parameters())
        missing = [k for k in params if k not in state]
        unexpected = [k for k in state if k not in params]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing {missing}, unexpected {unexpected}")
        writes: list[tuple[Variable, np.ndarray]] = []
        for name, value in state.items():
            if name not in params:
                continue
            if hasattr(value, "detach"):
                value = value.detach().cpu().numpy()
            array = np.asarray(value)
            var = params[name]._var
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
        for _, module in self.named_modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
