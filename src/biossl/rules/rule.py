"""A learning rule = a schedule (which stages learn when) × a transport (how an error
reaches a weight), over an encoder and one objective per trained segment.

The rule owns the encoder, the objectives, one optimizer per segment (plus what the
transport itself learns) and the rule's random generator; ``rule.state_dict()`` is a
complete, resumable training state. The trainer only calls :meth:`Rule.start_epoch`,
:meth:`Rule.step` and sets the forward precision with :meth:`Rule.set_autocast`.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch
from torch import Tensor, nn

from biossl.distributed.replicas import ONE_PROCESS, Replicas
from biossl.encoders.base import StageStack
from biossl.rules.base import make_optimizer
from biossl.rules.diagnostics import (GradientAngleProbe, compare_gradients, feedback_report,
                                      named_feedback_layers)
from biossl.rules.rows import row_chunks, run_rows
from biossl.rules.schedules.base import Schedule
from biossl.rules.transports.base import Transport, Update
from biossl.seeds import generator
from biossl.views.batch import ViewBatch

MakeObjective = Callable[[int], nn.Module]
"""Builds a fresh objective module attached to the output of stage ``i``."""


class IncompatibleRule(ValueError):
    """A schedule × transport pair that cannot work; the message says why and what to use."""


class Rule(nn.Module):
    def __init__(self, schedule: Schedule, transport: Transport, encoder: StageStack,
                 make_objective: MakeObjective, train):
        super().__init__()
        reason = transport.refuse(schedule)
        if reason:
            raise IncompatibleRule(f"schedule {schedule_name(schedule)} × transport "
                                   f"{transport_name(transport)} cannot work: {reason}")
        self.schedule = schedule
        self.transport = transport
        self.train_cfg = train
        self.encoder = encoder
        self.spans = schedule.spans(len(encoder))
        self.row_chunks = _refuse_row_chunks(train.stage_chunks, transport, encoder)
        """Chunks of the batch's rows in which a segment's update runs (train.stage_chunks;
        1: the whole batch at once); the transport reads it."""
        schedule.plan(train.epochs, len(encoder))
        self.objectives = nn.ModuleList(make_objective(span[-1]) for span in self.spans)
        for span, obj in zip(self.spans, self.objectives):
            obj.seed_draws(train.seed, span[-1])
        transport.attach(self)
        self.optimizers: list[torch.optim.Optimizer] = [
            make_optimizer([p for i in span for p in encoder.stages[i].parameters()]
                           + list(obj.parameters()), train)
            for span, obj in zip(self.spans, self.objectives)]
        self.optimizers += transport.extra_optimizers(train)
        device = next(encoder.parameters()).device
        self.generator = generator(train.seed, "schedule", device=device)
        # one probe per segment: each measures its own updates every N of them
        self.probes = [GradientAngleProbe(transport.diagnostics_every) for _ in self.spans]
        self._autocast: Callable[[], ContextManager] = contextlib.nullcontext
        self.epoch = 0

    # ---- the trainer's interface -----------------------------------------------------
    replicas: Replicas = ONE_PROCESS

    def distribute(self, replicas: Replicas) -> None:
        """Train as one of data-parallel ``replicas`` (biossl.distributed): every segment update
        averages its gradients over them before its optimizer steps, the objectives compute
        their share of the global-batch loss and the transport learns what it learns alike."""
        self.replicas = replicas
        for obj in self.objectives:
            obj.distribute(replicas)
        self.transport.distribute(replicas)

    def num_epochs(self) -> int:
        """Epochs of the whole run (``train.epochs``, whatever the schedule)."""
        return self.train_cfg.epochs

    def start_epoch(self, epoch: int) -> None:
        if not 0 <= epoch < self.num_epochs():
            raise ValueError(f"epoch {epoch} is outside this run's {self.num_epochs()} epochs")
        self.epoch = epoch
        self.schedule.start_epoch(self, epoch)

    def step(self, batch: ViewBatch) -> dict[str, float]:
        """One training step; returns the numbers to log ('loss' and per-stage keys)."""
        return self.schedule.step(self, batch)

    def set_autocast(self, factory: Callable[[], ContextManager]) -> None:
        """The precision context of forward computations (backward passes run outside it)."""
        self._autocast = factory

    def autocast(self) -> ContextManager:
        return self._autocast()

    def encoder_frozen_steps(self) -> int:
        """Initial steps that leave the encoder untouched (DTP's inverse warm-up)."""
        return self.transport.frozen_steps()

    def diagnostics(self) -> dict[str, float]:
        """The last angles to back-propagation, ‖B‖/‖W‖ of feedback layers and the
        objectives' own numbers (e.g. clapp's W_retro alignment)."""
        out = {k: v for p in self.probes for k, v in p.last.items()}
        out.update(feedback_report(named_feedback_layers(self)))
        for span, obj in zip(self.spans, self.objectives):
            out.update({f"stage{span[-1]}/{k}": v for k, v in obj.diagnostics().items()})
        out.update(self.transport.diagnostics())
        return out

    # ---- what schedules call -----------------------------------------------------------
    def frozen_input(self, k: int, batch: ViewBatch) -> Tensor:
        """Segment ``k``'s input: the lower stages run frozen, without autograd, one view at
        a time or in train.stage_chunks chunks of rows when more (their transient maps are
        the step's memory peak; nothing of them is kept)."""
        start = self.spans[k].start
        if start == 0:
            return batch.x
        n, parts = batch.x.shape[0], batch.view_rows()
        if self.row_chunks > len(parts):  # train.stage_chunks: smaller parts, smaller transients
            parts = row_chunks(0, n, self.row_chunks)
        with torch.no_grad(), self.autocast():  # each part's map written into one output
            return run_rows(lambda rows: self.encoder.run(batch.x[rows], 0, start), parts, n)

    def update(self, k: int, x: Tensor, batch: ViewBatch) -> Update:
        """One complete update of segment ``k`` from its input ``x`` (detached here: the
        boundary nothing of this segment's error crosses); returns its detached output."""
        x = x.detach()
        opt = self.optimizers[k]
        opt.zero_grad(set_to_none=True)
        obj = self.objectives[k]
        measure = self.probes[k].due()
        draws = obj.draw_state() if measure else None
        u = self.transport.gradients(self, k, x, batch)
        if not u.step:  # e.g. DTP's warm-up: no forward weight moves, nothing to measure
            return u
        if measure:
            self.probes[k].measure(self.segment_groups(k), self._replay(k, x, batch, draws),
                                   self.transport.exact)
        self.probes[k].tick()
        # data parallel: one flattened all_reduce per segment update (nothing in one process)
        self.replicas.average_gradients(p for g in opt.param_groups for p in g["params"])
        with self.transport.stepping(self, k):
            opt.step()
        return u

    def _replay(self, k: int, x: Tensor, batch: ViewBatch, draws) -> Callable[[], Tensor]:
        """The reference loss of segment k with the draws (negatives, coins) its update used;
        the objective's stream continues afterwards as if nothing had been measured."""
        def loss() -> Tensor:
            obj = self.objectives[k]
            after = obj.draw_state()
            obj.set_draw_state(draws)
            try:
                return self.transport.reference_loss(self, k, x, batch)
            finally:
                obj.set_draw_state(after)
        return loss

    def loss_name(self, k: int) -> str:
        """How errors name segment k's loss: 'loss' end-to-end, 'loss of stage i' when local."""
        return "loss" if len(self.spans) == 1 else f"loss of stage {self.spans[k].start}"

    def head_name(self, k: int) -> str:
        """Segment ``k``'s objective's name in reports ('head' when there is one segment)."""
        return "head" if len(self.spans) == 1 else f"head{k}"

    def segment_groups(self, k: int) -> dict[str, list[nn.Parameter]]:
        """Segment ``k``'s parameters by stage, and its head's."""
        return {**{f"stage{i}": list(self.encoder.stages[i].parameters()) for i in self.spans[k]},
                self.head_name(k): [p for p in self.objectives[k].parameters() if p.requires_grad]}

    def angles(self, batch: ViewBatch, k: int = 0) -> dict[str, float]:
        """The angle between segment ``k``'s update and its back-propagation gradient on
        ``batch``, measured without taking a step (the transport learns nothing either)."""
        x = self.frozen_input(k, batch).detach()
        for p in self.parameters():
            p.grad = None
        draws = self.objectives[k].draw_state()
        self.transport.gradients(self, k, x, batch, learn_extra=False)  # checks its loss is finite
        out = compare_gradients(self.segment_groups(k), self._replay(k, x, batch, draws),
                                self.transport.exact)
        for p in self.parameters():
            p.grad = None
        return out

    # ---- state -----------------------------------------------------------------------
    def get_extra_state(self):
        return {"optimizers": [o.state_dict() for o in self.optimizers],
                "generator": self.generator.get_state(), "epoch": self.epoch,
                "schedule": self.schedule.state(), "probes": [p.state() for p in self.probes]}

    def set_extra_state(self, state) -> None:
        if len(state["optimizers"]) != len(self.optimizers):
            raise ValueError("checkpoint has a different number of optimizers than this rule")
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)
        self.generator.set_state(state["generator"])
        self.epoch = state["epoch"]
        self.schedule.load_state(state["schedule"])
        for p, st in zip(self.probes, state["probes"]):
            p.load_state(st)


def _refuse_row_chunks(chunks: int, transport: Transport, encoder: StageStack) -> int:
    """``chunks``, or IncompatibleRule when row chunks would change the update."""
    if chunks == 1:
        return 1
    if not transport.row_chunked:
        raise IncompatibleRule(f"train.stage_chunks={chunks} needs a transport whose update can run "
                               f"in row chunks (bp, rf, urf, sign, targets), not "
                               f"{transport_name(transport)}; use train.stage_chunks=1")
    if encoder.mixes_rows():
        raise IncompatibleRule(f"train.stage_chunks={chunks}: this encoder has batch statistics "
                               f"(BatchNorm), which chunks of rows would change; use "
                               f"train.stage_chunks=1 or an encoder without batch norm")
    return chunks


def schedule_name(schedule: Schedule) -> str:
    from biossl.registry import SCHEDULES
    return SCHEDULES.name_of(type(schedule))


def transport_name(transport: Transport) -> str:
    from biossl.registry import TRANSPORTS
    return TRANSPORTS.name_of(type(transport))
