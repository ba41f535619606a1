"""CLAPP's predictive hinge loss (Illing et al. 2021), with an explicit (Hebbian) form.

For prediction step k the context c (a patch vector at row r) predicts the future z
(row r + k + 1, same column) through the score u = zᵀ W_pred,k c. The positive z comes
from the same image, the negatives from the same location in other images of the batch
(image i + s mod n for drawn shifts s ≠ 0). Per step

    L_k = mean max(0, 1 − u⁺) + mean max(0, 1 + u⁻),

and the loss is the mean over the steps used. Variants (config):

- ``sampling: either`` (CLAPP) — each image (per step) does the positive *or* the
  negative update, p = ½; the loss is 2·mean[m·h⁺ + (1 − m)·h⁻] so its expectation equals
  the ``both`` loss. ``both`` (CLAPP-s) — positives and negatives every step.
- ``feedback: retro`` (CLAPP) — the context receives W_retro z instead of W_predᵀ z, so no
  forward weight is used transposed (custom autograd Function :class:`RetroScore`).
  ``transpose`` (CLAPP-s) — plain autograd, i.e. W_predᵀ z.

Sign convention of the broadcast factor γ (what the explicit rule multiplies by):
γ = −∂h/∂u for the hinge term h that the sample uses, i.e.
γ = +1 for an active positive hinge (u⁺ < 1: increase u⁺), γ = −1 for an active negative
hinge (u⁻ > −1: decrease u⁻), 0 otherwise. Updates are Δθ ∝ γ ∂u/∂θ (descent on L), e.g.
ΔW_pred ∝ γ z cᵀ (W_pred stored as (future units × context units); DESIGN.md writes the
same product as γ c zᵀ for the transposed storage).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from biossl.bounds import NonNegativeInt
from biossl.objectives.predictive import (PredictiveObjective, context_future, init_step_weights,
                                          patch_vectors, spread_to_output, steps_for, vector_grid)
from biossl.views.batch import ViewBatch


def clapp_gamma(u: Tensor, use: Tensor) -> Tensor:
    """Broadcast factor γ ∈ {−1, 0, +1} for scores u (1 + J, ...): row 0 positive, rows 1: negatives.

    ``use`` (same shape, bool) marks the terms the sample takes part in (CLAPP's coin).
    γ⁺ = +1 where u⁺ < 1, γ⁻ = −1 where u⁻ > −1 (the hinge is active), else 0.
    """
    gamma = torch.empty_like(u)
    gamma[0] = (u[0] < 1.0).to(u.dtype)
    gamma[1:] = -(u[1:] > -1.0).to(u.dtype)
    return gamma * use.to(u.dtype)


class RetroScore(torch.autograd.Function):
    """u = zᵀ (W c) whose backward sends W_retro z (not Wᵀ z) to the context c.

    Shapes: z (1 + J, n, P, D) futures (positive, then negatives), c (n, P, C) contexts,
    w (D, C) = W_pred,k, b (C, D) = W_retro,k. Returns u (1 + J, n, P).
    Gradients: ∂/∂z = g · W c (the dendritic prediction), ∂/∂c = Σ_j g · W_retro z,
    ∂/∂W = Σ g z cᵀ, and W_retro (when it learns) receives the same product transposed,
    ∂/∂W_retro = Σ g c zᵀ — a local pre × post product, never a copy of W.
    """

    @staticmethod
    def forward(ctx, z: Tensor, c: Tensor, w: Tensor, b: Tensor) -> Tensor:
        pred = c @ w.t()                                          # (n, P, D)
        ctx.save_for_backward(z, c, pred, b)
        return (z * pred).sum(-1)

    @staticmethod
    def backward(ctx, g: Tensor):
        z, c, pred, b = ctx.saved_tensors
        gz = gc = gw = gb = None
        if ctx.needs_input_grad[0]:
            gz = g.unsqueeze(-1) * pred
        if ctx.needs_input_grad[1]:
            gc = torch.einsum("jnp,jnpc->npc", g, z @ b.t())   # Σ_j g · W_retro z
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            hebb = torch.einsum("jnp,jnpd,npc->dc", g, z, c)
            gw = hebb if ctx.needs_input_grad[2] else None
            gb = hebb.t() if ctx.needs_input_grad[3] else None
        return gz, gc, gw, gb


@dataclass
class ClappConfig:
    steps: int = 5
    """K: prediction steps k = 1…K (row r predicts row r+k+1); capped at rows − 2 of the grid."""
    negatives: int = 1
    """Negatives per context: the same location in this many other images (capped at n − 1)."""
    sampling: Literal["either", "both"] = "either"
    """'either' (CLAPP): per image and step, the positive or the negative term, p = ½;
    'both' (CLAPP-s): every term every step."""
    feedback: Literal["retro", "transpose"] = "retro"
    """How the error reaches the context: 'retro' (CLAPP) through an independent W_retro;
    'transpose' (CLAPP-s) through W_predᵀ (weight transport)."""
    retro_learning: Literal["mirror", "fixed"] = "mirror"
    """'mirror': W_retro receives the transposed Hebbian increment of W_pred (γ c zᵀ, local);
    'fixed': W_retro stays at its random initialisation (a buffer)."""
    pred_init: float = 1.0
    """Scale of the initial W_pred (and W_retro) (× nn.Linear's default ±1/√C). Small values
    let a mirrored W_retro align with W_predᵀ sooner: their offset stays at its initial size."""
    seed: NonNegativeInt | None = None
    """Seed of the objective's own draws (negatives, coins); None: torch's initial seed (the run
    seed). Every stage's objective starts from the same seed, so at each step all stages make
    the same positive/negative choice — the whole network sees the same next glimpse."""

    def validate(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {self.steps}")
        if self.negatives < 1:
            raise ValueError(f"negatives must be ≥ 1, got {self.negatives}")
        if self.pred_init <= 0:
            raise ValueError(f"pred_init must be > 0, got {self.pred_init}")


@dataclass
class StepDraws:
    """Random choices of one prediction step: shifts (1 + J,) with 0 first; use (1 + J, n) bool."""
    shifts: Tensor
    use: Tensor


class ClappObjective(PredictiveObjective):
    """CLAPP predictive hinge on patch grids (or pairs), with W_pred (and W_retro) per step."""

    Config = ClappConfig
    plausible_error = True

    @staticmethod
    def uses_weight_transport(cfg: ClappConfig) -> bool:
        """CLAPP-s sends the context error through W_predᵀ (weight transport)."""
        return cfg.feedback == "transpose"

    def __init__(self, cfg: ClappConfig, in_shape: tuple[int, ...]):
        super().__init__(cfg.seed)
        cfg.validate()
        self.cfg = cfg
        ch = in_shape[0]
        k = cfg.steps  # a pairs batch uses the first step only
        self.w_pred = nn.Parameter(init_step_weights(k, ch, ch, cfg.pred_init))
        if cfg.feedback == "retro":
            retro = init_step_weights(k, ch, ch, cfg.pred_init)  # independent draw: not W_predᵀ
            if cfg.retro_learning == "mirror":
                self.w_retro = nn.Parameter(retro)
            else:
                self.register_buffer("w_retro", retro)
        elif cfg.feedback == "transpose":
            self.w_retro = None
        else:
            raise ValueError(f"unknown feedback {cfg.feedback!r}")
        if cfg.sampling not in ("either", "both"):
            raise ValueError(f"unknown sampling {cfg.sampling!r}")
        if cfg.retro_learning not in ("mirror", "fixed"):
            raise ValueError(f"unknown retro_learning {cfg.retro_learning!r}")

    # ---- random choices ------------------------------------------------------------------
    def draw(self, n: int, steps: int) -> list[StepDraws]:
        """Negative shifts and CLAPP's coins for every step (reproducible from the generator)."""
        j = min(self.cfg.negatives, n - 1)
        out = []
        for _ in range(steps):
            shifts = torch.cat([torch.zeros(1, dtype=torch.long),
                                torch.randperm(n - 1, generator=self.generator)[:j] + 1])
            if self.cfg.sampling == "either":
                pos = torch.rand(n, generator=self.generator) < 0.5
                use = torch.cat([pos[None], (~pos)[None].expand(j, n)])
            else:
                use = torch.ones(1 + j, n, dtype=torch.bool)
            out.append(StepDraws(shifts, use))
        return out

    def _weights(self, use: Tensor, p: int, n_steps: int, like: Tensor) -> Tensor:
        """Per-term loss weights (1 + J, n, 1): means over images·locations (and negatives).

        Constant factors (a global learning-rate scale), in ``like``'s dtype and device.
        """
        j = use.shape[0] - 1
        factor = 2.0 if self.cfg.sampling == "either" else 1.0  # keeps E[loss] equal to 'both'
        scale = torch.tensor([1.0] + [1.0 / j] * j, dtype=like.dtype).view(-1, 1)
        w = scale * use.to(like.dtype) * (factor / (use.shape[1] * p * n_steps))
        return w.unsqueeze(-1).to(like.device)

    @staticmethod
    def _gather(n: int, shifts: Tensor, device) -> Tensor:
        """Image index of every term: (1 + J, n), row j = (i + shift_j) mod n."""
        return ((torch.arange(n)[None] + shifts[:, None]) % n).to(device)

    # ---- loss (autograd) -----------------------------------------------------------------
    def forward(self, h: Tensor, batch: ViewBatch) -> Tensor:
        self._check_batch(batch)
        grid = vector_grid(patch_vectors(h), batch)
        steps = steps_for(batch, grid.shape[1], self.cfg.steps)
        return self.loss_from(grid, steps, self.draw(batch.n, len(steps)))

    def loss_from(self, grid: Tensor, steps, draws: list[StepDraws]) -> Tensor:
        n = grid.shape[0]
        total = grid.new_zeros(())
        for (t, off), d in zip(steps, draws):
            c, z = context_future(grid, off)
            zs = z[self._gather(n, d.shifts, grid.device)]          # (1 + J, n, P, C)
            if self.w_retro is None:
                u = torch.einsum("jnpd,dc,npc->jnp", zs, self.w_pred[t], c)
            else:
                u = RetroScore.apply(zs, c, self.w_pred[t], self.w_retro[t])
            hinge = torch.cat([torch.relu(1.0 - u[:1]), torch.relu(1.0 + u[1:])])
            w = self._weights(d.use, c.shape[1], len(steps), u)
            total = total + (w * hinge).sum()
        return total

    # ---- explicit form (no autograd) ---------------------------------------------------
    @torch.no_grad()
    def explicit_backward(self, h: Tensor, batch: ViewBatch) -> tuple[Tensor, Tensor]:
        """Loss and ∂L/∂h computed from activities and γ only; adds ∂L/∂W to ``.grad``.

        Per step: the future z gets γ·(W_pred c) (the dendritic prediction), the context c
        gets γ·(W_retro z) (W_predᵀ z for 'transpose'), W_pred gets γ z cᵀ — each term
        weighted by the loss's constant mean factors. The per-patch mean's backward spreads
        the patch error evenly over the stage's spatial output.
        """
        self._check_batch(batch)
        grid = vector_grid(patch_vectors(h), batch)
        steps = steps_for(batch, grid.shape[1], self.cfg.steps)
        loss, grad_grid, grad_w, grad_b = self.explicit_from(grid, steps, self.draw(batch.n, len(steps)))
        for p, g in ((self.w_pred, grad_w), (self.w_retro, grad_b)):
            if isinstance(p, nn.Parameter) and g is not None:
                p.grad = g if p.grad is None else p.grad + g
        grad_v = self._grid_to_rows(grad_grid, batch)
        return loss, spread_to_output(grad_v, h.shape).to(h.dtype)

    @staticmethod
    def _grid_to_rows(grad_grid: Tensor, batch: ViewBatch) -> Tensor:
        if batch.kind == "pairs":
            return grad_grid.permute(1, 0, 2, 3).reshape(2 * batch.n, -1)
        return grad_grid.reshape(-1, grad_grid.shape[-1])

    def explicit_from(self, grid: Tensor, steps, draws: list[StepDraws]):
        """(loss, ∂L/∂grid, ∂L/∂W_pred, ∂L/∂W_retro or None), all from γ-gated Hebbian products."""
        n, rows, cols, ch = grid.shape
        grad_grid = torch.zeros_like(grid)
        grad_w = torch.zeros_like(self.w_pred)
        grad_b = torch.zeros_like(self.w_pred) if self.w_retro is not None else None
        loss = grid.new_zeros(())
        for (t, off), d in zip(steps, draws):
            c, z = context_future(grid, off)
            idx = self._gather(n, d.shifts, grid.device)
            w = self.w_pred[t]
            pred = c @ w.t()                                         # W_pred c  (n, P, D)
            retro = z @ (w if self.w_retro is None else self.w_retro[t].t())   # W_retro z (n, P, C)
            zs = z[idx]
            u = (zs * pred).sum(-1)                                  # (1 + J, n, P)
            weight = self._weights(d.use, c.shape[1], len(steps), u)
            hinge = torch.cat([torch.relu(1.0 - u[:1]), torch.relu(1.0 + u[1:])])
            loss = loss + (weight * hinge).sum()
            mod = weight * clapp_gamma(u, d.use[..., None].expand_as(u))   # −∂L/∂u
            # future side: each image that served as z (itself or as a negative) gets mod·W_pred c
            dz = torch.zeros_like(z).index_add_(0, idx.flatten(), (mod.unsqueeze(-1) * pred).flatten(0, 1))
            dc = torch.einsum("jnp,jnpc->npc", mod, retro[idx])
            hebb = torch.einsum("jnp,jnpd,npc->dc", mod, zs, c)      # Σ γ z cᵀ
            g_view = grad_grid[:, : rows - off].view(n, -1, ch)
            g_view -= dc.view_as(g_view)
            f_view = grad_grid[:, off:]
            f_view -= dz.view(n, rows - off, cols, ch)
            grad_w[t] -= hebb
            if grad_b is not None:
                grad_b[t] -= hebb.t()
        if self.w_retro is not None and not isinstance(self.w_retro, nn.Parameter):
            grad_b = None
        return loss, grad_grid, grad_w, grad_b

    def diagnostics(self) -> dict[str, float]:
        """Cosine between W_retro and W_predᵀ over all steps (1: aligned, 0: unrelated)."""
        if self.w_retro is None:
            return {}
        a = self.w_retro.detach().flatten()
        b = self.w_pred.detach().transpose(1, 2).flatten()
        return {"retro_cos": float(torch.nn.functional.cosine_similarity(a, b, dim=0))}
