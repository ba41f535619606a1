"""The walk from one weight update back to what it was computed from.

Starting at the ``.grad`` a parameter held when its optimizer stepped, the walk goes back
through every value the rule code and autograd's backward computed, and stops at the
activity it read: values a module computed in its forward (a stage's, a head's, a feedback
module's), the input data, weights, and tensors from before the step. What it passes
through is the error computation; where it stops is what the update depended on.

A signal a module computed from an error (DTP's inverse g running on a target) is where
the walk stops too: the update read that module's output, not what the module read. What
the error met before (a head's Wᵀ, a softmax) still reaches the update through the values'
taint (``Value.transported``, ``Value.flags``), which follows the error everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from biossl.audit import ops
from biossl.audit.values import Value


@dataclass
class Lineage:
    """What one update depended on."""
    activity: dict[str, list[Value]] = field(default_factory=dict)
    """Module tag → the activity values of that module the update read."""
    inputs: list[Value] = field(default_factory=list)
    """Values that entered the judged module from outside (its input)."""
    data: list[Value] = field(default_factory=list)
    scalars: list[Value] = field(default_factory=list)
    flags: set[str] = field(default_factory=set)
    """Condition (ii): 'op (what)' on the error path."""
    inner_products: set[str] = field(default_factory=set)
    """Products of an error with an activity before the weight's own (Hebbian) product."""
    transported: dict[str, set[str]] = field(default_factory=dict)
    """Condition (iii): weight name → how it was used against its direction."""
    error_ops: set[str] = field(default_factory=set)
    labels: bool = False


def walk(start: Value, own_inputs: dict[int, Value], own_weight: str, weight_dims: int,
         forward: set[int] = frozenset()) -> Lineage:
    """The lineage of the update ``start`` of parameter ``own_weight``; ``own_inputs``: ids of
    the values that entered the parameter's module from outside; ``forward``: ids of the
    values the losses were computed from (a weight's use there computes a score, in whatever
    association order, e.g. (cᵀW) z for cᵀ(W z): not a transport of the error)."""
    out = Lineage(labels=start.labels)
    out.flags |= start.flags
    seen: set[tuple[int, bool]] = set()
    stack = [(start, True)]
    while stack:
        v, at_grad = stack.pop()
        if (id(v), at_grad) in seen:
            continue
        seen.add((id(v), at_grad))
        if v.is_weight:
            continue
        if v.kind == "labels":
            out.labels = True
            continue
        if id(v) in own_inputs and v is not start:
            out.inputs.append(v)
            continue
        if v.kind == "untracked":  # a constant made before the step (torch.tensor([...]))
            continue
        if v.kind == "data":
            out.data.append(v)
            continue
        if v.context is not None and v is not start:
            # computed by a module: its activity, or a signal it computed (DTP's g on a target)
            if v.numel <= 1:
                out.scalars.append(v)
            else:
                out.activity.setdefault(v.context, []).append(v)
            continue
        # on the error path
        out.error_ops.add(v.op)
        if v.flag:
            out.flags.add(f"{v.op} ({v.flag})")
        for w, how in v.uses if id(v) not in forward else ():
            if w != own_weight:
                out.transported.setdefault(w, set()).add(how)
        weight_product = v.op in ops.MATMUL or v.op in ops.CONV_BACKWARD
        if weight_product and not at_grad and v.op in ops.MATMUL and weight_dims >= 2 \
                and not any(p.is_weight for p in v.parents):
            out.inner_products.add(f"{v.op} {list(v.shape)}")
        nxt = at_grad and not weight_product
        for p in v.parents:
            stack.append((p, nxt))
    # weights the error met before it became a target a module computed from (DTP's g)
    for w in start.transported:
        if w != own_weight and w not in out.transported:
            out.transported[w] = {"Wᵀ in the error this target was computed from"}
    return out
