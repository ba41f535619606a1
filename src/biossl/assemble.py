"""Assemble one run from a config: dataset spec, view recipe, encoder, objective, and the
rule (schedule × transport).

This is the only place where the axes meet, and it meets them through registries
only; it checks the one real coupling (an objective consumes the ViewBatch kind the
recipe produces) and says how to fix a mismatch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from biossl.config import ConfigError, RunConfig
from biossl.layout import channels_last_weights
from biossl.registry import DATASETS, ENCODERS, OBJECTIVES, SCHEDULES, TRANSPORTS, VIEWS, load_all
from biossl.rules.rule import IncompatibleRule, Rule
from biossl.precision import autocast_for
from biossl.seeds import derive


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but no CUDA device is available; use train.device=cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"train.device={name!r} but this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s): cuda:0 … cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device={name!r} but MPS (Apple GPU) is not available; use train.device=cpu")
    return dev


def build_rule(cfg: RunConfig, encoder, make_objective) -> Rule:
    """``cfg.schedule`` × ``cfg.transport`` over ``encoder``; a pair or a config that cannot
    work is a ConfigError naming the reason."""
    schedule = SCHEDULES.build(cfg.schedule.name, cfg.schedule.params)
    transport = TRANSPORTS.build(cfg.transport.name, cfg.transport.params, cfg.train.seed)
    try:
        return Rule(schedule, transport, encoder, make_objective, cfg.train)
    except IncompatibleRule as e:
        raise ConfigError(str(e)) from None
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"schedule {cfg.schedule.name} × transport {cfg.transport.name}: {e}") from None


@dataclass
class Assembly:
    cfg: RunConfig
    spec: object
    recipe: object
    rule: object
    device: torch.device
    stage_shapes: list

    @property
    def encoder(self):
        return self.rule.encoder


def build_encoder(cfg: RunConfig, recipe, spec, device: torch.device):
    """The encoder exactly as a run with ``cfg`` initialises it (seeded). Its input channels
    are those of the recipe's output (grayscale saccades turn RGB into 1 channel)."""
    torch.manual_seed(derive(cfg.train.seed, "weights"))
    in_channels = recipe.sample_shape(tuple(spec.image_shape))[0]
    enc = ENCODERS.build(cfg.encoder.name, cfg.encoder.params, in_channels).to(device)
    if cfg.train.channels_last:
        enc = channels_last_weights(enc)
    return enc


def build_inputs(cfg: RunConfig, device: torch.device | None = None):
    """(dataset spec, view recipe, device) of a run, on train.threads CPU threads: what both
    training (:func:`assemble`) and probing (biossl.run_eval) build first."""
    load_all()
    device = device or resolve_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    spec = DATASETS.get(cfg.data.name).factory
    try:
        recipe = VIEWS.build(cfg.views.name, cfg.views.params, tuple(spec.image_shape))
    except ValueError as e:  # the recipe does not fit the dataset's samples: a config mistake
        raise ConfigError(f"views: {e}") from None
    return spec, recipe, device


def assemble(cfg: RunConfig, device: torch.device | None = None) -> Assembly:
    spec, recipe, device = build_inputs(cfg, device)
    obj_cls = OBJECTIVES.get(cfg.objective.name).factory
    accepts = obj_cls.accepts_kinds
    if recipe.kind not in accepts:
        fitting = [n for n in VIEWS.names() if getattr(VIEWS.get(n).factory, "kind", None) in accepts]
        raise ConfigError(
            f"objective {cfg.objective.name!r} consumes {'/'.join(accepts)} batches but view recipe "
            f"{cfg.views.name!r} makes {recipe.kind!r} batches; set views.name to one of: {', '.join(fitting)}")
    encoder = build_encoder(cfg, recipe, spec, device)
    shapes = encoder.out_shapes(recipe.sample_shape(tuple(spec.image_shape)))

    def make_objective(i: int):
        return OBJECTIVES.build(cfg.objective.name, cfg.objective.params, shapes[i]).to(device)

    rule = build_rule(cfg, encoder, make_objective)
    rule.to(device)
    # precision is scoped to forward computations: the rule runs its backward passes outside
    rule.set_autocast(lambda: autocast_for(cfg, device))
    if cfg.train.compile:
        for stage in encoder.stages:
            stage.compile()
    return Assembly(cfg, spec, recipe, rule, device, shapes)
