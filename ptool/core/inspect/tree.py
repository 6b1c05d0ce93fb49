"""Walking a checkpoint's object tree: where the model's state dict is, and every tensor in it.

Works on metadata (TensorMeta) and on real torch tensors alike: callers pass `is_tensor`, so
the metadata view and the --stats / --diff views name tensors the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

IsTensor = Callable[[Any], bool]

# Where other tools keep the model weights, in the order ptool.core.checkpoint looks for them.
NESTED_KEYS = ("model_state_dict", "state_dict", "model", "module", "net", "network", "ema")


def is_state_dict(obj: Any, is_tensor: IsTensor) -> bool:
    """A flat name -> tensor mapping (quantized ones also hold dtypes and weight/bias tuples)."""
    if not isinstance(obj, Mapping) or not obj:
        return False
    if not all(isinstance(k, str) for k in obj):
        return False
    if any(isinstance(v, Mapping) for v in obj.values()):
        return False
    return any(is_tensor(v) or _tensor_tuple(v, is_tensor) for v in obj.values())


def _tensor_tuple(value: Any, is_tensor: IsTensor) -> bool:
    return isinstance(value, (tuple, list)) and any(is_tensor(v) for v in value)


def find_state_dict(obj: Any, is_tensor: IsTensor) -> tuple[tuple[str, ...], Mapping] | None:
    """(key path, state dict) of the model weights, or None when the file has no such dict."""
    if is_state_dict(obj, is_tensor):
        return (), obj
    if isinstance(obj, Mapping):
        for key in NESTED_KEYS:
            if isinstance(obj.get(key), Mapping):
                found = find_state_dict(obj[key], is_tensor)
                if found is not None:
                    return (key, *found[0]), found[1]
    return None


def state_dict_tensors(state: Mapping, is_tensor: IsTensor) -> Iterator[tuple[str, Any]]:
    """(name, tensor) of a state dict; a tuple value (packed int8 weight, bias) gives name[i]."""
    for name, value in state.items():
        if is_tensor(value):
            yield name, value
        elif _tensor_tuple(value, is_tensor):
            for i, item in enumerate(value):
                if is_tensor(item):
                    yield f"{name}[{i}]", item


def walk(obj: Any, is_tensor: IsTensor, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (dotted path, leaf) in nested dicts, lists and tuples; tensors are leaves."""
    if is_tensor(obj):
        yield path, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from walk(value, is_tensor, f"{path}.{key}" if path else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from walk(value, is_tensor, f"{path}[{i}]")
    else:
        yield path, obj


def model_tensors(obj: Any, is_tensor: IsTensor) -> tuple[tuple[str, ...] | None, Mapping, list]:
    """What a user means by "the checkpoint's tensors": (key path, state dict, [(name, tensor)])
    of the model's state dict, or (None, {}, every tensor in the file by dotted path)."""
    found = find_state_dict(obj, is_tensor)
    if found is None:
        return None, {}, [(p, v) for p, v in walk(obj, is_tensor) if is_tensor(v)]
    path, state = found
    return path, state, list(state_dict_tensors(state, is_tensor))
