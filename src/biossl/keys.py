"""Every key of a run config with its type, value, default and doc (``biossl config``).

The docs are the string literals under each dataclass field, read from the source with
:mod:`ast` (Python keeps no field docstrings at run time), so the one place a key is
documented is where it is declared.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import typing
from dataclasses import dataclass
from typing import Any

import yaml

from biossl.config import COMPONENT_SECTIONS, RunConfig, type_text
from biossl.registry import AXES


@dataclass
class KeyInfo:
    key: str
    """Dotted key as an override takes it (``train.lr``)."""
    type: str
    """Readable annotation with its declared range (``float > 0``)."""
    value: Any
    """Value in the resolved config."""
    default: Any
    """Value when neither the recipe nor an override sets it."""
    doc: str
    """The field's docstring."""


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of dataclass ``cls`` and its dataclass bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # no source shipped: keys stay undocumented
            continue
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(inspect.cleandoc(nxt.value.value).split())
    return docs


def _fields(cls: type, obj: Any, default: Any, prefix: str) -> list[KeyInfo]:
    hints = typing.get_type_hints(cls, include_extras=True)
    docs = field_docs(cls)
    return [KeyInfo(f"{prefix}{f.name}", type_text(hints[f.name]), getattr(obj, f.name),
                    getattr(default, f.name), docs.get(f.name, ""))
            for f in dataclasses.fields(cls)]


def describe(cfg: RunConfig) -> list[KeyInfo]:
    """Every key of ``cfg`` in section order; a component's keys are those of the component
    ``cfg`` selects, with that component's own defaults."""
    defaults = RunConfig()
    docs = field_docs(RunConfig)
    out: list[KeyInfo] = []
    for f in dataclasses.fields(RunConfig):
        value, default = getattr(cfg, f.name), getattr(defaults, f.name)
        if f.name in COMPONENT_SECTIONS:
            names = AXES[f.name].names()
            out.append(KeyInfo(f"{f.name}.name", " | ".join(names), value.name, default.name,
                               docs.get(f.name, "")))
            cls = AXES[f.name].get(value.name).config
            if cls is not None:
                out += _fields(cls, value.params, cls(), f"{f.name}.")
        elif dataclasses.is_dataclass(value):
            out += _fields(type(value), value, default, f"{f.name}.")
        else:
            out.append(KeyInfo(f.name, "str", value, default, docs.get(f.name, "")))
    return out


def yaml_text(value: Any) -> str:
    """``value`` as an override would write it (``null``, ``true``, ``[32, 64]``)."""
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def format_keys(keys: list[KeyInfo], width: int = 92) -> str:
    """One entry per key: ``key = value   [type; default D]`` and its doc indented below."""
    lines = []
    for k in keys:
        default = "" if k.value == k.default else f"; default {yaml_text(k.default)}"
        lines.append(f"{k.key} = {yaml_text(k.value)}   [{k.type}{default}]")
        lines += textwrap.wrap(k.doc, width, initial_indent="    ", subsequent_indent="    ")
    return "\n".join(lines)
