"""``biossl audit``: run a config's rule for one instrumented step (one per schedule position
when stages learn at different times) on a small batch and judge conditions (i)–(iv) from
what the code did."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from biossl.audit.recorder import BatchStats, Observations, Recorder, Update
from biossl.audit.values import frozen
from biossl.audit.verdict import Condition, GroupAudit, config_conditions, judge_group
from biossl.config import RunConfig, apply_overrides, build_config
from biossl.naming import rule_name

AUDIT_BATCH = 16
"""Images per audited step (a pair recipe makes twice as many views)."""


@dataclass
class AuditReport:
    name: str
    rule: str
    objective: str
    encoder: str
    batch: int
    data: str
    """Where the audited images and their labels came from."""
    epochs: list[int]
    """The schedule positions (epochs) of the audited steps."""
    groups: list[GroupAudit]
    conditions: dict[str, Condition]
    batch_stats: list[BatchStats] = field(default_factory=list)
    label_reads: int = 0
    ops: int = 0
    backward_calls: int = 0
    seconds: float = 0.0

    def verdict(self) -> dict[str, bool]:
        """Condition → holds, for the whole config (the compare table's column)."""
        return {c: v.holds for c, v in self.conditions.items()}

    @property
    def batch_stat_stages(self) -> list[str]:
        return sorted({b.context for b in self.batch_stats})

    def to_json(self) -> dict:
        return {"name": self.name, "rule": self.rule, "objective": self.objective, "encoder": self.encoder,
                "batch": self.batch, "data": self.data, "epochs": self.epochs,
                "verdict": self.verdict(),
                "conditions": {c: v.to_json() for c, v in self.conditions.items()},
                "batch_statistics": [vars(b) for b in self.batch_stats],
                "label_reads": self.label_reads, "ops": self.ops, "backward_calls": self.backward_calls,
                "seconds": round(self.seconds, 2), "groups": [g.to_json() for g in self.groups]}


def audit_config(cfg: RunConfig, batch: int = AUDIT_BATCH, device: str = "cpu",
                 prepare=None) -> AuditReport:
    """Audit ``cfg`` (on the CPU, uncompiled, one thread). ``prepare(rule, labels)`` may
    change the assembled rule first, given the audited images' labels (tests break rules on
    purpose with it, e.g. a loss that reads the labels)."""
    threads = torch.get_num_threads()
    try:
        return _audit(cfg, batch, device, prepare)
    finally:
        torch.set_num_threads(threads)  # assemble sets train.threads; the caller's count comes back


def _audit(cfg: RunConfig, batch: int, device: str, prepare) -> AuditReport:
    from biossl.assemble import assemble
    # tiny tensors: one thread (more only spin against each other on a busy machine)
    cfg = build_config(apply_overrides(cfg.to_dict(), ["train.compile=false", "train.threads=1"]))
    t0 = time.perf_counter()
    asm = assemble(cfg, torch.device(device))
    rule = asm.rule
    images, labels, source = sample(asm, batch)
    if prepare is not None:
        prepare(rule, labels)
    for probe in rule.probes:
        probe.every = 0  # the angle to BP is a measurement with B := W, not the update
    gen = torch.Generator(device=asm.device).manual_seed(0)

    def make_batch():
        return asm.recipe(images, gen)

    rule.train()
    rule.start_epoch(0)
    # the warm-up a transport declares (DTP's inverses learn alone: no forward weight moves)
    # runs uninstrumented on two images: the audit needs the steps after it
    for _ in range(rule.encoder_frozen_steps()):
        rule.step(asm.recipe(images[:2], gen))
    names, groups, network = parameter_names(rule)
    heads_on = {head: span[-1] for head, span in zip(head_names(rule), rule.spans)}
    obs = Observations()
    rec = Recorder(obs, module_tags(rule))
    for p, n in names.items():
        rec.register(p, "param", n, network=network[groups[n]])
    for n, b in rule.named_buffers():
        if b.numel():
            rec.register(b, "buffer", n)
    rec.register(labels, "labels", "labels")
    # every phase's first epoch (greedy: each stage's turn); the audit steps at them in turn
    # until every group of the network has been updated (random draws get extra steps)
    epochs_plan = rule.schedule.positions()
    extra = 4 * len(rule.spans) + 4
    batches = [make_batch() for _ in range(len(epochs_plan) + extra)]
    for b in batches:
        rec.register(b.x, "data", "input batch")
    restore = capture_updates(rule, obs, names, groups)
    done: list[int] = []
    wanted = {g for g in groups.values() if network[g]}  # the network's groups that have parameters
    try:
        with rec.hooked():
            for i, b in enumerate(batches):
                if done and wanted <= {u.group for u in obs.updates}:  # every one has been updated
                    break
                e = epochs_plan[i % len(epochs_plan)]
                rule.start_epoch(e)
                rule.step(b)
                done.append(e)
    finally:
        restore()
    audits = []
    for g in network:
        params = [n for n, grp in groups.items() if grp == g]
        if not params:  # e.g. an objective without weights of its own
            continue
        ups = [u for u in obs.updates if u.group == g]
        audits.append(judge_group(g, params, ups, obs, heads_on, network[g]))
    return AuditReport(cfg.name, rule_name(cfg), cfg.objective.name, cfg.encoder.name, batch, source, done,
                       audits, config_conditions(audits, obs), obs.batch_stats, len(obs.label_reads),
                       obs.ops, obs.backward_calls, time.perf_counter() - t0)


def sample(asm, batch: int):
    """(images, labels, where they came from): the first images of the training split and
    their labels, or random images and labels when the dataset is not on this machine."""
    from biossl.data import load_dataset
    from biossl.data.base import DatasetError
    cfg = asm.cfg
    try:
        data = load_dataset(cfg.data.name, asm.spec.ssl_split, root=cfg.data.root, download=False)
        # a view of the split's labels: the tag covers the whole label tensor the dataset loaded
        x, y = data.images[:batch], data.labels[:batch]
        source = f"{cfg.data.name}/{asm.spec.ssl_split}, first {batch}"
    except (DatasetError, OSError) as e:  # absent dataset: the audit checks code, not data (a loader bug still raises)
        g = torch.Generator().manual_seed(0)
        shape = tuple(asm.spec.image_shape)
        if len(shape) == 2:  # waveform segments (C, T)
            x = torch.randint(-3000, 3000, (batch, *shape), generator=g, dtype=torch.int16)
        else:
            x = torch.randint(0, 256, (batch, *shape), generator=g, dtype=torch.uint8)
        y = torch.randint(0, 10, (batch,), generator=g)
        source = f"random images and labels ({cfg.data.name} not available: {str(e).splitlines()[0][:80]})"
    return x.to(asm.device), y.to(asm.device), source


def head_names(rule) -> list[str]:
    """The name of each segment's objective (``Rule.head_name``)."""
    return [rule.head_name(k) for k in range(len(rule.spans))]


def module_tags(rule) -> dict[nn.Module, str]:
    """Every module of the encoder's stages, the objectives and the transport → its tag."""
    tags: dict[nn.Module, str] = {}
    for i, stage in enumerate(rule.encoder.stages):
        for m in stage.modules():
            tags.setdefault(m, f"stage{i}")
    for head, obj in zip(head_names(rule), rule.objectives):
        for m in obj.modules():
            tags.setdefault(m, head)
    for m in rule.transport.modules():
        tags.setdefault(m, "transport")
    return tags


def parameter_names(rule):
    """({parameter: name}, {name: group}, {group: part of the trained network})."""
    names: dict[nn.Parameter, str] = {}
    groups: dict[str, str] = {}
    network: dict[str, bool] = {}

    def add(module, group, net):
        network.setdefault(group, net)
        for n, p in module.named_parameters():
            if p.requires_grad and p not in names:
                names[p] = f"{group}.{n}"
                groups[f"{group}.{n}"] = group
    for i, stage in enumerate(rule.encoder.stages):
        add(stage, f"stage{i}", True)
    for head, obj in zip(head_names(rule), rule.objectives):
        add(obj, head, True)
    add(rule.transport, "transport", False)
    if not any(g == "transport" for g in groups.values()):
        network.pop("transport")
    return names, groups, network


def capture_updates(rule, obs: Observations, names, groups):
    """Replace every optimizer's step by a record of the ``.grad`` it would apply (weights do
    not move: the audit needs the update, not its effect). Returns the undo."""
    opts = list(rule.optimizers)

    def capture(opt):
        def step(closure=None):
            for grp in opt.param_groups:
                for p in grp["params"]:
                    if p.grad is not None and p in names:
                        n = names[p]
                        obs.updates.append(Update(n, groups[n], frozen(obs.table.get(p.grad)), p.dim()))
        return step
    for o in opts:
        o.step = capture(o)

    def restore():
        for o in opts:
            o.__dict__.pop("step", None)
    return restore
