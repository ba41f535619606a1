"""What one process of a run trains, decided once the resolved config is shared (biossl.train:
rank 0 resolves it, :meth:`World.from_main` hands it to every rank, :meth:`World.arranged`
places the ranks). One entry for both modes:

* ``parallel.stage_groups`` 1 (one process, or data parallel): the whole rule, distributed over
  the replicas (every rank); the training loop drives it.
* ``parallel.stage_groups`` G > 1 (layer-parallel, biossl.distributed.pipeline): stage group
  ``rank mod G`` of replica ``rank div G``; its rule is distributed over the replicas of that
  stage group. Group 0 of each replica runs the training loop on a
  :class:`~biossl.distributed.pipeline.StagePipeline` (it reads the replica's shard of every
  global batch); the later groups :func:`~biossl.distributed.pipeline.serve` until it stops
  them. Where the encoder is cut is rank 0's decision (``parallel.group_starts``, or the split that
  balances the stages' measured update times), shared like the config.
"""
from __future__ import annotations

import contextlib
import signal
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch

from biossl.assemble import Assembly, assemble
from biossl.config import ConfigError, RunConfig
from biossl.distributed.launch import World
from biossl.encoders.base import StageStack
from biossl.rules.schedules.base import Schedule
from biossl.views.batch import ViewBatch


class Trainable(Protocol):
    """What the training loop (biossl.train, biossl.resume) uses of what it drives: a
    :class:`~biossl.rules.rule.Rule`, or a StagePipeline standing in for one on stage group 0."""
    optimizers: list[torch.optim.Optimizer]
    schedule: Schedule
    encoder: StageStack

    def num_epochs(self) -> int: ...
    def encoder_frozen_steps(self) -> int: ...
    def train(self, mode: bool = True): ...
    def start_epoch(self, epoch: int) -> None: ...
    def step(self, batch: ViewBatch) -> dict[str, float]: ...
    def diagnostics(self) -> dict[str, float]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict): ...


@dataclass
class Part:
    asm: Assembly
    rule: Trainable
    """What the training loop drives: the rule, or the StagePipeline over this replica's groups."""
    serve: Callable[[], dict] | None = None
    """A later stage group: what it runs instead of the training loop (None: it runs the loop)."""


@contextlib.contextmanager
def take_part(world: World, cfg: RunConfig) -> Iterator[Part]:
    """This process's part of the run (every rank enters it, in the same order of collectives);
    on leaving, a stage group 0 stops the later groups of its replica, whatever ended the run."""
    shard = world.shard(cfg.train.batch_size)  # refused before anything is built
    asm = assemble(cfg, world.device(cfg.train.device))
    rule = asm.rule
    groups = world.stage_groups
    if groups == 1:
        rule.distribute(world.replicas())
        yield Part(asm, rule)
        return
    from biossl.distributed.pipeline import StagePipeline, refusal
    from biossl.distributed.stage_split import group_ranges
    problem = refusal(rule, groups)
    if problem is not None:  # the same on every rank: each stops with it
        raise ConfigError(problem)
    split = world.from_main(lambda: _split(cfg, asm, world, shard))  # measured before distribute: no collectives
    ranges = group_ranges(len(rule.spans), split)
    rule.distribute(world.replicas())
    layout, par = world.layout, cfg.parallel
    if layout.group:
        yield Part(asm, rule, lambda: _follow(rule, layout, ranges, par))
        return
    pipe = StagePipeline(rule, layout, ranges, par.pipeline, par.max_in_flight)
    try:
        yield Part(asm, pipe)
    finally:
        pipe.close()


def _split(cfg: RunConfig, asm: Assembly, world: World, shard: int) -> list[int]:
    """Where groups 2… start: ``parallel.group_starts``, or the split balancing the stages' update
    times measured on a batch of the run's shape (random images: the time does not depend on
    their values; measured before any data is read, so a data error cannot strand a group)."""
    from biossl.distributed.stage_split import chosen_split
    from biossl.seeds import generator
    sample = None
    if cfg.parallel.group_starts is None:
        images = torch.randint(0, 256, (shard, *asm.spec.image_shape), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(0)).to(asm.device)
        sample = asm.recipe(images, generator(cfg.train.seed, "views", device=asm.device))
    try:
        return chosen_split(asm.rule, cfg.parallel.group_starts, world.stage_groups, sample)
    except ValueError as e:  # a parallel.group_starts that does not fit this encoder
        raise ConfigError(str(e)) from None


def _follow(rule, layout, ranges, par) -> dict:
    """A later stage group: trains from what the previous group hands on until its replica's
    group 0 says stop. Signals are group 0's to act on (it saves a checkpoint, which needs this
    group's part, then stops it); a second one here would leave it waiting for this group."""
    from biossl.distributed.pipeline import serve
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        steps = serve(rule, layout, ranges, par.pipeline, par.max_in_flight)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return {"stage_group": layout.group, "replica": layout.replica, "steps": steps, "done": True}
