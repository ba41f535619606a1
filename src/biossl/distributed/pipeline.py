"""Layer-parallel training of the simultaneous schedule: consecutive groups of stages, each in
its own process, joined by torch.distributed point-to-point messages (gloo for CPU tensors,
NCCL for CUDA tensors).

Why this is exact. In the simultaneous schedule stage l+1's input for batch t is stage l's
detached output computed in step t *before* stage l's own step-t update
(``Rule.update`` returns the output of the forward that produced the gradient), and no
error, weight or random draw crosses a stage: each stage's objective has its own generator
(``draws: lockstep`` seeds every copy with the same stream, so lockstep stays lockstep with
no message at all). A stage's state after step t is therefore a function of its own state
and the inputs of steps ≤ t only, whichever wall-clock order the stages run in. A pipeline
whose first group runs several batches ahead of the last computes exactly the sequential
rule: the 'async' mode has no staleness; it differs from 'sync' only in blocking. Both are
tested equal to the sequential rule (tests/test_pipeline.py). docs/layer_parallel.md.

Processes. A launch of W = stage_groups × replicas ranks (biossl.distributed.launch:
``World.arranged`` and :class:`Layout`; rank = replica · G + group). Within a replica only group 0
reads data; it is driven by the training loop through :class:`StagePipeline` (``step(batch)``
like a rule), the other groups run :func:`serve` (biossl.distributed.part sets both up).
Messages from group g to g+1 (tag FORWARD, in order): a header (operation, batch layout,
activation shape) and, for a step, the detached activations. Every later group reports each
step's losses back to its replica's group 0 (tag STATUS), which bounds the batches in flight
and decides when to stop. Checkpoints: group 0 asks every group for its part at the same
step (the request travels behind that step's batch) and assembles the sequential rule's
state, so a checkpoint resumes in either mode.

Data parallel on top: every rank's rule is distributed over the replicas of its stage group
(``Rule.distribute(World.replicas())``): each segment update averages its gradients over them
and the objectives gather their candidates over them, exactly as in data-parallel training.
A group's replicas therefore stop on a non-finite loss at the same step (``check_finite``
agrees over them), and the group-0 ranks agree on what their pipelines reported
(:meth:`StagePipeline.step`), so every replica stops at the same step of the loop.
"""
from __future__ import annotations

import io
import math
import queue
import threading
from collections import deque
from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from biossl.distributed.launch import Layout
from biossl.rules.base import NonFiniteLoss
from biossl.rules.diagnostics import feedback_report, named_feedback_layers
from biossl.rules.schedules.simultaneous import Simultaneous
from biossl.views.batch import ViewBatch

STEP, SKIP, LOAD, STATE, DIAG, EPOCH, STOP = range(1, 8)
"""Operations a header carries (SKIP: a step an upstream group could not compute)."""
FORWARD, STATUS, OBJECT = 1, 2, 3
"""Message tags: the forward stream, the per-step reports to group 0, pickled states."""
KINDS = ("plain", "pairs", "grid", "sequence")
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
HEADER = 12
"""op, n, kind, grid rows, grid cols, dtype, ndim, shape (up to 5 dims)."""


# --------------------------------------------------------------------------- refusals
def refusal(rule, groups: int) -> str | None:
    """Why ``rule`` cannot be trained as ``groups`` stage groups (a number of processes they
    do not divide is ``World.arranged``'s refusal, before any rule is built)."""
    if not isinstance(rule.schedule, Simultaneous):
        from biossl.rules.rule import schedule_name
        return (f"parallel.stage_groups={groups} trains stage groups in separate processes, which "
                f"only the simultaneous schedule allows (every stage learns from its own loss "
                f"every step); this run's schedule is {schedule_name(rule.schedule)}. Fix: "
                f"schedule.name=simultaneous, or parallel.stage_groups=1")
    if groups > len(rule.spans):
        return (f"parallel.stage_groups={groups} but the encoder has {len(rule.spans)} stages; "
                f"use at most {len(rule.spans)} groups")
    if len(rule.optimizers) != len(rule.spans) or len(rule.transport.state_dict()):
        return ("the transport keeps state of its own outside the stages (e.g. targets' learned "
                "inverses), which a stage group cannot own alone; use parallel.stage_groups=1")
    return None


# --------------------------------------------------------------------------- parts of a rule
def part_state(rule, segments: range) -> dict:
    """What stage group ``segments`` owns of ``rule``'s training state."""
    return {"stages": {i: rule.encoder.stages[i].state_dict() for k in segments for i in rule.spans[k]},
            "objectives": {k: rule.objectives[k].state_dict() for k in segments},
            "optimizers": {k: rule.optimizers[k].state_dict() for k in segments},
            "probes": {k: rule.probes[k].state() for k in segments}}


def load_part(rule, part: dict) -> None:
    for i, sd in part["stages"].items():
        rule.encoder.stages[i].load_state_dict(sd)
    for k, sd in part["objectives"].items():
        rule.objectives[k].load_state_dict(sd)
    for k, sd in part["optimizers"].items():
        rule.optimizers[k].load_state_dict(sd)
    for k, st in part["probes"].items():
        rule.probes[k].load_state(st)


def part_diagnostics(rule, segments: range) -> dict[str, float]:
    """The keys of ``rule.diagnostics()`` that segments ``segments`` produce (over all
    segments, plus the transport's own, they are exactly ``rule.diagnostics()``)."""
    out = {k: v for s in segments for k, v in rule.probes[s].last.items()}
    owned = tuple([f"encoder.stages.{i}." for s in segments for i in rule.spans[s]]
                  + [f"objectives.{s}." for s in segments])
    out.update(feedback_report({n: m for n, m in named_feedback_layers(rule).items()
                                if (n + ".").startswith(owned)}))
    for s in segments:
        out.update({f"stage{rule.spans[s][-1]}/{k}": v for k, v in rule.objectives[s].diagnostics().items()})
    return out


def run_segments(rule, segments: range, batch: ViewBatch) -> tuple[Tensor, list[float], dict]:
    """The simultaneous step of ``segments`` on ``batch`` (whose ``x`` is their input):
    (detached output, losses, the transport's extra log)."""
    x, losses, log = batch.x, [], {}
    for k in segments:
        u = rule.update(k, x, batch)
        x = u.out
        losses.append(u.loss)
        log.update(u.log)
    return x, losses, log


# --------------------------------------------------------------------------- messages
def _header(device, op: int, batch: ViewBatch | None = None, x: Tensor | None = None,
            arg: int = 0) -> Tensor:
    h = torch.zeros(HEADER, dtype=torch.int64)
    h[0], h[1] = op, arg
    if batch is not None:
        h[1], h[2] = batch.n, KINDS.index(batch.kind)
        h[3], h[4] = batch.grid if batch.grid is not None else (0, 0)
    if x is not None:
        if x.dim() > HEADER - 7:
            raise ValueError(f"activations of {x.dim()} dims do not fit a pipeline header")
        h[5], h[6] = DTYPES.index(x.dtype), x.dim()
        h[7:7 + x.dim()] = torch.tensor(x.shape)
    return h.to(device)


def _batch_of(h: Tensor, x: Tensor) -> ViewBatch:
    grid = (int(h[3]), int(h[4])) if int(h[3]) else None
    return ViewBatch(x, int(h[1]), KINDS[int(h[2])], grid)


def _payload(h: Tensor, device) -> Tensor:
    shape = [int(s) for s in h[7:7 + int(h[6])]]
    return torch.empty(shape, dtype=DTYPES[int(h[5])], device=device)


def send_object(obj, dst: int, device) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8).to(device)
    dist.send(torch.tensor([data.numel()], dtype=torch.int64, device=device), dst, tag=OBJECT)
    dist.send(data, dst, tag=OBJECT)


def recv_object(src: int, device):
    n = torch.zeros(1, dtype=torch.int64, device=device)
    dist.recv(n, src, tag=OBJECT)
    data = torch.empty(int(n), dtype=torch.uint8, device=device)
    dist.recv(data, src, tag=OBJECT)
    return torch.load(io.BytesIO(data.cpu().numpy().tobytes()), map_location=device, weights_only=False)


class _Sends:
    """Non-blocking sends kept alive until done, at most ``limit`` outstanding."""

    def __init__(self, limit: int):
        self.limit = limit
        self.works: deque = deque()

    def send(self, tensors: Sequence[Tensor], dst: int, tag: int) -> None:
        self.works.append(([dist.isend(t, dst, tag=tag) for t in tensors], tensors))
        while len(self.works) > self.limit:
            self._wait_oldest()

    def flush(self) -> None:
        while self.works:
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        for w in self.works.popleft()[0]:
            w.wait()


# --------------------------------------------------------------------------- group 0
class StagePipeline:
    """What the training loop drives (biossl.distributed.part.Trainable), in place of the rule,
    on the rank holding stage group 0:
    ``step(batch)`` trains group 0's stages and hands their output on; the other groups
    follow in their own processes (:func:`serve`). ``state_dict()`` is the sequential rule's
    complete state at the current step (gathered), ``load_state_dict`` restores it in every
    group; ``diagnostics()`` (log steps) waits for every group to finish the current step.

    'sync': every step finishes in every group before ``step`` returns. 'async': up to
    ``max_in_flight`` batches handed on that the last group has not finished; a step's
    ``loss/stageK`` for a later group is the newest it reported (exact at log steps).

    With replicas (``rule.replicas``, the group-0 ranks of every replica) ``step``,
    ``diagnostics`` and ``state_dict`` are collective over them: a later group's non-finite
    loss raises :class:`NonFiniteLoss` on every replica's group 0 at the same call (one reports
    it, the others learn it in that call), and the logged losses are means over the replicas.
    """

    def __init__(self, rule, layout: Layout, ranges: Sequence[range], mode: str = "async",
                 max_in_flight: int = 2):
        if mode not in ("sync", "async"):
            raise ValueError(f"unknown pipeline mode {mode!r}; choose 'sync' or 'async'")
        if layout.group != 0 or len(ranges) != layout.groups:
            raise ValueError("StagePipeline runs on the rank of stage group 0, one range per group")
        self.rule, self.layout, self.ranges = rule, layout, [range(r.start, r.stop) for r in ranges]
        self.sync, self.max_in_flight = mode == "sync", max_in_flight
        self.device = next(rule.parameters()).device
        self.sent = 0  # steps handed to group 1
        self.done = {g: 0 for g in range(1, layout.groups)}  # steps each later group reported
        self.latest: dict[int, float] = {}  # newest loss per segment
        self.failure: str | None = None  # a later group's non-finite loss, as reported
        self._sends = _Sends(0 if self.sync else max_in_flight)
        self._status = {g: self._post_status(g) for g in self.done}
        self._parts_stale = True  # the other groups get group 0's copy of their part first
        self._closed = False

    # ---- what the training loop uses of a rule -----------------------------------------
    @property
    def optimizers(self):
        return self.rule.optimizers

    @property
    def encoder(self):
        return self.rule.encoder

    def num_epochs(self) -> int:
        return self.rule.num_epochs()

    def encoder_frozen_steps(self) -> int:
        return self.rule.encoder_frozen_steps()

    def train(self, mode: bool = True):
        self.rule.train(mode)
        return self

    def start_epoch(self, epoch: int) -> None:
        self.rule.start_epoch(epoch)
        self._forward(_header(self.device, EPOCH, arg=epoch))

    def step(self, batch: ViewBatch) -> dict[str, float]:
        if self._parts_stale:
            self._push_parts()
        x, losses, log = run_segments(self.rule, self.ranges[0], batch)
        self.latest.update(zip(self.ranges[0], losses))
        # the bound: after this hand-on at most max_in_flight steps unfinished downstream
        self._collect(self.sent + 1 - self.max_in_flight)
        self._forward(_header(self.device, STEP, batch, x), x)
        self.sent += 1
        # async waits for the first step too: from it on every segment has a loss, so every
        # replica's row has the same keys (the loop's per-step all_reduce is over them)
        self._collect(self.sent if self.sync or self.sent == 1 else -1)
        self._stop_if_failed()
        out = {f"loss/stage{k}": v for k, v in sorted(self.latest.items())}
        out.update(log)
        out["loss"] = sum(self.latest.values()) / len(self.latest)
        return out

    def wait(self) -> None:
        """Block until every group has finished every step handed on (timing)."""
        self._collect(self.sent)

    def diagnostics(self) -> dict[str, float]:
        self._collect(self.sent)
        self._stop_if_failed()
        self._forward(_header(self.device, DIAG))
        out = part_diagnostics(self.rule, self.ranges[0])
        out.update(self.rule.transport.diagnostics())
        for g in self.done:
            reply = recv_object(self.layout.lead + g, self.device)
            out.update(reply["diagnostics"])
            out.update(reply["log"])
        # every group has finished this step: its losses, exact (they override a step's row),
        # averaged over the replicas like the loop's own numbers
        keys = sorted(self.latest)
        mean = self.rule.replicas.mean(torch.tensor([self.latest[k] for k in keys], dtype=torch.float64,
                                                    device=self.device)).tolist()
        out.update({f"loss/stage{k}": v for k, v in zip(keys, mean)})
        out["loss"] = sum(mean) / len(mean)
        return out

    def state_dict(self) -> dict:
        """The sequential rule's state at the current step, every group's part included
        (NonFiniteLoss instead when a group failed: its part is not of this step)."""
        self._collect(self.sent)
        self._stop_if_failed()
        self._forward(_header(self.device, STATE))
        for g in self.done:
            load_part(self.rule, recv_object(self.layout.lead + g, self.device))
        return self.rule.state_dict()

    def load_state_dict(self, state: dict):
        out = self.rule.load_state_dict(state)
        self._parts_stale = True  # sent with the next step (after the loop's own changes: lr)
        return out

    def close(self) -> None:
        """Tell every group to stop and wait for their goodbyes (call once, also after an error)."""
        if self._closed:
            return
        self._closed = True
        self._forward(_header(self.device, STOP))
        self._sends.flush()
        for g, (buf, work) in self._status.items():
            while True:  # statuses of steps not yet read, then the goodbye (step −1)
                work.wait()
                if int(buf[0]) < 0:
                    break
                buf, work = self._post_status(g)

    # ---- internals -----------------------------------------------------------------------
    def _forward(self, header: Tensor, x: Tensor | None = None) -> None:
        tensors = [header] if x is None else [header, x.contiguous()]
        self._sends.send(tensors, self.layout.rank + 1, FORWARD)

    def _push_parts(self) -> None:
        self._forward(_header(self.device, LOAD))
        for g in self.done:
            send_object(part_state(self.rule, self.ranges[g]), self.layout.lead + g, self.device)
        self._parts_stale = False

    def _post_status(self, g: int):
        buf = torch.zeros(2 + len(self.ranges[g]), dtype=torch.float64, device=self.device)
        return buf, dist.irecv(buf, self.layout.lead + g, tag=STATUS)

    def _collect(self, upto: int) -> None:
        """Read the reports that arrived, waiting until every group finished step ``upto``."""
        for g in self.done:
            while True:
                buf, work = self._status[g]
                if self.done[g] >= upto and not work.is_completed():
                    break
                work.wait()
                self._status[g] = self._post_status(g)
                self._take(g, buf)

    def _stop_if_failed(self) -> None:
        """NonFiniteLoss when a later group reported one — on any replica (one all_reduce
        over the replicas' group 0): a replica that went on alone would wait for the others."""
        if not self.rule.replicas.any(self.failure is not None):
            return
        if self.failure is None:  # another replica's group saw it first; ours fails at the same step
            self._collect(self.sent)
        raise NonFiniteLoss(self.failure or "a later stage group's loss is not finite on another replica")

    def _take(self, g: int, buf: Tensor) -> None:
        step, ok = int(buf[0]), int(buf[1])
        self.done[g] = step
        if ok == 0 and self.failure is None:
            bad = [(k, float(v)) for k, v in zip(self.ranges[g], buf[2:].tolist()) if not math.isfinite(v)]
            k, v = bad[0] if bad else (self.ranges[g].start, float("nan"))
            self.failure = f"loss of stage {k} is {v} (stage group {g}, its step {step})"
        if ok == 1:
            self.latest.update(zip(self.ranges[g], buf[2:].tolist()))


# --------------------------------------------------------------------------- groups 1…
class _Inbox:
    """The forward stream from ``src`` in order: (header, activations or None). On the CPU a
    thread receives up to ``depth`` messages ahead, so the next batch's activations arrive
    while this group computes (gloo starts a transfer only once the receive is posted; the
    thread waits in gloo without the GIL). CUDA receives are enqueued on NCCL's stream anyway:
    there they are received in line."""

    def __init__(self, src: int, device: torch.device, depth: int):
        self.src, self.device = src, device
        self.thread = None
        if device.type == "cpu":
            self.queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
            self.thread = threading.Thread(target=self._run, name="pipeline-inbox", daemon=True)
            self.thread.start()

    def get(self) -> tuple[Tensor, Tensor | None]:
        if self.thread is None:
            return self._receive()
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def _receive(self) -> tuple[Tensor, Tensor | None]:
        h = torch.empty(HEADER, dtype=torch.int64, device=self.device)
        dist.recv(h, self.src, tag=FORWARD)
        x = None
        if int(h[0]) == STEP:
            x = _payload(h, self.device)
            dist.recv(x, self.src, tag=FORWARD)
        return h, x

    def _run(self) -> None:
        try:
            while True:
                h, x = self._receive()
                self.queue.put((h, x))
                if int(h[0]) == STOP:
                    return
        except BaseException as e:  # handed to the main thread, which raises it
            self.queue.put(e)


def serve(rule, layout: Layout, ranges: Sequence[range], mode: str = "async",
          max_in_flight: int = 2) -> int:
    """Train stage group ``layout.group`` from what the previous group hands on, until group 0
    says stop; returns the number of steps taken."""
    if layout.group == 0:
        raise ValueError("serve runs the stage groups after the first; group 0 is a StagePipeline")
    segments = ranges[layout.group]
    device = next(rule.parameters()).device
    sends = _Sends(0 if mode == "sync" else max_in_flight)
    reports = _Sends(max_in_flight + 1)
    inbox = _Inbox(layout.prev, device, max_in_flight)
    steps, failed, last_log = 0, False, {}
    while True:
        h, x = inbox.get()
        op = int(h[0])
        if op in (STEP, SKIP):
            steps += 1
            status = torch.full((2 + len(segments),), math.nan, dtype=torch.float64)
            status[0], status[1] = steps, -1.0
            if x is not None and not failed:
                batch = _batch_of(h, x)
                x, losses = batch.x, []
                try:
                    for k in segments:
                        u = rule.update(k, x, batch)
                        x = u.out
                        losses.append(u.loss)
                        last_log.update(u.log)
                    status[1] = 1.0
                except NonFiniteLoss:
                    failed = True  # group 0 stops the run; this group keeps answering until then
                    status[1] = 0.0
                status[2:2 + len(losses)] = torch.tensor(losses, dtype=torch.float64)
                out = _header(device, STEP, batch, x) if not failed else _header(device, SKIP)
            else:
                out = _header(device, SKIP)
            if layout.next is not None:
                sends.send([out, x.contiguous()] if int(out[0]) == STEP else [out], layout.next, FORWARD)
            reports.send([status.to(device)], layout.lead, STATUS)
            continue
        if layout.next is not None:  # control: pass it on first, behind the same steps
            sends.send([h], layout.next, FORWARD)
        if op == LOAD:
            load_part(rule, recv_object(layout.lead, device))
        elif op == STATE:
            send_object(part_state(rule, segments), layout.lead, device)
        elif op == DIAG:
            send_object({"diagnostics": part_diagnostics(rule, segments), "log": last_log},
                        layout.lead, device)
        elif op == EPOCH:
            rule.start_epoch(int(h[1]))
        elif op == STOP:
            sends.flush()
            goodbye = torch.full((2 + len(segments),), -1.0, dtype=torch.float64, device=device)
            reports.send([goodbye], layout.lead, STATUS)
            reports.flush()
            return steps
        else:
            raise RuntimeError(f"stage group {layout.group}: unknown pipeline operation {op}")
