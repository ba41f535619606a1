"""Typed run configuration: dataclasses loaded from YAML plus ``key=value`` overrides.

Every section is a dataclass whose fields are documented where they are defined.
Component sections (``views``, ``encoder``, ``objective``, ``rule``) hold a ``name``
and the keys of that component's own ``Config`` dataclass, validated against it, so
a typo names the key and lists the allowed ones.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from biossl.registry import AXES, load_all


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the fix."""


# --------------------------------------------------------------------------- sections
@dataclass
class DataConfig:
    name: str = "fashion-mnist"
    """Registered dataset (``biossl list``) used for self-supervised training."""
    root: str | None = None
    """Directory holding the dataset files; default: $BIOSSL_DATA, the user cache, system paths."""
    download: bool = True
    """Download (with checksum verification) when the files are missing and a network is reachable."""
    train_subset: int | None = None
    """Use only the first N training images for SSL (None: all)."""


@dataclass
class TrainConfig:
    epochs: int = 3
    """Passes over the training split (for GLL: per stage)."""
    batch_size: int = 256
    """Images per step (each gives two views, or one patch grid)."""
    lr: float = 1e-3
    """Learning rate of every optimizer the rule creates."""
    optimizer: Literal["adam", "sgd", "adamw"] = "adam"
    """Optimizer family used for every parameter group."""
    weight_decay: float = 0.0
    """L2 penalty / decoupled weight decay."""
    momentum: float = 0.9
    """SGD momentum (ignored by Adam)."""
    seed: int = 0
    """Seeds weights, data order, views and the rule's own draws."""
    device: str = "auto"
    """'auto' (cuda if available), 'cpu' or 'cuda[:i]'."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16 autocast for forward passes (GPU)."""
    channels_last: bool = False
    """Use channels_last memory format for conv stacks (GPU)."""
    compile: bool = False
    """Wrap stages in torch.compile."""
    threads: int | None = None
    """torch CPU threads (None: torch's default)."""
    checkpoint_every: int = 200
    """Write an atomic checkpoint every N steps (and at every epoch end)."""
    log_every: int = 10
    """Log metrics every N steps."""
    max_steps_per_epoch: int | None = None
    """Cap steps per epoch (quick runs, benchmarks)."""
    checkpoint_minutes: float = 5.0
    """Also write a checkpoint when this many minutes of wall time passed since the last one,
    so a kill (OOM, SIGKILL) loses at most that much; one is also written after a new run's
    first step, so a run that cannot save fails at once rather than hours later."""
    divergence_factor: float | None = 1000.0
    """Stop as diverged when |loss| exceeds this multiple of its running median (floored by
    the median of the first 20 losses; see biossl.divergence); None: stop only on NaN/inf."""

    def validate(self) -> None:
        if not self.checkpoint_minutes > 0:
            raise ValueError(f"checkpoint_minutes must be > 0, got {self.checkpoint_minutes}")
        if self.divergence_factor is not None and not self.divergence_factor > 1:
            raise ValueError(f"divergence_factor must be > 1 (or null to test only NaN/inf), "
                             f"got {self.divergence_factor}")


@dataclass
class EvalConfig:
    probe_epochs: int = 30
    """Epochs of the linear probe (Adam, full-batch minibatches of 1024 features)."""
    probe_lr: float = 1e-3
    """Linear probe learning rate (Bio-SSL: Adam 1e-3)."""
    knn_k: int = 20
    """Neighbours of the cosine kNN classifier."""
    few_labels: int = 100
    """Labels per class of the few-label probe (0 disables it)."""
    dataset: str | None = None
    """Labelled dataset to probe (transfer); None: the training dataset."""
    max_train: int | None = None
    """Use at most N labelled training images (None: all)."""
    max_test: int | None = None
    """Use at most N test images (None: all)."""
    batch_size: int = 1000
    """Images per forward pass when extracting features."""
    random_init: bool = True
    """Also probe the random-init encoder (same seed, same protocol)."""


@dataclass
class Component:
    """One choice on an axis: its registered name and its validated parameters."""
    name: str
    params: Any

    def to_dict(self) -> dict:
        d = {"name": self.name}
        if self.params is not None:
            d.update(dataclasses.asdict(self.params))
        return d


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    views: Component = field(default_factory=lambda: Component("deform", None))
    encoder: Component = field(default_factory=lambda: Component("convstack", None))
    objective: Component = field(default_factory=lambda: Component("hinge", None))
    rule: Component = field(default_factory=lambda: Component("bp", None))
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    name: str = "run"
    """Run name (the run directory's default name)."""

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"name": self.name}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Component):
                out[f.name] = v.to_dict()
            elif dataclasses.is_dataclass(v):
                out[f.name] = dataclasses.asdict(v)
        return out


COMPONENT_SECTIONS = ("views", "encoder", "objective", "rule")


# --------------------------------------------------------------------------- parsing
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert the lossless cases."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: {value!r} is not allowed; choose one of {list(args)}")
    if origin in (list, tuple):
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and origin is list:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        out = [coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise ConfigError(f"{where}: expected a finite number, got {value!r}")
            return float(value)
        if isinstance(value, str):  # YAML reads '1e-3' as a string
            try:
                return coerce(float(value), float, where)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    return value


def from_dict(cls: type, data: Mapping | None, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, naming unknown keys and bad values."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"unknown key {where + '.' + unknown[0] if where else unknown[0]!r}; "
            f"allowed keys{' of ' + where if where else ''}: {', '.join(fields)}")
    kwargs = {}
    for k, v in data.items():
        kwargs[k] = coerce(v, hints[k], f"{where}.{k}" if where else k)
    try:
        obj = cls(**kwargs)
    except TypeError as e:
        missing = [n for n, f in fields.items() if n not in kwargs
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        raise ConfigError(f"{where}: missing required key(s) {missing}") from e
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from e
    return obj


def _component(section: str, data: Any) -> Component:
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, Mapping) or "name" not in data:
        raise ConfigError(f"{section}: needs a 'name' (one of: "
                          f"{', '.join(AXES[section].names())})")
    data = dict(data)
    name = data.pop("name")
    try:
        entry = AXES[section].get(name)
    except KeyError as e:
        raise ConfigError(f"{section}.name: {e.args[0]}") from None
    if entry.config is None:
        if data:
            raise ConfigError(f"unknown key {section}.{next(iter(data))!r}; "
                              f"{section} {name!r} takes no parameters")
        return Component(name, None)
    return Component(name, from_dict(entry.config, data, section))


def build_config(raw: Mapping) -> RunConfig:
    """Validate a raw mapping (YAML + overrides) into a :class:`RunConfig`."""
    load_all()
    raw = dict(raw or {})
    allowed = [f.name for f in dataclasses.fields(RunConfig)]
    for k in raw:
        if k not in allowed:
            raise ConfigError(f"unknown top-level key {k!r}; allowed keys: {', '.join(allowed)}")
    defaults = RunConfig()
    kw: dict[str, Any] = {}
    for name in allowed:
        if name in COMPONENT_SECTIONS:
            kw[name] = _component(name, raw.get(name, getattr(defaults, name).name))
        elif name == "name":
            kw[name] = coerce(raw.get("name", defaults.name), str, "name")
        else:
            cls = type(getattr(defaults, name))
            kw[name] = from_dict(cls, raw.get(name), name)
    return RunConfig(**kw)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value (example: train.lr=3e-4)")
    key, val = item.split("=", 1)
    try:
        value = yaml.safe_load(val) if val != "" else None
    except yaml.YAMLError:
        value = val
    return key.strip().split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = _deepcopy(raw)
    for item in overrides:
        keys, value = parse_override(item)
        node = raw
        for k in keys[:-1]:
            nxt = node.get(k)
            if isinstance(nxt, str):  # "rule: bp" short form
                nxt = {"name": nxt}
            if nxt is None:
                nxt = {}
            node[k] = nxt
            node = nxt
        if keys[0] in COMPONENT_SECTIONS and keys[-1] == "name" and len(keys) == 2:
            # switching component: drop the old component's own keys
            node.clear()
        node[keys[-1]] = value
    return raw


def _deepcopy(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _deepcopy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_deepcopy(v) for v in x]
    return x


def find_recipe(name_or_path: str) -> Path:
    """A YAML path, or the name of a recipe under the repository's ``configs/``."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for base in (Path.cwd() / "configs", Path(__file__).resolve().parents[2] / "configs"):
        for cand in (base / name_or_path, base / f"{name_or_path}.yaml"):
            if cand.is_file():
                return cand
    known = sorted(q.stem for q in (Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    raise ConfigError(f"config {name_or_path!r} not found: give a YAML path or one of the "
                      f"recipes in configs/: {', '.join(known)}")


def load_raw(path: str | Path) -> dict:
    path = find_recipe(str(path))
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    raw.setdefault("name", path.stem)
    return raw


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    raw = load_raw(path) if path is not None else {}
    return build_config(apply_overrides(raw, list(overrides)))
