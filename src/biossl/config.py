"""Typed run configuration: dataclasses loaded from YAML plus ``key=value`` overrides.

Every section is a dataclass whose fields are documented where they are defined.
Component sections (``views``, ``encoder``, ``objective``, ``schedule``, ``transport``) hold a ``name``
and the keys of that component's own ``Config`` dataclass, validated against it, so
a typo names the key and lists the allowed ones.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import yaml

from biossl.bounds import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Range
from biossl.registry import AXES, load_all


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the fix."""


class OutOfRange(ConfigError):
    """A number outside the :class:`~biossl.bounds.Range` declared for its key."""


# --------------------------------------------------------------------------- sections
@dataclass
class DataConfig:
    name: str = "fashion-mnist"
    """Registered dataset (``biossl list``) used for self-supervised training."""
    root: str | None = None
    """Directory holding the dataset files, used or refused (no other copy is read instead);
    None: $BIOSSL_DATA if set (likewise), else the user cache, system paths, a download."""
    download: bool = True
    """Download (with checksum verification) when the files are missing and a network is reachable."""
    train_subset: PositiveInt | None = None
    """Use only the first N training images for SSL (None: all)."""


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
DEVICES = "auto, cpu, cuda, cuda:I, mps"
"""What ``train.device`` accepts (whether that device exists is checked when a run starts)."""


@dataclass
class TrainConfig:
    epochs: PositiveInt = 3
    """Passes over the training split for the whole run, whatever the schedule (greedy
    splits them evenly over the stages: 5 stages × 2 epochs each is 10)."""
    batch_size: PositiveInt = 256
    """Images per step (each gives two views, or one patch grid)."""
    lr: PositiveFloat = 1e-3
    """Learning rate of every optimizer the rule creates."""
    optimizer: Literal["adam", "sgd", "adamw"] = "adam"
    """Optimizer family used for every parameter group."""
    weight_decay: NonNegativeFloat = 0.0
    """L2 penalty / decoupled weight decay."""
    momentum: Annotated[float, Range(0, 1, max_open=True)] = 0.9
    """SGD momentum (ignored by Adam)."""
    seed: NonNegativeInt = 0
    """The run's seed: every random stream (weights, data order, views, feedback weights,
    negatives, …) is derived from it per purpose (biossl.seeds)."""
    device: str = "auto"
    """'auto' (cuda if available), 'cpu', 'cuda', 'cuda:I' (GPU number I) or 'mps' (Apple)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16 autocast for forward passes (GPU)."""
    channels_last: bool = False
    """Use channels_last memory format for conv stacks (GPU; on the CPU it speeds up
    oneDNN's convolutions and max-pools too)."""
    stage_chunks: PositiveInt = 1
    """Rows of the batch in this many chunks when the trained stages learn (every schedule;
    transports bp, rf, urf, sign: a forward without graph gives the objective's gradient at
    its head's output, then each chunk's forward again and its backward with that gradient's
    rows; targets: each stage's loss against its target, chunk by chunk). The same gradients
    (up to summation order) for one more forward of the trained stages, whose graph memory
    falls by this factor (issue 18); 1: off. Not for encoders with batch statistics
    (BatchNorm) nor the explicit transport."""
    compile: bool = False
    """Wrap stages in torch.compile."""
    threads: PositiveInt | None = None
    """torch CPU threads (None: torch's default)."""
    checkpoint_every: PositiveInt = 200
    """Write an atomic checkpoint every N steps (and at every epoch end)."""
    log_every: PositiveInt = 10
    """Log metrics every N steps."""
    max_steps_per_epoch: PositiveInt | None = None
    """Cap steps per epoch (quick runs, benchmarks)."""
    checkpoint_minutes: PositiveFloat = 5.0
    """Also write a checkpoint when this many minutes of wall time passed since the last one,
    so a kill (OOM, SIGKILL) loses at most that much; one is also written after a new run's
    first step, so a run that cannot save fails at once rather than hours later."""
    divergence_factor: Annotated[float, Range(1, min_open=True)] | None = 1000.0
    """Stop as diverged when |loss| exceeds this multiple of its running median (floored by
    the median of the first 20 losses; see biossl.divergence); None: stop only on NaN/inf."""

    def validate(self) -> None:
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ValueError(f"device {self.device!r} is not a device biossl can run on; "
                             f"allowed: {DEVICES} (I: a GPU number, e.g. cuda:1)")


@dataclass
class EvalConfig:
    probe_epochs: PositiveInt = 30
    """Epochs of the linear probe (Adam, full-batch minibatches of 1024 features)."""
    probe_lr: PositiveFloat = 1e-3
    """Linear probe learning rate (Bio-SSL: Adam 1e-3)."""
    knn_k: PositiveInt = 20
    """Neighbours of the cosine kNN classifier."""
    few_labels: NonNegativeInt = 100
    """Labels per class of the few-label probe (0 disables it)."""
    dataset: str | None = None
    """Labelled dataset to probe (transfer); None: the training dataset."""
    resize: bool = True
    """When the probe dataset's image shape differs from the training images', map it to
    the training shape (bilinear, antialiased when shrinking; gray→RGB by repetition,
    RGB→gray by luminance; see biossl.data.resize); false: refuse."""
    max_train: PositiveInt | None = None
    """Use at most N labelled training images (None: all)."""
    max_test: PositiveInt | None = None
    """Use at most N test images (None: all)."""
    batch_size: PositiveInt = 1000
    """Images per forward pass when extracting features."""
    random_init: bool = True
    """Also probe the random-init encoder (same seed, same protocol)."""
    max_frames: PositiveInt | None = 100_000
    """Frame-level probe (datasets with frame labels, e.g. speech phones per 10 ms): use at
    most N labelled frames per split, drawn uniformly with a generator seeded by train.seed
    (None: all). Bounds its memory (N × the summed channels of all stages × 4 bytes per
    split) and its time."""
    mfcc: bool = True
    """Waveform datasets (samples (1, T)): add an MFCC baseline row 'mfcc' next to random
    init (13 MFCCs per 10 ms frame, librosa; probed like one encoder stage)."""


@dataclass
class ParallelConfig:
    """How the processes of a torchrun launch share the work (one process: stage_groups 1).

    The launch's world size W is split as ``stage_groups`` × replicas: each replica trains on
    its shard of every global batch (data parallel), and within a replica each stage group
    is one process (layer parallel, simultaneous schedule only)."""
    stage_groups: PositiveInt = 1
    """Layer-parallel: consecutive groups of encoder stages, each trained by its own process
    (1: every process holds the whole encoder, plain data parallel)."""
    group_starts: list[PositiveInt] | None = None
    """Layer-parallel: where the stage groups start, as the first stage of every group but the
    first, ascending (``[2]`` on a 3-stage encoder: stages 0–1 | 2); None: the split that
    balances the groups' measured time per training step (measured once at start-up)."""
    pipeline: Literal["async", "sync"] = "async"
    """Layer-parallel: 'async' — the first group runs up to ``max_in_flight`` batches ahead of
    the last one (the throughput mode); 'sync' — every step finishes in every group before the
    next starts. Both compute exactly the sequential simultaneous rule (docs/layer_parallel.md)."""
    max_in_flight: PositiveInt = 2
    """Layer-parallel 'async': batches the first stage group may have handed on that the last
    one has not finished (bounds the memory of queued activations)."""

    def validate(self) -> None:
        if self.group_starts is not None:
            if len(self.group_starts) != self.stage_groups - 1:
                raise ValueError(f"parallel.group_starts lists where groups 2…{self.stage_groups} start: it "
                                 f"needs {self.stage_groups - 1} stage index(es), got {self.group_starts}")
            if any(b <= a for a, b in zip(self.group_starts, self.group_starts[1:])):
                raise ValueError(f"parallel.group_starts must be ascending, got {self.group_starts}")


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
    """Dataset read for self-supervised training."""
    views: Component = field(default_factory=lambda: Component("deform", None))
    """View recipe: how each image becomes the views the objective compares."""
    encoder: Component = field(default_factory=lambda: Component("convstack", None))
    """Encoder: a stack of stages whose outputs the probes read."""
    objective: Component = field(default_factory=lambda: Component("hinge", None))
    """Self-supervised loss (one per stage for the local schedules)."""
    schedule: Component = field(default_factory=lambda: Component("e2e", None))
    """Which stages learn when, from which loss: e2e, greedy, random, simultaneous."""
    transport: Component = field(default_factory=lambda: Component("bp", None))
    """How an error reaches a weight: bp, rf, urf, sign, targets, explicit."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, device and checkpointing."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Probe protocol of ``biossl eval``."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Data- and layer-parallel training under torchrun (biossl.distributed)."""
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


COMPONENT_SECTIONS = ("views", "encoder", "objective", "schedule", "transport")


# --------------------------------------------------------------------------- parsing
def type_text(tp: Any) -> str:
    """A readable form of an annotation: ``int ≥ 1 | None``, ``'adam' | 'sgd'``, ``list[int]``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        ranges = [str(m) for m in args[1:] if isinstance(m, Range)]
        return " ".join([type_text(args[0]), *ranges])
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else type_text(a) for a in args)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return f"{origin.__name__}[{', '.join(type_text(a) for a in args)}]"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _as_number(value: Any) -> float | None:
    """``value`` as a float when it is one (YAML reads 'nan' and '1e-3' as strings), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert the lossless cases."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        inner, ranges = args[0], [m for m in args[1:] if isinstance(m, Range)]
        num = _as_number(value)
        for r in ranges:
            if num is not None and not r.contains(num):
                kind = "an integer" if inner is int else "a finite number"
                raise OutOfRange(f"{where}: must be {kind} {r}, got {value}")  # as typed
        return coerce(value, inner, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, where)
            except OutOfRange:
                raise
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {type_text(tp)}, got {value!r}")
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
    hints = typing.get_type_hints(cls, include_extras=True)
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
    if "rule" in raw:
        raise ConfigError(legacy_rule_message(raw["rule"]))
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


LEGACY_RULES = {"bp": ("e2e", None), "rf": ("e2e", "rf"), "fa": ("e2e", "rf"), "urf": ("e2e", "urf"),
                "sign": ("e2e", "sign"), "gll": ("greedy", None), "rll": ("random", None),
                "dtp": ("e2e", "targets"), "clapp": ("simultaneous", None), "gim": ("simultaneous", None)}
"""The rule names of biossl ≤ 0.1 as (schedule, transport); None: from its old keys."""


def legacy_rule_message(rule: Any) -> str:
    """How to write an old ``rule`` section (or ``rule.*`` override) as schedule × transport."""
    old = dict(rule) if isinstance(rule, Mapping) else {"name": rule}
    name = old.get("name")
    schedule, transport = LEGACY_RULES.get(name, (None, None))
    if transport is None and schedule is not None:
        transport = ("explicit" if old.get("mode") == "explicit" else
                     "bp" if name in ("clapp", "gim") else old.get("feedback", "bp"))
        if transport == "fa":
            transport = "rf"
        if transport not in ("bp", "rf", "urf", "sign", "explicit"):
            transport = "bp|rf|urf|sign"
    fix = (f"write `schedule: {schedule}` and `transport: {transport}` (overrides: "
           f"schedule.name={schedule} transport.name={transport})" if schedule else
           "write `schedule: e2e|greedy|random|simultaneous` and `transport: bp|rf|urf|sign|targets|explicit`")
    notes = []
    if name == "gll":
        notes.append("train.epochs now counts the whole run (multiply the old per-stage value by the number of stages)")
    if name == "dtp":
        notes.append("DTP's feedback_* keys are now transport.inverse_* (e.g. feedback_warmup → inverse_warmup)")
    if "draws" in old:
        notes.append("draws is now a key of the objective (objective.draws)")
    return ("the `rule` section was split into `schedule` (which stages learn when) and `transport` "
            f"(how an error reaches a weight): {fix}" + "".join(f"; {n}" for n in notes) +
            ". See `biossl list` and docs/rules.md.")


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
            if isinstance(nxt, str):  # "schedule: greedy" short form
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


RECIPES_DIR = Path(str(importlib.resources.files("biossl") / "configs"))
"""The packaged recipes (``biossl train NAME``); found next to the installed package, so
every command works from any folder and from a non-editable install."""
SUITES_DIR = RECIPES_DIR / "suites"
"""The packaged suites (``biossl compare NAME``)."""


def recipe_names() -> list[str]:
    """Names of the packaged recipes, sorted."""
    return sorted(q.stem for q in RECIPES_DIR.glob("*.yaml"))


def recipe_description(path: Path) -> str:
    """A recipe's one-line description: its first line, a ``#`` comment (the convention every
    packaged recipe follows); empty when the file does not start with one."""
    with open(path, encoding="utf-8") as f:
        first = f.readline().strip()
    return first.lstrip("#").strip() if first.startswith("#") else ""


def find_recipe(name_or_path: str) -> Path:
    """A YAML path, or the name of a packaged recipe (``biossl list``)."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    for cand in (RECIPES_DIR / name_or_path, RECIPES_DIR / f"{name_or_path}.yaml"):
        if cand.is_file():
            return cand
    raise ConfigError(f"config {name_or_path!r} not found: give a YAML path or the name of "
                      f"a packaged recipe (biossl list): {', '.join(recipe_names())}")


def load_raw(path: str | Path) -> dict:
    """The raw mapping of a recipe: a YAML path or a packaged recipe name."""
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
