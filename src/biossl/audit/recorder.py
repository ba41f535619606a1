"""The instrument: a dispatch mode that records every aten op of an audited step as values
(biossl.audit.values), module hooks that say which stage, head or transport module was
running, and a wrapper of ``torch.autograd.backward`` / ``torch.autograd.grad`` that marks
what autograd's backward computed (the error) and the losses it started from.

Nothing here reads a rule's declarations: it sees the ops the real code ran.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from biossl.audit import ops
from biossl.audit.values import Value, ValueTable, storage_key, stride_order


@dataclass
class Update:
    """A parameter's ``.grad`` at the moment its optimizer stepped."""
    name: str
    group: str
    value: Value
    dims: int


@dataclass
class BatchStats:
    """A batch-statistics op run in a module's forward."""
    context: str
    module: str
    op: str


@dataclass
class Observations:
    """What the recorder saw during the audited steps."""
    table: ValueTable = field(default_factory=ValueTable)
    updates: list[Update] = field(default_factory=list)
    losses: list[Value] = field(default_factory=list)
    """The roots of every backward / grad call."""
    read_out: list[Value] = field(default_factory=list)
    """Scalars the code read out (``.item()``) that carry no error: the losses a rule without
    autograd reports."""
    inputs: dict[str, dict[int, Value]] = field(default_factory=dict)
    """Per module tag: the values that entered it from outside (its inputs), by id (held
    here, so that no id is reused while the audit runs)."""
    batch_stats: list[BatchStats] = field(default_factory=list)
    shared_storage: list[tuple[str, str]] = field(default_factory=list)
    """(buffer, parameter) pairs whose storage is the same (feedback that is W)."""
    label_reads: list[str] = field(default_factory=list)
    """Ops that read the labels (one entry per op)."""
    backward_calls: int = 0
    ops: int = 0

    def forward_values(self) -> set[int]:
        """Ids of the values the losses were computed from (not through an error): the
        forward computation. What an update read beyond it is its error computation."""
        seen: set[int] = set()
        stack = [v for v in self.losses + self.read_out if not v.error]
        while stack:
            v = stack.pop()
            if id(v) in seen or v.error:
                continue
            seen.add(id(v))
            stack += v.parents
        return seen


def _graph_task() -> int:
    """The id of the autograd graph task running on this thread (-1: none)."""
    current = getattr(torch._C, "_current_graph_task_id", None)
    return current() if current is not None else -1


class Recorder(TorchDispatchMode):
    """Records ops into ``obs`` while active; ``tags`` maps modules to their tag."""

    def __init__(self, obs: Observations, tags: dict[nn.Module, str]):
        super().__init__()
        self.obs = obs
        self.tags = tags
        self.stack: list[tuple[str, nn.Module]] = []
        self.backward_depth = 0
        self.hooks: list = []

    # ---- module context ----------------------------------------------------------------
    def _pre(self, module, args):
        tag = self.tags[module]
        if not self.in_backward():
            seen = self.obs.inputs.setdefault(tag, {})
            for t in tree_flatten(args)[0]:
                if isinstance(t, Tensor):
                    v = self.obs.table.get(t)
                    if v.context != tag:
                        seen[id(v)] = v
        self.stack.append((tag, module))

    def _post(self, module, args, out):
        if self.stack and self.stack[-1][1] is module:
            self.stack.pop()

    @contextlib.contextmanager
    def hooked(self):
        """Module hooks, the autograd wrappers and the dispatch mode, all removed on exit."""
        for m in self.tags:
            self.hooks.append(m.register_forward_pre_hook(self._pre))
            self.hooks.append(m.register_forward_hook(self._post))
        real_backward, real_grad = torch.autograd.backward, torch.autograd.grad

        def backward(tensors, *a, **k):
            self._roots(tensors)
            with self._in_backward():
                return real_backward(tensors, *a, **k)

        def grad(outputs, *a, **k):
            self._roots(outputs)
            with self._in_backward():
                return real_grad(outputs, *a, **k)

        torch.autograd.backward, torch.autograd.grad = backward, grad
        try:
            with self:
                yield self
        finally:
            torch.autograd.backward, torch.autograd.grad = real_backward, real_grad
            for h in self.hooks:
                h.remove()
            self.hooks.clear()
            self.stack.clear()

    def _roots(self, tensors) -> None:
        self.obs.backward_calls += 1
        for t in tree_flatten(tensors)[0]:
            if isinstance(t, Tensor):
                self.obs.losses.append(self.obs.table.get(t))

    def in_backward(self) -> bool:
        """Inside a backward/grad call, or inside autograd's engine however it was started
        (``from torch.autograd import grad`` escapes the wrapper, not the engine's task id)."""
        return self.backward_depth > 0 or _graph_task() != -1

    @contextlib.contextmanager
    def _in_backward(self):
        self.backward_depth += 1
        try:
            yield
        finally:
            self.backward_depth -= 1

    # ---- leaves ------------------------------------------------------------------------
    def register(self, t: Tensor, kind: str, name: str, network: bool = False) -> Value:
        """Tag a leaf. A buffer that shares a parameter's storage stays that parameter (a
        "feedback weight" that is W is W)."""
        old = self.obs.table.values.get(storage_key(t))
        if kind == "buffer" and old is not None and old[0].kind == "param":
            self.obs.shared_storage.append((name, old[0].op))
            return old[0]
        v = Value(kind, op=name, shape=tuple(t.shape), labels=kind == "labels", network=network,
                  activity=kind == "data")
        if kind in ("param", "buffer"):
            v.weight, v.ref_order = name, stride_order(t)
        return self.obs.table.set(t, v)

    # ---- ops -----------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self._record(func, args, kwargs, out)
        return out

    def _record(self, func, args, kwargs, out) -> None:
        table = self.obs.table
        name = ops.op_name(func)
        self.obs.ops += 1
        operands = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)]
        vals = [table.get(t) for t in operands]
        in_keys = {storage_key(t) for t in operands}
        if any(v.kind == "labels" or v.labels for v in vals):
            self.obs.label_reads.append(name)
        if name == "_local_scalar_dense":
            self.obs.read_out += [v for v in vals if not v.error]
        backward = self.in_backward()
        context = None if backward or not self.stack else self.stack[-1][0]
        if not backward and ops.batch_stats(name, args):
            self.obs.batch_stats.append(BatchStats(context or "rule code",
                                                   type(self.stack[-1][1]).__name__ if self.stack else "—", name))
        written = self._written(func, args, kwargs)
        # weights used against their direction (or element-wise), when something else is an operand
        uses: list[tuple[str, str]] = []
        if not all(v.is_weight for v in vals):
            for i, how in ops.weight_operands(name, args, table.flipped):
                v = table.get(args[i])
                if v.is_weight and v.network and len(v.shape) >= 2:
                    uses.append((v.weight, how))
        div = ops.divisor(name, args)
        divisor_computed = div is not None and table.get(div).activity
        flag = ops.error_flag(name, divisor_computed)
        outs = [o for o in tree_flatten(out)[0]]
        for j, o in enumerate(outs):
            if not isinstance(o, Tensor):
                continue
            key = storage_key(o)
            if key in in_keys:  # a view, or an operand written in place
                if key in written:
                    self._write_into(table.get(o), vals, uses, flag)
                continue
            picks = ops.output_operands(name, args, j)
            parents = vals if picks is None else [table.get(args[i]) for i in picks if isinstance(args[i], Tensor)]
            my_uses = uses if picks is None or (name in ops.CONV_BACKWARD and j == 0) else []
            if ops.shape_only(name):
                parents, my_uses = [], []
            v = Value("computed", op=name, context=context, parents=parents, shape=tuple(o.shape),
                      uses=my_uses, flag=flag)
            v.error = backward or any(p.error for p in parents)
            v.labels = any(p.labels for p in parents)
            v.activity = v.error or any(p.activity for p in parents)
            sources = {p.weight for p in parents if p.is_weight}
            if parents and len(sources) == 1 and all(p.is_weight for p in parents):
                # a copy of one weight (cast, sign, scaled, cloned): still that weight
                src = next(t for t in operands if table.get(t).is_weight)
                v.weight, v.network = sources.pop(), table.get(src).network
                v.flip, v.ref_order = table.flipped(src), stride_order(o)
            self._taint(v, parents)
            table.set(o, v)

    def _taint(self, v: Value, parents: list[Value]) -> None:
        """The error-path taint: what the error met on its way here (only error values carry it)."""
        if not v.error:
            return
        v.transported = frozenset().union(*(p.transported for p in parents)) | (
            {w for w, _ in v.uses} if any(p.error for p in parents) or not parents else set())
        v.flags = frozenset().union(*(p.flags for p in parents)) | (
            {f"{v.op} ({v.flag})"} if v.flag else set())

    def _write_into(self, target: Value, vals: list[Value], uses, flag) -> None:
        """An op wrote into ``target``'s storage: it now also depends on the op's operands."""
        if target.kind in ("param", "buffer", "labels", "data"):
            return  # optimizer-side writes (URF's B += ΔW) do not change what a leaf is
        new = [p for p in vals if p is not target and p not in target.parents]
        if target.is_weight and any(not p.is_weight for p in new):
            target.weight = None
        target.parents.extend(new)
        target.error = target.error or any(p.error for p in new) or self.in_backward()
        target.labels = target.labels or any(p.labels for p in new)
        target.activity = target.activity or target.error or any(p.activity for p in new)
        target.uses = target.uses + list(uses)
        if flag and not target.flag:
            target.flag = flag
        self._taint(target, target.parents)

    @staticmethod
    def _written(func, args, kwargs) -> set:
        """Storages the op writes into (in-place and out= arguments)."""
        keys = set()
        for i, a in enumerate(func._schema.arguments):
            if a.alias_info is None or not a.alias_info.is_write:
                continue
            val = args[i] if i < len(args) else kwargs.get(a.name)
            for t in tree_flatten(val)[0]:
                if isinstance(t, Tensor):
                    keys.add(storage_key(t))
        return keys
