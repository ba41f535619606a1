"""Difference target propagation (Lee et al. 2015; Bio-SSL's E2E DTP): every stage learns
from a *target* for its own output instead of a back-propagated error.

One update of a segment (stages l = 0…L−1 of the segment, g_l the learned inverse of
stage l ≥ 1; the top stage's error comes from the objective through its head):

1. **Forward.** Each stage runs on its predecessor's *detached* output, so every stage
   has its own small graph and none spans two stages. For a gradient-blocked pair
   objective (``grad_block``) the first view runs without autograd: its top error is zero,
   so it gets no target (only the second view's rows learn).
2. **Inverses** (every ``inverse_every`` steps, ``inverse_steps`` times): g_l learns to
   reconstruct h_{l−1} from f_l(h_{l−1} + ε), ε ~ N(0, noise_std²), forward stages frozen.
   By default before the targets, so they use the freshest inverses; ``inverse_order:
   after_targets`` (the official SSL-DTP code) computes every target with the step's initial
   g: g_l learns right after it made ĥ_{l−1}, while the targets go down (phase 4).
3. **Top target.** ĥ_L = h_L − eta · ∂L_SSL/∂h_L (the objective on a detached leaf copy of
   h_L; the same backward gives the head its gradient).
4. **Targets downwards** (no autograd): ĥ_{l−1} = h_{l−1} − g_l(h_l) + g_l(ĥ_l).
5. **Stage losses.** Stage l minimises ‖f_l(sg(h_{l−1})) − sg(ĥ_l)‖²: ``target_loss: sum``
   is ½·Σ over rows and units (the top stage's update is then exactly eta × its BP
   gradient); 'row_mean' divides by the rows; 'element_mean' (official, ``mse_loss``) is
   the mean over all elements without the ½. Its gradient is the post-synaptic difference
   times the pre-synaptic activity (Hebbian form).

With ``train.stage_chunks`` C > 1 the forward pass keeps no graph (it runs in C chunks of
rows), and every stage's loss, the targets and the inverses' losses run chunk by chunk —
the stage forward once more per step for a C-fold smaller graph (issue 18).

With a local schedule every segment is one stage, the top of its own loss: its target
comes straight from its head and no inverse is learned (the update is then eta × the
stage's BP update under 'sum'). During the first ``inverse_warmup`` steps only phase 2
runs. (iii) fails: the top error reaches h_L through the head's transposed weights.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biossl.bounds import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from biossl.feedback.inverse import build_inverse, check_out_activation
from biossl.layout import channels_last_weights
from biossl.rules.base import check_finite, make_optimizer
from biossl.rules.rows import row_chunks, run_rows
from biossl.rules.transports.base import Transport, Update
from biossl.seeds import generator


@dataclass
class TargetsConfig:
    eta: PositiveFloat = 0.5
    """Top target step: ĥ_L = h_L − eta · ∂L_SSL/∂h_L."""
    noise_std: NonNegativeFloat = 0.1
    """σ of the Gaussian corruption of h_{l−1} when training g_l (units of the activity);
    default 0.1, the official SSL-DTP code uses 1.0."""
    inverse_order: Literal["before_targets", "after_targets"] = "before_targets"
    """When the inverses learn within a step: 'before_targets' (default) — first, so the
    targets use the freshest inverses; 'after_targets' (official SSL-DTP) — the targets are
    computed with the previous step's inverses, then the inverses learn."""
    inverse_steps: NonNegativeInt = 1
    """Reconstruction updates of every g_l per inverse phase, each with fresh noise."""
    inverse_every: PositiveInt = 1
    """Run the inverse phase every N training steps (1: every step)."""
    inverse_warmup: NonNegativeInt = 0
    """Initial steps that train only the inverses (forward weights and head frozen; the
    inverse phase runs on every one of them)."""
    inverse_rows: Literal["one_view", "all"] = "one_view"
    """Rows the inverses learn from: 'one_view' — in a pair batch, the second views only (the
    first views are near-duplicates of the same images; halves the cost); 'all' — every
    row that gets a target."""
    inverse_lr: PositiveFloat | None = None
    """Learning rate of the inverses' optimizer (None: train.lr; same optimizer family)."""
    inverse_activation: str = "below"
    """Output nonlinearity of g_l: 'below' — stage l−1's last nonlinearity (so g_l's output
    has h_{l−1}'s range) — or an activation name (relu, hardtanh, tanh, leaky_relu, identity)."""
    inverse_bias: bool = True
    """Give the inverses' transposed convs / linear maps a bias."""
    target_loss: Literal["sum", "row_mean", "element_mean"] = "sum"
    """Stage loss from ‖f_l − ĥ_l‖²: 'sum' (default) — ½ Σ over rows and units (top update =
    eta × BP gradient); 'row_mean' — ½ Σ / rows; 'element_mean' — mean over all elements,
    no ½ (official SSL-DTP, ``mse_loss``): 'sum' × 2 / numel."""
    diagnostics_every: NonNegativeInt = 100
    """Steps between measurements of the angle between each stage's DTP update and its BP
    gradient on that step's batch (one extra BP forward + backward); 0: off."""

    def validate(self) -> None:
        if self.inverse_warmup > 0 and self.inverse_steps == 0:
            raise ValueError("inverse_warmup needs inverse_steps ≥ 1")
        try:
            check_out_activation(self.inverse_activation)
        except ValueError as e:
            raise ValueError(f"inverse_activation: {e}") from None


@dataclass
class Pass:
    """One forward pass of a segment: per-stage outputs with their own graphs."""
    outs: list[Tensor | None]
    """Stage outputs on the active rows, each graph starting at a detached input (None for a
    pass without graphs, and once :meth:`Targets.learn_from_targets` spent it)."""
    hs: list[Tensor | None]
    """The same outputs, detached (None once no later target or inverse reads it)."""
    top: Tensor
    """Detached top output for every row of the batch (the objective's input)."""
    active: slice
    """Rows of the batch that get targets."""
    x: Tensor | None = None
    """The segment's input on the active rows (a view): what its bottom stage recomputes
    from when the pass kept no graph (row chunks)."""


class _PresetGradient(torch.autograd.Function):
    """A loss's value whose backward hands ``out`` its gradient ``grad``, computed beforehand
    without a graph: a squared-error loss without its MSE graph (whose forward and backward
    each pass over the map again). ``grad`` is freed once the backward has passed it on, as
    the MSE's own gradient is, where a gradient given to ``Tensor.backward`` stays alive
    until the whole backward ends (the top stage's backward is the step's memory peak)."""

    @staticmethod
    def forward(ctx, out: Tensor, grad: Tensor, value: Tensor) -> Tensor:
        ctx.save_for_backward(grad)
        return value.detach().clone()

    @staticmethod
    def backward(ctx, upstream: Tensor):
        (grad,) = ctx.saved_tensors
        # backward from the loss itself brings 1: no pass over the map (× 1 is exact)
        return (grad if bool(upstream == 1) else grad * upstream), None, None


class Targets(Transport):
    """Stage-local losses against targets from learned inverses (difference target propagation)."""

    Config = TargetsConfig

    def __init__(self, params, run_seed):
        params = params if params is not None else TargetsConfig()
        params.validate()
        super().__init__(params, run_seed)
        self.diagnostics_every = params.diagnostics_every
        self.inverses = nn.ModuleList()
        self.steps_done: list[int] = []
        self.starts: list[int] = []
        self.noise: torch.Generator | None = None

    transposes_in_head = True  # the top target is the head's gradient
    local_targets = True
    row_chunked = True  # every stage's loss is a sum over rows: its graph can run in chunks

    def attach(self, rule) -> None:
        cfg = self.params
        stages = rule.encoder.stages
        # inverses[k][j] is g_l for l = span.start + 1 + j; a segment's bottom stage needs none.
        self.inverses = nn.ModuleList(
            nn.ModuleList(build_inverse(stages, l, cfg.inverse_bias, cfg.inverse_activation)
                          for l in list(span)[1:])
            for span in rule.spans)
        device = next(rule.encoder.parameters()).device
        self.inverses.to(device)
        if device.type == "cpu":  # g works channels-last on 2-D maps there (StageInverse): its conv
            channels_last_weights(self.inverses, ranks=(4,))  # weights too, so no call copies them, nor their gradients back
        self.starts = [span.start for span in rule.spans]
        self.steps_done = [0] * len(rule.spans)
        self.noise = generator(self.run_seed, "inverse-noise", device=device)
        if cfg.inverse_warmup and not self.has_inverses():
            raise ValueError(
                "transport.inverse_warmup trains the inverses, but no segment of this rule spans more "
                "than one stage (a local schedule gives every stage its own loss, or the encoder has "
                "one stage): each target comes straight from its stage's head and no inverse is "
                "learned; set transport.inverse_warmup=0 (or use schedule e2e on a deeper encoder)")

    def has_inverses(self) -> bool:
        return any(len(g) for g in self.inverses)

    def inverse(self, l: int, k: int = 0) -> nn.Module:
        """g_l of segment ``k`` (l a stage index, above the segment's bottom stage)."""
        start = self.starts[k]
        if l <= start:
            raise IndexError(f"stage {l} is the bottom of its segment: it has no inverse")
        return self.inverses[k][l - start - 1]

    def extra_optimizers(self, train) -> list[torch.optim.Optimizer]:
        if not self.has_inverses() or not self.params.inverse_steps:
            return []
        fb_train = copy.copy(train)
        fb_train.lr = self.params.inverse_lr if self.params.inverse_lr is not None else train.lr
        self.optimizer = make_optimizer(self.inverses.parameters(), fb_train)
        return [self.optimizer]

    def frozen_steps(self) -> int:
        return self.params.inverse_warmup

    # ---- pieces of an update (each usable on its own: tests, diagnostics) ---------------
    def forward_pass(self, rule, k: int, x: Tensor, batch, with_graph: bool = True) -> Pass:
        span = rule.spans[k]
        blocked = batch.first_view_rows() if rule.objectives[k].grad_block else None
        active = slice(blocked.stop if blocked is not None else 0, x.shape[0])
        outs, h = [], x[active]
        graph = with_graph and torch.is_grad_enabled()
        parts = row_chunks(0, h.shape[0], 1 if graph else rule.row_chunks)
        with torch.set_grad_enabled(graph):
            for i in span:
                if len(parts) > 1:  # no graph, in row chunks (train.stage_chunks): smaller transients
                    h = run_rows(lambda rows, s=rule.encoder.stages[i], h=h: s(h[rows]), parts, h.shape[0])
                else:
                    h = rule.encoder.stages[i](h.detach())  # the detach keeps every graph in one stage
                outs.append(h)
        hs = [o.detach() for o in outs]
        if not graph:
            outs = [None] * len(hs)
        top = hs[-1]
        if active.start > 0:  # the first (gradient-blocked) view: no graph, no target
            with torch.no_grad():
                top = torch.cat([rule.encoder.run(x[: active.start], span.start, span.stop), top])
        return Pass(outs, hs, top, active, x[active])

    def top_target(self, rule, k: int, p: Pass, batch, head_grads: bool = True) -> tuple[Tensor, Tensor]:
        """(SSL loss, ĥ_L on the active rows). The objective sees a detached leaf copy of
        h_L, so its gradient stops there; with ``head_grads`` the head's .grad is set too."""
        obj = rule.objectives[k]
        leaf = p.top.detach().requires_grad_(True)  # a leaf sharing storage: no copy
        with rule.autocast():
            loss = obj(leaf, batch)
        check_finite(loss, "loss", self.replicas)
        head = [q for q in obj.parameters() if q.requires_grad] if head_grads else []
        grads = torch.autograd.grad(loss, [leaf, *head])
        for q, g in zip(head, grads[1:]):
            q.grad = g
        # data parallel: every replica's loss is loss_scale × its share of the global loss, and
        # the gathered candidates send each rank the sum over ranks at its rows, so h_L's
        # gradient is loss_scale × the global batch's (1 in one process)
        grad_h = grads[0][p.active]
        if self.replicas.loss_scale != 1:  # / 1 is exact: no pass over the map in one process
            grad_h = grad_h / self.replicas.loss_scale
        return loss.detach(), p.hs[-1] - self.params.eta * grad_h

    @torch.no_grad()
    def propagate_targets(self, k: int, hs: list[Tensor], top_target: Tensor) -> list[Tensor]:
        """ĥ_{l−1} = h_{l−1} − g_l(h_l) + g_l(ĥ_l), from the top down; all detached."""
        targets = [top_target]
        for j in range(len(hs) - 1, 0, -1):
            targets.insert(0, self.target_below(k, j, hs, targets[0]))
        return targets

    @torch.no_grad()
    def target_below(self, k: int, j: int, hs: list[Tensor], target: Tensor, chunks: int = 2) -> Tensor:
        """ĥ of the segment's stage j − 1 from ĥ of its stage j (j ≥ 1), detached. Runs g
        on ``chunks`` chunks of the rows at a time (half by default; train.stage_chunks when
        more), written into the result in place, so the transient maps at stage j − 1's size
        add up to a fraction of one map (not g on ĥ and h together, 2 maps, plus their
        difference); an affine g runs once, on ĥ − h (StageInverse.difference)."""
        below, g = hs[j - 1], self.inverses[k][j - 1]
        out = torch.empty_like(below)
        for rows in row_chunks(0, below.shape[0], max(2, chunks)):
            g.difference(target[rows], hs[j][rows], below.shape[2:], plus=below[rows], out=out[rows])
        return out

    def _noisy(self, h: Tensor) -> Tensor:
        """h + ε, ε ~ N(0, noise_std²) from the inverses' noise stream: g's training input."""
        # data parallel: this rank's rows of the noise one process draws for the global batch
        noisy = self.replicas.draw_rows(tuple(h.shape), lambda shape: torch.randn(
            shape, generator=self.noise, device=h.device, dtype=h.dtype))
        if self.params.noise_std != 1.0:  # × 1 is exact: σ = 1 (official) skips the pass
            noisy.mul_(self.params.noise_std)
        return noisy.add_(h)  # in place: no extra full-size temporaries

    def inverse_losses(self, rule, k: int, hs: list[Tensor], js=None) -> list[Tensor]:
        """Denoising reconstruction loss of g_j of segment k for its stages ``js`` (default
        every stage above the bottom, in order), forward stages frozen; ``hs[j − 1]`` is all
        that g_j's loss reads. As graphs (tests, the pieces of a step): the step's unchunked
        inverse phase hands g the same losses' gradients without them (:meth:`_learn_inverse`)."""
        losses = []
        span = rule.spans[k]
        for j in (range(1, len(hs)) if js is None else js):
            h = hs[j - 1]
            noisy = self._noisy(h)
            with torch.no_grad():
                fh = rule.encoder.stages[span.start + j](noisy)
            rec = self.inverses[k][j - 1](fh, h.shape[2:])
            losses.append(F.mse_loss(rec, noisy))
        return losses

    def stage_losses(self, outs: list[Tensor], targets: list[Tensor]) -> list[Tensor]:
        losses = []
        for out, t in zip(outs, targets):
            if self.params.target_loss == "element_mean":
                losses.append(F.mse_loss(out, t))
                continue
            sq = 0.5 * F.mse_loss(out, t, reduction="sum")
            # 'sum' over this rank's rows is its share: × loss_scale, so that the replicas'
            # averaged gradient is the global sum's; a per-row mean over equal shards already is
            losses.append(sq * self.replicas.loss_scale if self.params.target_loss == "sum"
                          else sq / out.shape[0])
        return losses

    def _learn_stage(self, out: Tensor, target: Tensor, spend_target: bool) -> tuple[float, float]:
        """(stage loss — :meth:`stage_losses`' value —, shift ‖ĥ − h‖ / ‖h‖) of ``out`` (with
        its graph) against ``target``, and the loss's backward, all from one error map
        out − ĥ: its gradient (scaled by the reduction) is handed to ``out``, with no MSE
        graph (:class:`_PresetGradient`). With ``spend_target`` (the bottom stage: no target
        below it to make) the target's storage becomes the error: no further map."""
        with torch.no_grad():
            h = out.detach()
            err = torch.sub(h, target, out=target if spend_target else None)
            norm = torch.linalg.vector_norm(err, dtype=torch.promote_types(err.dtype, torch.float32))
            shift = (norm / h.norm().clamp_min(1e-12)).item()
            sq = norm ** 2  # bf16 errors summed in fp32
            rule = self.params.target_loss
            # 'sum' over this rank's rows is its share of the global sum: × loss_scale (see stage_losses)
            scale = (self.replicas.loss_scale if rule == "sum" else 1.0 / out.shape[0] if rule == "row_mean"
                     else 2.0 / out.numel())
            loss = sq * (0.5 * scale)  # element_mean: ½ · 2/numel, the mean (exact: × powers of 2)
            if scale != 1.0:
                err.mul_(scale)  # the MSE's gradient: scale · (out − ĥ)
            err = err.to(out.dtype)
        check_finite(loss, "DTP stage loss", self.replicas)
        loss = _PresetGradient.apply(out, err, loss)
        del err, h  # the backward frees the gradient once it has passed it on
        loss.backward()
        return loss.item(), shift

    def _learn_in_chunks(self, rule, k: int, j: int, p: Pass, target: Tensor, chunks: int) -> float:
        """Stage j's loss against ``target`` and its backward, in ``chunks`` chunks of rows: the
        stage runs again on each chunk of its input (h_{j−1}, or the segment's input) with a
        graph. The stage losses are sums over rows, so the chunks' losses, each weighted by
        its share of what the reduction divides by, add up to the whole batch's loss and
        gradients."""
        stage = rule.encoder.stages[rule.spans[k].start + j]
        below = p.hs[j - 1] if j > 0 else p.x
        n, total = below.shape[0], 0.0
        for rows in row_chunks(0, n, chunks):
            with rule.autocast():
                out = stage(below[rows])
                (local,) = self.stage_losses([out], [target[rows]])
            m = rows.stop - rows.start
            if self.params.target_loss != "sum":  # row_mean, element_mean: mean over the chunk
                local = local * (m / n)
            check_finite(local, "DTP stage loss", self.replicas)
            local.backward()
            total += local.item()
            del out, local
        return total

    def _learn_inverse(self, rule, k: int, j: int, h: Tensor) -> float:
        """g_j's denoising loss (:meth:`inverse_losses`' value, the same noise) and its
        backward: the loss's gradient (2/numel)·(g(f(h + ε)) − (h + ε)) — what the MSE's
        backward computes — is handed to g's output in g's working layout (channels-last on
        the CPU), so neither the reconstruction nor its gradient changes layout."""
        noisy = self._noisy(h)
        stage, g = rule.encoder.stages[rule.spans[k].start + j], self.inverses[k][j - 1]
        with rule.autocast():
            with torch.no_grad():
                fh = stage(noisy)
            rec = g.working(fh, h.shape[2:])
        del fh
        with torch.no_grad():
            # in rec's layout, at the precision of rec − noisy (fp32 under autocast, as the MSE's)
            err = torch.sub(rec, noisy, out=torch.empty_like(rec, dtype=torch.result_type(rec, noisy)))
            del noisy
            loss = torch.linalg.vector_norm(err, dtype=torch.promote_types(err.dtype, torch.float32)) ** 2 / err.numel()
            err = err.mul_(2.0 / err.numel()).to(rec.dtype)
        check_finite(loss, "inverse loss", self.replicas)
        loss = _PresetGradient.apply(rec, err, loss)
        del err, rec  # the backward frees the gradient and g's graph as it goes
        loss.backward()
        return loss.item()

    def _inverse_in_chunks(self, rule, k: int, j: int, h: Tensor, chunks: int) -> float:
        """g_j's denoising loss (:meth:`inverse_losses`, the same noise) and its backward in
        ``chunks`` chunks of rows, each chunk's mean weighted by its share of the rows."""
        noisy = self._noisy(h)
        stage, g = rule.encoder.stages[rule.spans[k].start + j], self.inverses[k][j - 1]
        n, total = h.shape[0], 0.0
        for rows in row_chunks(0, n, chunks):
            with rule.autocast():
                with torch.no_grad():
                    fh = stage(noisy[rows])
                loss = F.mse_loss(g(fh, h.shape[2:]), noisy[rows]) * ((rows.stop - rows.start) / n)
            check_finite(loss, "inverse loss", self.replicas)
            loss.backward()
            total += loss.item()
            del fh, loss
        return total

    def train_inverses(self, rule, k: int, p: Pass, batch, js=None) -> dict[str, float]:
        """``inverse_steps`` denoising updates of segment k's inverses g_j, j in ``js`` (default
        all, in order); returns the last losses. Each g has its own parameters, so one g's
        updates are the same whether the others learn with it or apart (an optimizer steps
        only the parameters with gradients)."""
        first = batch.first_view_rows()
        one_view = self.params.inverse_rows == "one_view" and first is not None and p.active.start == 0
        hs = [h[first.stop:] if one_view and h is not None else h for h in p.hs]
        js = list(range(1, len(hs)) if js is None else js)
        start = rule.spans[k].start
        for _ in range(self.params.inverse_steps):
            self.optimizer.zero_grad(set_to_none=True)
            if rule.row_chunks > 1:  # train.stage_chunks: each g's loss chunk by chunk
                fb = [self._inverse_in_chunks(rule, k, j, hs[j - 1], rule.row_chunks) for j in js]
            else:
                fb = [self._learn_inverse(rule, k, j, hs[j - 1]) for j in js]
            self.replicas.average_gradients(q for j in js for q in self.inverses[k][j - 1].parameters())
            self.optimizer.step()
        return {f"recon/stage{start + j}": v for j, v in zip(js, fb)}

    # ---- the transport's interface ---------------------------------------------------------
    def gradients(self, rule, k, x, batch, *, learn_extra=True):
        """Logs 'target_loss/stage{l}' (stage l's target loss), 'shift/stage{l}'
        (‖ĥ_l − h_l‖ / ‖h_l‖) and 'recon/stage{l}' (g_l's denoising loss)."""
        cfg, span = self.params, rule.spans[k]
        done = self.steps_done[k]
        warm = done < cfg.inverse_warmup
        log: dict[str, float] = {}
        with rule.autocast():
            p = self.forward_pass(rule, k, x, batch, with_graph=not warm and rule.row_chunks == 1)
        turn = warm or done % cfg.inverse_every == 0
        train_g = learn_extra and len(self.inverses[k]) > 0 and cfg.inverse_steps > 0 and turn
        g_first = warm or cfg.inverse_order == "before_targets"
        if train_g and g_first:
            log.update(self.train_inverses(rule, k, p, batch))
        if warm:
            with torch.no_grad(), rule.autocast():
                loss = rule.objectives[k](p.top, batch)
            self.steps_done[k] += learn_extra
            return Update(p.top, loss.item(), log, step=False)
        loss, top = self.top_target(rule, k, p, batch)
        # official order (targets from the previous step's g): g_j learns as soon as it made
        # ĥ_{j−1}, on its own (the forward weights move only after this method)
        stage_log = self.learn_from_targets(rule, k, p, top, batch if train_g and not g_first else None,
                                            rule.row_chunks)
        del top
        self.steps_done[k] += learn_extra
        log.update(stage_log)
        return Update(p.top, loss.item(), log)

    def learn_from_targets(self, rule, k: int, p: Pass, top: Tensor, inverses_of=None,
                           chunks: int = 1) -> dict[str, float]:
        """From the top stage down: stage l's loss against ĥ_l and its backward (which frees
        stage l's graph), then ĥ_{l−1} from ĥ_l — the same targets and gradients as
        :meth:`propagate_targets` + :meth:`stage_losses` (the per-stage graphs are
        disjoint), with one target, ever fewer stage graphs and ever fewer activities alive
        (h_l is dropped from ``p.hs`` once ĥ_{l−1} is made). With ``inverses_of`` (the batch)
        g_l learns right after it made ĥ_{l−1} (the official order: every target from the
        step's initial g), one inverse graph at a time. A pass without graphs (``chunks`` > 1,
        train.stage_chunks) learns each stage in row chunks, its forward run again per chunk
        (:meth:`_learn_in_chunks`). Returns the log: 'target_loss/stage{l}',
        'shift/stage{l}' (‖ĥ_l − h_l‖ / ‖h_l‖) and, learning the inverses, 'recon/stage{l}'."""
        start = rule.spans[k].start
        losses, shifts, recon = {}, {}, {}
        target = top
        for j in range(len(p.hs) - 1, -1, -1):
            if p.outs[j] is None:  # no graph kept: the stage again, chunk by chunk
                h = p.hs[j]
                shifts[j] = ((target - h).norm() / h.norm().clamp_min(1e-12)).item()
                losses[j] = self._learn_in_chunks(rule, k, j, p, target, chunks)
                del h
            else:  # the bottom stage's target is needed no more: its storage becomes the error
                losses[j], shifts[j] = self._learn_stage(p.outs[j], target, spend_target=j == 0)
            p.outs[j] = None  # the graph is spent
            if j > 0:
                with rule.autocast():
                    target = self.target_below(k, j, p.hs, target, chunks)
                if inverses_of is not None:
                    recon.update(self.train_inverses(rule, k, p, inverses_of, [j]))
                p.hs[j] = None  # no later target or inverse reads h_l
        log = {f"target_loss/stage{start + j}": losses[j] for j in sorted(losses)}
        log.update({f"shift/stage{start + j}": shifts[j] for j in sorted(shifts)})
        log.update(dict(sorted(recon.items())))
        return log

    def get_extra_state(self):
        return {"steps_done": list(self.steps_done),
                "noise": self.noise.get_state() if self.noise is not None else None}

    def set_extra_state(self, state) -> None:
        self.steps_done = list(state["steps_done"])
        if state["noise"] is not None:
            self.noise.set_state(state["noise"])
