"""Difference target propagation (Lee et al. 2015; Bio-SSL's E2E DTP).

Every stage learns from a *target* for its own output instead of a back-propagated
error; the error crosses only the top stage (into the head).

One training step on a batch (stages 0…L−1, g_l the learned inverse of stage l):

1. **Forward.** Each stage runs on its predecessor's *detached* output, so every
   stage has its own small autograd graph and none spans two stages; h_l are the
   detached outputs. For a gradient-blocked pair objective (``stop_grad_first``) the
   first view runs under ``no_grad``: its top error is zero, so its targets equal its
   activity and its local losses vanish; only the second view's rows are "active".
2. **Feedback phase** (every ``feedback_every`` steps, ``feedback_steps`` = K times):
   each g_l, l ≥ 1, is trained as a denoising auto-encoder (on the second views of a
   pair batch unless ``feedback_rows='all'``),
   min mean ‖g_l(f_l(h_{l−1}+ε)) − (h_{l−1}+ε)‖², ε ~ N(0, noise_std²) drawn from the
   rule's generator, with f_l frozen (run under ``no_grad``); one feedback optimizer
   holds all g parameters (their losses are separate graphs, so each g sees only its
   own). By default done *before* the targets, so they use the freshest inverses;
   ``feedback_order='after_targets'`` (the official SSL-DTP code) computes the targets
   with the inverses of the previous step and trains g afterwards.
3. **Top target.** The objective runs on a detached leaf copy of h_L:
   ĥ_L = h_L − eta · ∂L_SSL/∂h_L. The same backward gives the head its gradient
   (the head has its own optimizer).
4. **Targets downwards** (``no_grad``): ĥ_{l−1} = h_{l−1} − g_l(h_l) + g_l(ĥ_l).
5. **Forward phase.** Stage l minimises ‖f_l(sg(h_{l−1})) − sg(ĥ_l)‖² with its own
   optimizer. ``target_loss='sum'`` is ½·Σ over rows and units, so the top stage's
   update is exactly eta × its back-propagation gradient; 'row_mean' is that over the
   rows; 'element_mean' (the official SSL-DTP code, ``mse_loss``) is the mean over all
   elements without the ½, i.e. 'sum' × 2 / numel — with Adam the step size then
   differs (mean-reduced gradients sit near Adam's ε). Its gradient is the
   post-synaptic difference times the pre-synaptic activity (Hebbian form).

During the first ``feedback_warmup`` steps only phase 2 runs (forward weights and head
are untouched). Cost: one forward, a weight-only backward per stage, two g passes per
stage for the targets and K·(f forward + g forward/backward) for the feedback.

Plausibility: (i) local updates, (ii) the difference targets need no normalisation
(the objective's own error decides), (iv). Not (iii): the top error reaches h_L through
the head's transposed weights (one layer of back-propagation, as in Bio-SSL).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biossl.encoders.layers import activation
from biossl.feedback.inverse import build_inverse
from biossl.rules.base import Rule, check_finite, make_optimizer
from biossl.rules.diagnostics import angle_deg
from biossl.views.batch import ViewBatch


@dataclass
class DTPConfig:
    eta: float = 0.5
    """Top target step: ĥ_L = h_L − eta · ∂L_SSL/∂h_L."""
    noise_std: float = 0.1
    """σ of the Gaussian corruption ε of h_{l−1} when training g_l (units of the activity);
    default 0.1, the official SSL-DTP code uses 1.0."""
    feedback_order: Literal["before_targets", "after_targets"] = "before_targets"
    """When the feedback phase runs within a step: 'before_targets' (default) — g is trained
    first, so the targets use the freshest inverses; 'after_targets' (official SSL-DTP) —
    the targets are computed with the previous step's g, then g is trained."""
    feedback_steps: int = 1
    """K: reconstruction updates of every g_l per feedback phase, each with fresh noise."""
    feedback_every: int = 1
    """Run the feedback phase every N training steps (1: every step)."""
    feedback_warmup: int = 0
    """Initial steps that train only the feedback functions (forward weights, head frozen;
    the feedback phase runs on every one of them)."""
    feedback_rows: Literal["one_view", "all"] = "one_view"
    """Rows the feedback functions learn from: 'one_view' — in a pair batch, the second
    views only (the first views are near-duplicates of the same images; halves the
    feedback cost); 'all' — every row that gets a target."""
    feedback_lr: float | None = None
    """Learning rate of the feedback optimizer (None: train.lr; same optimizer family)."""
    feedback_activation: str = "below"
    """Output nonlinearity of g_l: 'below' — stage l−1's last nonlinearity (so g_l's output
    has h_{l−1}'s range) — or an activation name (relu, hardtanh, tanh, leaky_relu, identity)."""
    feedback_bias: bool = True
    """Give the transposed convs / linear maps of g a bias."""
    target_loss: Literal["sum", "row_mean", "element_mean"] = "sum"
    """Stage loss from ‖f_l − ĥ_l‖²: 'sum' (default) — ½ Σ over rows and units (top update =
    eta × BP gradient); 'row_mean' — ½ Σ / rows; 'element_mean' — mean over all elements,
    no ½ (official SSL-DTP, ``mse_loss``): 'sum' × 2 / numel."""
    diagnostics_every: int = 100
    """Steps between measurements of the angle between each stage's DTP update and its BP
    gradient on that step's batch (one extra BP forward + backward); 0: off."""

    def validate(self) -> None:
        if not self.eta > 0:
            raise ValueError(f"eta must be > 0, got {self.eta}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be ≥ 0, got {self.noise_std}")
        if self.feedback_steps < 0:
            raise ValueError(f"feedback_steps must be ≥ 0, got {self.feedback_steps}")
        if self.feedback_every < 1:
            raise ValueError(f"feedback_every must be ≥ 1, got {self.feedback_every}")
        if self.feedback_warmup < 0:
            raise ValueError(f"feedback_warmup must be ≥ 0, got {self.feedback_warmup}")
        if self.feedback_warmup > 0 and self.feedback_steps == 0:
            raise ValueError("feedback_warmup needs feedback_steps ≥ 1")
        if self.feedback_lr is not None and not self.feedback_lr > 0:
            raise ValueError(f"feedback_lr must be > 0, got {self.feedback_lr}")
        if self.diagnostics_every < 0:
            raise ValueError(f"diagnostics_every must be ≥ 0, got {self.diagnostics_every}")
        if self.feedback_rows not in ("one_view", "all"):
            raise ValueError(f"unknown feedback_rows {self.feedback_rows!r}; choose 'one_view' or 'all'")
        if self.target_loss not in ("sum", "row_mean", "element_mean"):
            raise ValueError(f"unknown target_loss {self.target_loss!r}; choose 'sum', 'row_mean' "
                             f"or 'element_mean'")
        if self.feedback_order not in ("before_targets", "after_targets"):
            raise ValueError(f"unknown feedback_order {self.feedback_order!r}; choose "
                             f"'before_targets' or 'after_targets'")
        if self.feedback_activation != "below":
            try:
                activation(self.feedback_activation)
            except ValueError as e:
                raise ValueError(f"feedback_activation: {e} (or 'below')") from None


@dataclass
class _Pass:
    """One forward pass: per-stage outputs with their own graphs (active rows only)."""
    outs: list[Tensor]
    """Stage outputs on the active rows, each graph starting at a detached input."""
    hs: list[Tensor]
    """The same outputs, detached."""
    top: Tensor
    """Detached top output for every row of the batch (the objective's input)."""
    active: slice
    """Rows of the batch that get targets."""


class DTP(Rule):
    """Difference target propagation: stage-local losses against targets from learned inverses."""

    Config = DTPConfig
    plausible_rule = {"i": True, "ii": True, "iii": False, "iv": True}

    def __init__(self, cfg, encoder, make_objective, train):
        cfg = cfg if cfg is not None else DTPConfig()
        cfg.validate()
        super().__init__(cfg, encoder, make_objective, train)
        stages = encoder.stages
        out_act = None if cfg.feedback_activation == "below" else activation(cfg.feedback_activation)
        # inverses[l-1] is g_l; stage 0 needs none (its input is the data).
        self.inverses = nn.ModuleList(
            build_inverse(stages, l, cfg.feedback_bias, copy.deepcopy(out_act))
            for l in range(1, len(stages)))
        device = next(encoder.parameters()).device
        self.inverses.to(device)
        self.objective = make_objective(len(stages) - 1)
        self.stage_optimizers = [make_optimizer(s.parameters(), train) for s in stages]
        head = [p for p in self.objective.parameters() if p.requires_grad]
        self.head_optimizer = make_optimizer(head, train) if head else None
        fb_train = copy.copy(train)
        fb_train.lr = cfg.feedback_lr if cfg.feedback_lr is not None else train.lr
        self.feedback_optimizer = (make_optimizer(self.inverses.parameters(), fb_train)
                                   if len(self.inverses) else None)
        self.optimizers = [o for o in (*self.stage_optimizers, self.head_optimizer,
                                       self.feedback_optimizer) if o is not None]
        self.steps_done = 0
        self.last_angles: dict[str, float] = {}

    def encoder_frozen_steps(self) -> int:
        return self.cfg.feedback_warmup

    # ---- pieces of a step (each usable on its own: tests, diagnostics) ----------------
    def inverse(self, l: int) -> nn.Module:
        """g_l, the learned inverse of stage l (l ≥ 1)."""
        if l < 1:
            raise IndexError("stage 0 has no inverse")
        return self.inverses[l - 1]

    def _active_rows(self, batch: ViewBatch) -> slice:
        if self.objective.stop_grad_first and batch.kind == "pairs":
            return slice(batch.n, 2 * batch.n)
        return slice(0, batch.x.shape[0])

    def forward_pass(self, batch: ViewBatch, with_graph: bool = True) -> _Pass:
        active = self._active_rows(batch)
        x = batch.x[active]
        outs, h = [], x
        with torch.set_grad_enabled(with_graph and torch.is_grad_enabled()):
            for stage in self.encoder.stages:
                h = stage(h.detach())  # the detach keeps every graph inside one stage
                outs.append(h)
        hs = [o.detach() for o in outs]
        top = hs[-1]
        if active.start > 0:  # the first (gradient-blocked) view: no graph, no target
            with torch.no_grad():
                top = torch.cat([self.encoder.run(batch.x[: active.start]), top])
        return _Pass(outs, hs, top, active)

    def top_target(self, p: _Pass, batch: ViewBatch, head_grads: bool = True) -> tuple[Tensor, Tensor]:
        """(SSL loss, ĥ_L on the active rows). The objective sees a detached leaf copy of
        h_L, so its gradient stops there; with ``head_grads`` the head's .grad is set too."""
        leaf = p.top.detach().requires_grad_(True)  # a leaf sharing storage: no copy
        loss = self.objective(leaf, batch)
        check_finite(loss, "loss")
        head = [q for q in self.objective.parameters() if q.requires_grad] if head_grads else []
        grads = torch.autograd.grad(loss, [leaf, *head])
        for q, g in zip(head, grads[1:]):
            q.grad = g
        target = p.hs[-1] - self.cfg.eta * grads[0][p.active]
        return loss.detach(), target

    @torch.no_grad()
    def propagate_targets(self, hs: list[Tensor], top_target: Tensor) -> list[Tensor]:
        """ĥ_{l−1} = h_{l−1} − g_l(h_l) + g_l(ĥ_l), from the top down; all detached."""
        targets = [top_target]
        for l in range(len(hs) - 1, 0, -1):
            below = hs[l - 1]
            g = self.inverse(l)(torch.cat([targets[0], hs[l]]), below.shape[2:])
            g_target, g_h = g.split(below.shape[0])
            targets.insert(0, below + (g_target - g_h))
        return targets

    def feedback_losses(self, hs: list[Tensor]) -> list[Tensor]:
        """Denoising reconstruction loss of every g_l (l ≥ 1), forward stages frozen."""
        losses = []
        for l in range(1, len(hs)):
            h = hs[l - 1]
            noisy = torch.randn(h.shape, generator=self.generator, device=h.device, dtype=h.dtype)
            noisy.mul_(self.cfg.noise_std).add_(h)  # in place: no extra full-size temporaries
            with torch.no_grad():
                fh = self.encoder.stages[l](noisy)
            rec = self.inverse(l)(fh, h.shape[2:])
            losses.append(F.mse_loss(rec, noisy))
        return losses

    def stage_losses(self, outs: list[Tensor], targets: list[Tensor]) -> list[Tensor]:
        losses = []
        for out, t in zip(outs, targets):
            if self.cfg.target_loss == "element_mean":
                losses.append(F.mse_loss(out, t))
                continue
            sq = 0.5 * F.mse_loss(out, t, reduction="sum")
            losses.append(sq if self.cfg.target_loss == "sum" else sq / out.shape[0])
        return losses

    def feedback_phase(self, p: _Pass, batch: ViewBatch) -> dict[str, float]:
        """``feedback_steps`` denoising updates of every g_l; returns the last losses."""
        hs = p.hs
        if self.cfg.feedback_rows == "one_view" and batch.kind == "pairs" and p.active.start == 0:
            hs = [h[batch.n:] for h in hs]
        for _ in range(self.cfg.feedback_steps):
            self.feedback_optimizer.zero_grad(set_to_none=True)
            fb = self.feedback_losses(hs)
            total = sum(fb)
            check_finite(total, "feedback loss")
            total.backward()
            self.feedback_optimizer.step()
        return {f"recon/stage{l + 1}": v.item() for l, v in enumerate(fb)}

    # ---- the trainer's interface -------------------------------------------------------
    def step(self, batch: ViewBatch) -> dict[str, float]:
        """One step (see the module docstring). Logs 'loss' (the SSL objective),
        'loss/stage{l}' (stage l's target loss), 'shift/stage{l}' (‖ĥ_l − h_l‖ / ‖h_l‖) and
        'recon/stage{l}' (g_l's denoising loss)."""
        warm = self.steps_done < self.cfg.feedback_warmup
        log: dict[str, float] = {}
        p = self.forward_pass(batch, with_graph=not warm)
        fb_turn = warm or self.steps_done % self.cfg.feedback_every == 0
        train_g = bool(len(self.inverses) and self.cfg.feedback_steps and fb_turn)
        g_first = warm or self.cfg.feedback_order == "before_targets"
        if train_g and g_first:
            log.update(self.feedback_phase(p, batch))
        if warm:
            with torch.no_grad():
                log["loss"] = self.objective(p.top, batch).item()
            self.steps_done += 1
            return log
        for o in (*self.stage_optimizers, self.head_optimizer):
            if o is not None:
                o.zero_grad(set_to_none=True)
        loss, top = self.top_target(p, batch)
        targets = self.propagate_targets(p.hs, top)
        if train_g and not g_first:  # official order: targets from the previous step's g
            log.update(self.feedback_phase(p, batch))
        local = self.stage_losses(p.outs, targets)
        total = sum(local)
        check_finite(total, "DTP stage loss")
        total.backward()  # disjoint per-stage graphs: each loss reaches only its own stage
        every = self.cfg.diagnostics_every
        if every and (self.steps_done - self.cfg.feedback_warmup) % every == 0:
            bp = self.bp_gradients(batch)
            self.last_angles = {f"angle/stage{l}": angle_deg([q.grad for q in s.parameters()], g)
                                for l, (s, g) in enumerate(zip(self.encoder.stages, bp))}
        for o in (*self.stage_optimizers, self.head_optimizer):
            if o is not None:
                o.step()
        self.steps_done += 1
        log["loss"] = loss.item()
        log.update({f"loss/stage{l}": v.item() for l, v in enumerate(local)})
        # How far each target moves its layer, relative to the activity (‖ĥ_l − h_l‖ / ‖h_l‖).
        log.update({f"shift/stage{l}": ((t - h).norm() / h.norm().clamp_min(1e-12)).item()
                    for l, (t, h) in enumerate(zip(targets, p.hs))})
        return log

    # ---- diagnostics -------------------------------------------------------------------
    def update_directions(self, batch: ViewBatch) -> list[list[Tensor]]:
        """Per stage, the gradient of its DTP loss w.r.t. its parameters (no step taken)."""
        p = self.forward_pass(batch)
        _, top = self.top_target(p, batch, head_grads=False)
        local = self.stage_losses(p.outs, self.propagate_targets(p.hs, top))
        return [list(torch.autograd.grad(loss, list(s.parameters())))
                for loss, s in zip(local, self.encoder.stages)]

    def bp_gradients(self, batch: ViewBatch) -> list[list[Tensor]]:
        """Per stage, the end-to-end back-propagation gradient of the same objective."""
        hs = self.encoder(batch.x)
        loss = self.objective(hs[-1], batch)
        params = [list(s.parameters()) for s in self.encoder.stages]
        flat = torch.autograd.grad(loss, [q for ps in params for q in ps])
        out, i = [], 0
        for ps in params:
            out.append(list(flat[i:i + len(ps)]))
            i += len(ps)
        return out

    def angles(self, batch: ViewBatch) -> list[float]:
        """Angle (degrees) between each stage's DTP update and its BP gradient."""
        dtp, bp = self.update_directions(batch), self.bp_gradients(batch)
        return [angle_deg(a, b) for a, b in zip(dtp, bp)]

    def diagnostics(self) -> dict[str, float]:
        """The angles of the last measured step (see ``diagnostics_every``)."""
        return dict(self.last_angles)

    def schedule_state(self) -> dict:
        # the last angles too: a resumed run logs what the uninterrupted one logs
        return {"steps_done": self.steps_done, "last_angles": dict(self.last_angles)}

    def load_schedule_state(self, state: dict) -> None:
        self.steps_done = state["steps_done"]
        self.last_angles = dict(state.get("last_angles", {}))
