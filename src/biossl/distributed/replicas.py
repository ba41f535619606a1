"""What a rule sees of data-parallel training: the replicas that share every global batch.

Each replica (process) holds the whole rule and ``1/size`` of every global batch: rows
``[rank·n, (rank+1)·n)`` of it in the global batch's order (rank-major). Two things make N
replicas learn exactly what one process learns on the global batch:

* **Gathered candidates.** An objective whose terms pair a row with other rows
  (negatives) computes the terms of *its own* anchors against candidates gathered from
  every replica (:meth:`Replicas.rows`, autograd-aware: the gradient a term sends to
  another replica's row reaches that replica, summed over ranks), and scales them so
  that its loss is ``size × its share`` of the global loss (:attr:`Replicas.loss_scale`).
  A mean over equal shards already is: ``size · Σ_own / N_global = Σ_own / n``.
* **Averaged gradients.** Before every optimizer step the rule averages the gradients of
  the parameters that step moves over the replicas (:meth:`Replicas.average_gradients`,
  one flattened all_reduce). The average of the ranks' ``size × share`` gradients is the
  gradient of the global loss.

Random draws that must agree (an objective's negatives over the global batch, CLAPP's
coin, the random layer-wise stage) come from streams seeded identically on every
replica; each replica uses its slice of them (:meth:`Replicas.own`).

:data:`ONE_PROCESS` is the identity: the same code runs unchanged in one process.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn


class Replicas:
    """One process: every method is the identity (the base every objective and transport
    holds until a launch hands it the real group)."""

    size: int = 1
    rank: int = 0

    @property
    def loss_scale(self) -> float:
        """The factor of a rank's share of the global loss (sums over its own terms) that
        makes the average of the ranks' gradients the global gradient: ``size``."""
        return float(self.size)

    def own(self, n: int) -> slice:
        """This rank's rows among the ``size × n`` rows of the global batch."""
        return slice(self.rank * n, (self.rank + 1) * n)

    def rows(self, t: Tensor) -> Tensor:
        """Every replica's rows of ``t`` (dim 0), rank-major; autograd-aware: the backward
        sends each rank the sum over all ranks of the gradients at its rows."""
        return t

    def sum_to_own(self, t: Tensor) -> Tensor:
        """A gradient over the global rows (``size × n``), summed over the ranks, then this
        rank's ``n`` rows (the backward of :meth:`rows`, for rules without autograd)."""
        return t

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Replace every ``.grad`` by its mean over the replicas (one flattened all_reduce)."""

    def all_finite(self, loss: Tensor) -> bool:
        """Whether the loss is finite on every replica (so all of them stop together)."""
        return bool(torch.isfinite(loss).all())

    def mean(self, values: Tensor) -> Tensor:
        """The mean over replicas of a small float tensor (the numbers a step logs)."""
        return values

    def any(self, flag: bool) -> bool:
        """Whether any replica raised ``flag`` (so that all of them act on it together)."""
        return bool(flag)

    def draw_rows(self, shape: tuple[int, ...], draw) -> Tensor:
        """``draw(global_shape)`` for the global rows (same stream on every replica), then
        this rank's rows: noise that one process would draw for the global batch."""
        return draw(shape)


ONE_PROCESS = Replicas()


def _gather_autograd(t: Tensor, group) -> Tensor:
    """all_gather along dim 0 whose backward sums the gradients over ranks (reduce-scatter)."""
    try:  # torch ≥ 2.5; torch.distributed.nn.functional.all_gather is deprecated in its favour
        from torch.distributed._functional_collectives import all_gather_single_autograd, wait_tensor
    except ImportError:  # pragma: no cover - older torch
        from torch.distributed.nn.functional import all_gather
        return torch.cat(all_gather(t.contiguous(), group=group))
    return wait_tensor(all_gather_single_autograd(t.contiguous(), 0, group))


class ProcessReplicas(Replicas):
    """The replicas of a torch.distributed process group (gloo on CPU, NCCL on GPU)."""

    def __init__(self, group=None):
        import torch.distributed as dist
        self.dist = dist
        self.group = group if group is not None else dist.group.WORLD
        self.size = dist.get_world_size(self.group)
        self.rank = dist.get_rank(self.group)

    def rows(self, t: Tensor) -> Tensor:
        if not t.requires_grad:  # stored activity: nothing to send back
            out = [torch.empty_like(t) for _ in range(self.size)]
            self.dist.all_gather(out, t.contiguous(), group=self.group)
            return torch.cat(out)
        return _gather_autograd(t, self.group)

    def sum_to_own(self, t: Tensor) -> Tensor:
        t = t.contiguous().clone()
        self.dist.all_reduce(t, group=self.group)
        return t[self.own(t.shape[0] // self.size)]

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.dist.all_reduce(flat, group=self.group)
        flat /= self.size
        i = 0
        for g in grads:
            g.copy_(flat[i:i + g.numel()].view_as(g))
            i += g.numel()

    def all_finite(self, loss: Tensor) -> bool:
        ok = torch.isfinite(loss.detach()).all().to(torch.float32).reshape(1)
        ok = ok.to(self._collective_device(loss))
        self.dist.all_reduce(ok, op=self.dist.ReduceOp.MIN, group=self.group)
        return bool(ok.item())

    def any(self, flag: bool) -> bool:
        t = torch.tensor([float(flag)])  # CPU: gloo carries it in a cpu:gloo,cuda:nccl group too
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX, group=self.group)
        return bool(t.item())

    def mean(self, values: Tensor) -> Tensor:
        values = values.clone()
        self.dist.all_reduce(values, group=self.group)
        return values / self.size

    def draw_rows(self, shape: tuple[int, ...], draw) -> Tensor:
        full = draw((shape[0] * self.size, *shape[1:]))
        return full[self.own(shape[0])]

    def _collective_device(self, t: Tensor) -> torch.device:
        return t.device
