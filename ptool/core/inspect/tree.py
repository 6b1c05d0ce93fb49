"""Walking a checkpoint's object tree: where the model's state dict is, and every tensor in it.

Works on metadata (TensorMeta) and on real torch tensors alike: callers pass `is_tensor`, so
the metadata view and the --stats / --diff views name tensors the same way.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ptool.core.errors import UsageError

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


def walk(
    obj: Any, is_tensor: IsTensor, parts: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every (path, leaf) in nested dicts, lists and tuples, tensors being leaves; each path as
    its parts, for `dotted` to join only where kept: a long key over many leaves (1 MB, 10**5
    items) is not copied into every leaf's path."""
    if is_tensor(obj) or not isinstance(obj, (Mapping, list, tuple)):
        yield parts, obj
        return
    for branch, value in branches(obj, parts):
        yield from walk(value, is_tensor, branch)


def branches(obj: Any, parts: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, value) of each item of a dict, list or tuple at `parts`; none for anything else."""
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            yield (*parts, f".{key}" if parts else str(key)), value
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield (*parts, f"[{i}]"), value


def dotted(parts: tuple[str, ...]) -> str:
    """A `walk` path as text: `optimizer.state.0.exp_avg`, `layers[2].weight`."""
    return "".join(parts)


def _children(obj: Any) -> Iterator[Any] | None:
    """The items of a container (a mapping's keys and values), None for a leaf."""
    if isinstance(obj, Mapping):
        return itertools.chain(obj.keys(), obj.values())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return iter(obj)
    return None


def unwalkable(obj: Any, depth: int, items: int) -> str | None:
    """Why walking `obj` (`walk`, repr, json: recursive, and a shared container once per
    reference) would not end well, or None. A pickle can nest 10**5 lists, make one hold
    itself (nesting without end), or share them: 60 lists each holding the one before twice
    walk 2**60 items. Found without recursion, each container's height and size once."""
    seen: dict[int, tuple[int, int]] = {}  # id -> (height, items walked) of a finished container
    walked = 1
    children = _children(obj)
    stack = [[obj, children, 0, 0]] if children is not None else []  # tallest, walked at start
    while stack:
        frame = stack[-1]
        item = next(frame[1], stack)  # the stack itself: a sentinel no container holds
        if item is stack:
            stack.pop()
            seen[id(frame[0])] = (frame[2] + 1, walked - frame[3])
            if stack:
                stack[-1][2] = max(stack[-1][2], frame[2] + 1)
            continue
        height, size = seen.get(id(item), (0, 1))
        inner = None if id(item) in seen else _children(item)
        if len(stack) + height > depth or (inner is not None and len(stack) >= depth):
            return f"its containers nest more than {depth} levels deep, or hold themselves"
        walked += size
        if walked > items:
            return f"its containers hold more than {items:,} items, shared ones counted each time"
        frame[2] = max(frame[2], height)
        if inner is not None:
            stack.append([item, inner, 0, walked - 1])
    return None


def side_by_side(obj: Any, is_tensor: IsTensor) -> list[str]:
    """The keys that each hold a state dict: the model's and any kept beside it (timm's
    `state_dict_ema`, a teacher and a student), for `--key` to pick from. When one top-level
    key holds them all, its own keys are named (`model.net`, `model.ema`)."""
    if not isinstance(obj, Mapping) or is_state_dict(obj, is_tensor):
        return []
    holders = [k for k, v in obj.items() if find_state_dict(v, is_tensor) is not None]
    if len(holders) == 1:
        inner = side_by_side(obj[holders[0]], is_tensor)
        if len(inner) > 1:
            return [f"{holders[0]}.{key}" for key in inner]
    return [str(k) for k in holders]


def entry(obj: Any, key: str) -> tuple[tuple[str, ...], Any] | None:
    """(key path, value) at a dotted `key` ("model.ema", "optimizer_state_dict.state.0": keys
    match as text); a key that holds dots itself ("body.0.conv.weight") matches whole."""
    if not isinstance(obj, Mapping):
        return None
    keys = {str(k): k for k in obj}
    if key in keys:
        return (key,), obj[keys[key]]
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        if head in keys:
            found = entry(obj[keys[head]], ".".join(parts[cut:]))
            if found is not None:
                return (head, *found[0]), found[1]
    return None


def model_tensors(
    obj: Any, is_tensor: IsTensor, key: str | None = None, source: object = "the file"
) -> tuple[tuple[str, ...] | None, Mapping, list]:
    """What a user means by "the checkpoint's tensors": (key path, state dict, [(name, tensor)])
    of the model's state dict, or (None, {}, every tensor in the file by dotted path). With
    `key`, the same within that entry of `source` (`--key state_dict_ema`)."""
    prefix: tuple[str, ...] = ()
    if key is not None:
        found_entry = entry(obj, key)
        if found_entry is None:
            raise _no_entry(obj, key, source)
        prefix, obj = found_entry
        if is_tensor(obj):
            return prefix, {}, [(key, obj)]
    found = find_state_dict(obj, is_tensor)
    if found is None:
        every = [(dotted(p), v) for p, v in walk(obj, is_tensor) if is_tensor(v)]
        return (prefix or None), {}, every
    path, state = found
    return (*prefix, *path), state, list(state_dict_tensors(state, is_tensor))


def _no_entry(obj: Any, key: str, source: object) -> UsageError:
    keys = [str(k) for k in obj] if isinstance(obj, Mapping) else []
    listed = ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
    return UsageError(
        f"--key {key}: {source} has no such entry" + (f"; its keys: {listed}" if keys else ""),
        hint="--key takes a top-level key, or a dotted path into one (model.ema)",
    )
