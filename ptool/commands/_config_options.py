"""Typer options generated from `TrainConfig`'s fields, so the flags cannot drift from the config.

`train` takes every field; `resume`, `quantize qat` and `prune`'s fine-tuning take a subset.
Every generated flag defaults to None ("not given"), so a config file's value survives unless
the flag is on the command line.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any

import typer

from ptool.core import config as cfg

_PANELS = {section: f"{section.capitalize()} options" for section in cfg.SECTIONS}


def _cli_type(name: str) -> Any:
    kind = cfg.field_type(name)
    if kind in (int, float, bool):
        return kind
    return str  # lists and tuples are comma-separated strings, converted by cfg.convert


# A fine-tune from a checkpoint (`quantize qat`, `prune --finetune-epochs`) takes train's own
# flags for the optimizer, schedule, loop, checkpoints and logging, not those that change the
# model or where and how it runs (each command adds back what applies to it).
_NOT_FOR_FINETUNE = {
    "device",
    "init_from",
    "strict",
    "compile",
    "precision",
    "channels_last",
    "ema",
}
FINETUNE_FIELDS = ["batch_size"] + [
    name
    for name, f in cfg.FIELDS.items()
    if f.metadata["section"] in ("optimizer", "scheduler", "loop", "checkpoint", "logging")
    and name not in _NOT_FOR_FINETUNE
]
# What --help gives as their defaults: the run's own config, without its warmup
# (restore.finetune_config).
FINETUNE_DEFAULTS = {"*": "the run's", "warmup_epochs": "0", "warmup_steps": "0"}

# A help text that says its default in words: "(default: the last column)".
OWN_DEFAULT = re.compile(r" \(default: [^)]*\)")


def _parameter(name: str, *, hidden: bool = False, shown: str | None = None) -> inspect.Parameter:
    meta = cfg.FIELDS[name].metadata
    flag = "--" + name.replace("_", "-")
    kind = _cli_type(name)
    decls = [f"{flag}/--no-{name.replace('_', '-')}"] if kind is bool else [flag]
    help_text = meta["help"]
    if shown is not None:  # this command's default, not the one the help text describes
        help_text = OWN_DEFAULT.sub("", help_text)
    elif not OWN_DEFAULT.search(help_text):  # train's default
        default = cfg.FIELDS[name].default
        if default is inspect.Parameter.empty or default is cfg.dataclasses.MISSING:
            default = cfg.FIELDS[name].default_factory()  # type: ignore[misc]
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
    if meta.get("choices"):
        help_text += f" \\[{' | '.join(meta['choices'])}]"  # escaped: rich markup; spaced: wraps
    if shown is not None:
        help_text += f" [dim](default: {shown})[/dim]"
    option = typer.Option(
        *decls,
        help=help_text,
        rich_help_panel=_PANELS[meta["section"]],
        show_default=False,
        hidden=hidden,
    )
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[kind | None, option],
    )


def with_config_options(
    names: Iterable[str] | None = None,
    *,
    shown: Iterable[str] | None = None,
    defaults: Mapping[str, str] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add one option per config field to a command; it receives them as `overrides: dict`.

    Only the flags actually given are in `overrides`, already converted and checked.
    `shown`: the fields --help lists (default: all); the others are accepted but hidden, so
    the command itself can refuse them with a better message than "no such option".
    `defaults`: what --help gives as a field's default where it is not train's (a command
    that starts from a checkpoint's config: "the run's"); `"*"` stands for every other field.
    """
    selected = list(names) if names is not None else list(cfg.FIELDS)
    listed = set(shown) if shown is not None else set(selected)
    defaults = defaults or {}

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        own = [
            p
            for p in inspect.signature(func, eval_str=True).parameters.values()
            if p.name != "overrides"
        ]
        generated = [
            _parameter(name, hidden=name not in listed, shown=defaults.get(name, defaults.get("*")))
            for name in selected
        ]

        def command(**kwargs: Any) -> Any:
            overrides = {}
            for name in selected:
                value = kwargs.pop(name)
                if value is not None:
                    overrides[name] = cfg.convert(name, value, source="option")
            return func(overrides=overrides, **kwargs)

        command.__name__ = func.__name__
        command.__qualname__ = func.__qualname__
        command.__doc__ = func.__doc__
        command.__module__ = func.__module__
        params = own + generated
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate
