"""Conditions (i)–(iv) per parameter group, and for the whole config, from the lineages of
the updates the audited steps made."""
from __future__ import annotations

from dataclasses import dataclass, field

from biossl.audit.recorder import Observations, Update
from biossl.audit.walk import Lineage, walk
from biossl.rules.base import CONDITIONS


@dataclass
class Condition:
    holds: bool
    evidence: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"holds": self.holds, "evidence": self.evidence}


@dataclass
class GroupAudit:
    """One parameter group (a stage, a head, the transport's own parameters)."""
    group: str
    params: list[str]
    updated: bool
    network: bool
    """A group of the trained network (encoder stage or objective); False: the transport's own."""
    conditions: dict[str, Condition] = field(default_factory=dict)
    reads: list[str] = field(default_factory=list)
    """What its updates read: module tags with a sample op, its input, the data."""
    error_ops: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"group": self.group, "params": self.params, "updated": self.updated,
                "network": self.network, "reads": self.reads, "error_ops": self.error_ops,
                "conditions": {c: v.to_json() for c, v in self.conditions.items()}}


def allowed_tags(group: str, heads_on: dict[str, int]) -> set[str]:
    """The module tags whose activity a group's update may read: its own, and a stage's head
    (on the stage's output) or a head's stage."""
    if group.startswith("stage"):
        i = int(group[5:])
        return {group} | {h for h, top in heads_on.items() if top == i}
    if group in heads_on:
        return {group, f"stage{heads_on[group]}"}
    return {group}


def judge_group(group: str, params: list[str], updates: list[Update], obs: Observations,
                heads_on: dict[str, int], network: bool) -> GroupAudit:
    g = GroupAudit(group, params, updated=bool(updates), network=network)
    if not updates:
        return g
    forward = obs.forward_values()
    lines: list[Lineage] = [walk(u.value, obs.inputs.get(group, {}), u.name, u.dims, forward) for u in updates]
    ok_tags = allowed_tags(group, heads_on) | {"transport"}
    foreign: dict[str, str] = {}
    read: dict[str, str] = {}
    data = inputs = False
    for ln in lines:
        for tag, vals in ln.activity.items():
            read.setdefault(tag, vals[0].describe())
            if tag not in ok_tags:
                foreign.setdefault(tag, vals[0].describe())
        data |= bool(ln.data)
        inputs |= bool(ln.inputs)
    if inputs:
        g.reads.append("its input")
    g.reads += [f"{t}: e.g. {d}" for t, d in sorted(read.items())]
    if data:
        g.reads.append("input data (not as its input)")
    local_ev = [f"{t} activity, e.g. {d}" for t, d in sorted(foreign.items(), key=_stages_first)]
    if data:
        local_ev.append("the input data, which is not this group's input")
    g.conditions["i"] = Condition(not local_ev, local_ev or [f"reads only {', '.join(_own(g.reads))}"])
    flags = sorted(set().union(*(ln.flags for ln in lines)))
    inner = sorted(set().union(*(ln.inner_products for ln in lines)))
    ev2 = flags + [f"{p} (inner product of error and activity)" for p in inner]
    g.conditions["ii"] = Condition(not ev2, ev2 or ["no softmax, norm, division by an activity or "
                                                    "error×activity product before the weight's own"])
    moved: dict[str, set[str]] = {}
    for ln in lines:
        for w, hows in ln.transported.items():
            moved.setdefault(w, set()).update(hows)
    ev3 = [f"{w} used by {', '.join(sorted(h))}" for w, h in sorted(moved.items())]
    g.conditions["iii"] = Condition(not ev3, ev3 or ["no forward weight of another layer used against its "
                                                     "direction (or element-wise) on the error path"])
    lab = any(ln.labels for ln in lines)
    g.conditions["iv"] = Condition(not lab, ["computed from the labels"] if lab else ["not computed from the labels"])
    g.error_ops = sorted(set().union(*(ln.error_ops for ln in lines)))
    return g


def _stages_first(item) -> tuple[bool, str]:
    return (not item[0].startswith("stage"), item[0])


def _own(reads: list[str]) -> list[str]:
    return [r.split(":")[0] for r in reads] or ["nothing but weights and constants"]


def config_conditions(groups: list[GroupAudit], obs: Observations) -> dict[str, Condition]:
    """A condition holds for the config when it holds for every updated group of the network
    (and, for (iv), when no loss the step differentiated came from the labels)."""
    net = [g for g in groups if g.network and g.updated]
    out = {}
    for c in CONDITIONS:
        bad = [g for g in net if not g.conditions[c].holds]
        out[c] = Condition(not bad and bool(net), [f"fails for {g.group}: {g.conditions[c].evidence[0]}"
                                                   for g in bad] if bad else
                           ([f"holds for all {len(net)} updated groups"] if net else ["no group was updated"]))
    if obs.shared_storage:  # whether or not the step used it: a feedback buffer that is W
        shared = [f"buffer {b} is the storage of {p}" for b, p in obs.shared_storage]
        out["iii"] = Condition(False, ([] if out["iii"].holds else out["iii"].evidence) + shared)
    label_losses = [v for v in obs.losses if v.labels]
    if label_losses:
        # the groups' "holds for all" would contradict the verdict: kept only when some failed
        out["iv"] = Condition(False, ([] if out["iv"].holds else out["iv"].evidence)
                              + [f"{len(label_losses)} differentiated loss(es) computed from the labels"])
    return out
