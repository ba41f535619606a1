"""The values of one audited step: every tensor storage the step read or wrote, with where it
came from (its op, its module, its operands) — the dataflow graph the audit walks.

A value is keyed by its storage (device, data pointer). An op's output whose storage is not
one of its operands' is a new value (the newest allocation at an address is the live one, so a
reused address after a free is a new value); an output that shares an operand's storage is a
view (nothing new) or, for an op that writes into an operand, adds operands to that value.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef

LEAF_KINDS = ("param", "buffer", "labels", "data", "untracked")
"""Values the step did not compute: network and transport parameters, buffers (feedback
weights B, running statistics), the labels, the input data, anything else made before."""


@dataclass(eq=False)
class Value:
    kind: str
    """'computed' or one of :data:`LEAF_KINDS`."""
    op: str = ""
    """The aten op that made it (computed), or the parameter/buffer name (leaves)."""
    context: str | None = None
    """The module that was running when it was made ('stage1', 'head0', 'transport');
    None: rule code or autograd's backward."""
    parents: list["Value"] = field(default_factory=list)
    """The values its op read (for some multi-output ops, only those this output depends on)."""
    shape: tuple[int, ...] = ()
    error: bool = False
    """Made by autograd's backward, or computed from such a value: it carries an error."""
    labels: bool = False
    """Computed (however indirectly) from the labels."""
    activity: bool = False
    """Computed (however indirectly) from the input data or an error: not a constant."""
    weight: str | None = None
    """A weight (parameter or buffer name) this value is a copy of: a view, cast, sign, scaled
    or cloned copy computed from that weight alone."""
    network: bool = False
    """For weights: a parameter of the encoder or an objective (what condition (iii) protects)."""
    flip: bool = False
    """For weight copies: the copy's last two axes are the weight's last two swapped."""
    ref_order: bool | None = None
    """For weight copies: the stride order of the last two axes when it was made."""
    uses: list[tuple[str, str]] = field(default_factory=list)
    """Network weights the op used against their forward direction: (name, how)."""
    flag: str | None = None
    """What the op is for condition (ii): 'softmax', 'normalisation', 'division' or None."""
    transported: frozenset[str] = frozenset()
    """Error-path taint: network weights used transposed on the error's way to this value."""
    flags: frozenset[str] = frozenset()
    """Error-path taint: condition (ii) flags ('op (what)') on the error's way to this value."""

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def is_weight(self) -> bool:
        return self.kind in ("param", "buffer") or self.weight is not None

    def describe(self) -> str:
        where = self.context or "rule code"
        return f"{self.op} {list(self.shape)} ({where})"


def storage_key(t: Tensor) -> tuple[str, int] | None:
    """The storage a tensor lives in; None for tensors without one (empty, meta)."""
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
    return (str(t.device), ptr) if ptr else None


def stride_order(t: Tensor) -> bool | None:
    """Whether the last two axes are laid out row-major (None when one has size 1 or t is 1-D)."""
    if t.dim() < 2 or t.shape[-1] == 1 or t.shape[-2] == 1:
        return None
    return t.stride(-2) >= t.stride(-1)


def frozen(v: Value) -> Value:
    """A copy of ``v`` that later writes into its storage do not change (an update as applied)."""
    c = copy.copy(v)
    c.parents, c.uses = list(v.parents), list(v.uses)
    return c


class ValueTable:
    """Storage → the live value there. Each entry holds a weak reference to its storage: an
    address freed and reused by an allocation the recorder did not see (``torch.tensor``)
    is not mistaken for the value that lived there before."""

    def __init__(self):
        self.values: dict[tuple[str, int], tuple[Value, StorageWeakRef]] = {}

    def set(self, t: Tensor, v: Value) -> Value:
        key = storage_key(t)
        if key is not None:
            self.values[key] = (v, StorageWeakRef(t.untyped_storage()))
        return v

    def get(self, t: Tensor) -> Value:
        """The value ``t`` lives in; an 'untracked' leaf for storages the step did not make."""
        key = storage_key(t)
        entry = self.values.get(key) if key is not None else None
        v = entry[0] if entry is not None and not entry[1].expired() else None
        if v is None:
            v = Value("untracked", op="tensor from before the step", shape=tuple(t.shape))
            self.set(t, v)
        return v

    def flipped(self, t: Tensor) -> bool:
        """For a tensor holding a weight copy: are its last two axes the weight's swapped?"""
        v = self.get(t)
        now = stride_order(t)
        if v.ref_order is None or now is None:
            return v.flip
        return v.flip ^ (now != v.ref_order)
