"""CLAPP's predictive hinge loss (Illing et al. 2021), with an explicit (Hebbian) form.

For prediction step k the context c (a patch vector at row r) predicts the future z
(row r + k + 1, same column) through the score u = zᵀ W_pred,k c. The positive z comes
from the same image, the negatives are other futures of the batch (``negative_draw``).
Per step

    L_k = mean max(0, 1 − u⁺) + mean max(0, 1 + u⁻),

and the loss is the mean over the steps used. Variants (config), the paper's text as
default and the official code (pub-illing2021-neurips) as named options:

- ``sampling: either`` (CLAPP) — each image does the positive *or* the negative update,
  p = ½; ``both`` (CLAPP-s) — positives and negatives every step. For ``either``,
  ``either_divisor: half_batch`` divides both kinds of terms by b/2 (2·mean over the
  batch, so the expectation equals the ``both`` loss); ``coin_counts`` (official) divides
  the positive terms by the number of images whose coin came up "pos" and the negative
  terms by the number that came up "neg". ``coin: per_step`` draws a fresh coin per image
  and prediction step; ``per_pass`` (official) one per image per forward pass, shared by
  the K steps.
- ``negative_draw: other_images`` (paper) — ``negatives`` distinct other images, the same
  location; ``any_image`` (official CLAPP) — per image, images drawn uniformly from the
  batch with replacement (possibly itself), the same location everywhere; ``any_location``
  (official CLAPP-s) — per context, futures drawn uniformly over all images *and*
  locations, with replacement. Negatives are drawn anew every prediction step.
- ``context_path: retro`` (CLAPP) — the context receives W_retro z instead of W_predᵀ z, so no
  forward weight is used transposed (custom autograd Function :class:`RetroScore`).
  ``transpose`` (CLAPP-s) — plain autograd, i.e. W_predᵀ z.
- ``retro_score: shared`` (paper) — one score u and its γ drive both paths;
  ``separate`` (official ``asymmetric_W_pred``) — the loss is L(u) + L(u′) with
  u′ = cᵀ W_retro z: L(u) sees the context detached (it teaches z and W_pred), L(u′) sees
  the future detached (it teaches c and W_retro), each with its own negatives and coin.

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

from biossl.objectives.predictive import (Draws, PredictiveObjective, context_future, init_step_weights,
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
        # Σ_j g_j z_j once, then one matmul each: W_retro (Σ g z) and (Σ g z) cᵀ
        zg = (g.unsqueeze(-1) * z).sum(0)                             # (n, P, D)
        if ctx.needs_input_grad[1]:
            gc = zg @ b.t()                                          # Σ_j g · W_retro z
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            hebb = zg.reshape(-1, zg.shape[-1]).t() @ c.reshape(-1, c.shape[-1])
            gw = hebb if ctx.needs_input_grad[2] else None
            gb = hebb.t() if ctx.needs_input_grad[3] else None
        return gz, gc, gw, gb


def gather_futures(z_flat: Tensor, index: Tensor) -> Tensor:
    """z_flat (M, D) rows at ``index`` (1 + J, n, P) → (1 + J, n, P, D). index_select's
    backward is an index_add (no sort), unlike advanced indexing's."""
    return z_flat.index_select(0, index.flatten()).view(*index.shape, z_flat.shape[-1])


def score(zs: Tensor, c: Tensor, w: Tensor) -> Tensor:
    """u = zᵀ W c for every future in zs (1 + J, n, P, D), contexts c (n, P, C): W c once."""
    return (zs * (c @ w.t())).sum(-1)


@dataclass
class ClappConfig:
    steps: int = 5
    """K: prediction steps k = 1…K (row r predicts row r+k+1); capped at rows − 2 of the grid."""
    negatives: int = 1
    """Negatives per context (for 'other_images' capped at n − 1)."""
    negative_draw: Literal["other_images", "any_image", "any_location"] = "other_images"
    """Where the negatives come from, drawn anew every step: 'other_images' (default, the
    paper's text) — that many distinct other images, the same location; 'any_image'
    (official CLAPP) — per image, images drawn uniformly from the batch with replacement
    (the image itself with probability 1/b), the same location; 'any_location' (official
    CLAPP-s) — per context, futures drawn uniformly over all images and locations, with
    replacement."""
    sampling: Literal["either", "both"] = "either"
    """'either' (CLAPP): per image, the positive or the negative term, p = ½;
    'both' (CLAPP-s): every term every step."""
    either_divisor: Literal["half_batch", "coin_counts"] = "half_batch"
    """Normalisation of 'either': 'half_batch' (default) — every term over b/2, so the
    expected loss equals 'both'; 'coin_counts' (official) — the positive terms over the
    number of images whose coin came up "pos", the negative ones over the number that came
    up "neg" (a kind nobody drew contributes nothing)."""
    coin: Literal["per_step", "per_pass"] = "per_step"
    """When 'either' tosses each image's coin: 'per_step' (default) — anew for every
    prediction step; 'per_pass' (official) — once per forward pass, shared by the K steps."""
    context_path: Literal["retro", "transpose"] = "retro"
    """How the error reaches the context: 'retro' (CLAPP) through an independent W_retro;
    'transpose' (CLAPP-s) through W_predᵀ (weight transport)."""
    retro_score: Literal["shared", "separate"] = "shared"
    """With 'retro': 'shared' (default, the paper's rule) — one score u = zᵀ W_pred c and its
    γ gate both the future's and the context's update; 'separate' (official
    asymmetric_W_pred) — a second, mirror loss L(u′), u′ = cᵀ W_retro z, with its own
    negatives and coin; L(u) reaches only z and W_pred, L(u′) only c and W_retro."""
    retro_learning: Literal["mirror", "fixed"] = "mirror"
    """'mirror': W_retro learns — 'shared': the transposed Hebbian increment of W_pred (γ c zᵀ,
    local); 'separate': the Hebbian increment of its own loss (γ′ c zᵀ). 'fixed': W_retro
    stays at its random initialisation (a buffer)."""
    pred_init: float = 1.0
    """Scale of the initial W_pred (and W_retro) (× nn.Linear's default ±1/√C). Small values
    let a mirrored W_retro align with W_predᵀ sooner: their offset stays at its initial size."""
    draws: Draws = "lockstep"
    """The random draws (negatives, coins) of the copies on different stages: 'lockstep'
    (default) — every stage draws from the same stream, so at each step all stages make the
    same positive/negative choice (the whole network sees the same next glimpse);
    'per_stage' (the official CLAPP code) — each stage draws its own."""

    def validate(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {self.steps}")
        if self.negatives < 1:
            raise ValueError(f"negatives must be ≥ 1, got {self.negatives}")
        if self.pred_init <= 0:
            raise ValueError(f"pred_init must be > 0, got {self.pred_init}")
        choices = {"negative_draw": ("other_images", "any_image", "any_location"),
                   "sampling": ("either", "both"), "either_divisor": ("half_batch", "coin_counts"),
                   "coin": ("per_step", "per_pass"), "context_path": ("retro", "transpose"),
                   "draws": ("lockstep", "per_stage"),
                   "retro_score": ("shared", "separate"), "retro_learning": ("mirror", "fixed")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"unknown {key} {getattr(self, key)!r}; choose one of "
                                 f"{', '.join(repr(a) for a in allowed)}")
        if self.retro_score == "separate" and self.context_path != "retro":
            raise ValueError("retro_score 'separate' is the mirror loss of an independent W_retro: "
                             "it needs context_path 'retro' (got 'transpose'); use retro_score 'shared'")


@dataclass
class StepDraws:
    """Random choices of one prediction step for n images with P locations each.

    index (1 + J, n, P): the future each term uses, as a flat index into the step's futures
    z (n·P, image-major): row 0 the positive (the context's own future), rows 1: negatives.
    use (1 + J, n) bool: the terms each image takes part in (CLAPP's coin).
    """
    index: Tensor
    use: Tensor


@dataclass
class PassDraws:
    """All random choices of one forward pass: per step, and for retro_score 'separate'
    the mirror loss's own per-step draws."""
    steps: list[StepDraws]
    mirror: list[StepDraws] | None = None


class ClappObjective(PredictiveObjective):
    """CLAPP predictive hinge on patch grids (or pairs), with W_pred (and W_retro) per step."""

    Config = ClappConfig
    plausible_error = True
    has_explicit_form = True

    @classmethod
    def uses_weight_transport(cls, params: ClappConfig) -> bool:
        """CLAPP-s sends the context error through W_predᵀ (weight transport)."""
        return params.context_path == "transpose"

    def __init__(self, cfg: ClappConfig, in_shape: tuple[int, ...]):
        super().__init__(cfg.draws)
        cfg.validate()
        self.cfg = cfg
        ch = in_shape[0]
        k = cfg.steps  # a pairs batch uses the first step only
        self.w_pred = nn.Parameter(init_step_weights(k, ch, ch, cfg.pred_init))
        if cfg.context_path == "retro":
            retro = init_step_weights(k, ch, ch, cfg.pred_init)  # independent draw: not W_predᵀ
            if cfg.retro_learning == "mirror":
                self.w_retro = nn.Parameter(retro)
            else:
                self.register_buffer("w_retro", retro)
        else:
            self.w_retro = None

    @property
    def separate(self) -> bool:
        return self.cfg.retro_score == "separate"

    # ---- random choices ------------------------------------------------------------------
    def draw(self, n: int, positions: list[int]) -> PassDraws:
        """Negatives and coins for every step (``positions[s]``: locations P of step s),
        reproducible from the objective's generator."""
        steps = self._draw_steps(n, positions)
        return PassDraws(steps, self._draw_steps(n, positions) if self.separate else None)

    def _draw_steps(self, n: int, positions: list[int]) -> list[StepDraws]:
        cfg, gen = self.cfg, self.generator
        j = min(cfg.negatives, n - 1) if cfg.negative_draw == "other_images" else cfg.negatives
        pass_coin = (torch.rand(n, generator=gen) < 0.5
                     if cfg.sampling == "either" and cfg.coin == "per_pass" else None)
        out = []
        for p in positions:
            own = torch.arange(n * p).view(1, n, p)
            if cfg.negative_draw == "other_images":
                shifts = torch.randperm(n - 1, generator=gen)[:j] + 1               # (J,)
                images = (torch.arange(n)[None] + shifts[:, None]) % n              # (J, n)
                neg = images[..., None] * p + torch.arange(p)
            elif cfg.negative_draw == "any_image":
                images = torch.randint(n, (j, n), generator=gen)
                neg = images[..., None] * p + torch.arange(p)
            else:
                neg = torch.randint(n * p, (j, n, p), generator=gen)
            if cfg.sampling == "either":
                pos = pass_coin if pass_coin is not None else torch.rand(n, generator=gen) < 0.5
                use = torch.cat([pos[None], (~pos)[None].expand(j, n)])
            else:
                use = torch.ones(1 + j, n, dtype=torch.bool)
            out.append(StepDraws(torch.cat([own, neg]), use))
        return out

    def _weights(self, use: Tensor, p: int, n_steps: int, like: Tensor) -> Tensor:
        """Per-term loss weights (1 + J, n, 1): means over images·locations (and negatives).

        Constant factors (a global learning-rate scale), in ``like``'s dtype and device.
        """
        j, n = use.shape[0] - 1, use.shape[1]
        use_f = use.to(like.dtype)
        per_neg = torch.tensor([1.0] + [1.0 / j] * j, dtype=like.dtype).view(-1, 1)
        if self.cfg.sampling == "both":
            images = torch.full((1 + j, 1), float(n), dtype=like.dtype)
        elif self.cfg.either_divisor == "half_batch":
            images = torch.full((1 + j, 1), n / 2.0, dtype=like.dtype)  # keeps E[loss] equal to 'both'
        else:  # official: over the images that drew each kind (at least 1: an empty kind adds 0)
            counts = use_f[:2].sum(1).clamp_min(1.0)
            images = torch.cat([counts[:1], counts[1:].expand(j)]).view(-1, 1)
        w = per_neg * use_f / (images * p * n_steps)
        return w.unsqueeze(-1).to(like.device)

    # ---- loss (autograd) -----------------------------------------------------------------
    def forward(self, h: Tensor, batch: ViewBatch) -> Tensor:
        self._check_batch(batch)
        grid = vector_grid(patch_vectors(h, batch), batch)
        steps = steps_for(batch, grid.shape[1], self.cfg.steps)
        grid_all = self.replicas.rows(grid)  # every replica's images (data parallel)
        return self.loss_from(grid, steps, self.draw(grid_all.shape[0], self.positions(grid, steps)),
                              grid_all)

    @staticmethod
    def positions(grid: Tensor, steps) -> list[int]:
        """Locations P of every step's contexts (and futures): (rows − offset) · cols."""
        return [(grid.shape[1] - off) * grid.shape[2] for _, off in steps]

    def _own_weights(self, d: StepDraws, own: slice, p: int, n_steps: int, like: Tensor) -> Tensor:
        """This replica's images' term weights (1 + J, n own, 1): the global batch's weights
        (counts over every replica's coins) × ``replicas.loss_scale``."""
        return self._weights(d.use, p, n_steps, like)[:, own] * self.replicas.loss_scale

    def _hinge_sum(self, u: Tensor, d: StepDraws, own: slice, p: int, n_steps: int) -> Tensor:
        hinge = torch.cat([torch.relu(1.0 - u[:1]), torch.relu(1.0 + u[1:])])
        return (self._own_weights(d, own, p, n_steps, u) * hinge).sum()

    def loss_from(self, grid: Tensor, steps, draws: PassDraws, grid_all: Tensor | None = None) -> Tensor:
        """The loss of the contexts of ``grid`` against the futures of ``grid_all`` (data
        parallel: every replica's images, this rank's rows ``replicas.own``; default: grid)."""
        grid_all = grid if grid_all is None else grid_all
        own = self.replicas.own(grid.shape[0])
        total = grid.new_zeros(())
        mirror = draws.mirror if draws.mirror is not None else [None] * len(steps)
        for (t, off), d, dm in zip(steps, draws.steps, mirror):
            c = context_future(grid, off)[0]
            z = context_future(grid_all, off)[1]
            p = c.shape[1]
            z_flat = z.reshape(-1, z.shape[-1])
            zs = gather_futures(z_flat, d.index[:, own].to(grid.device))  # (1 + J, n, P, C)
            if self.w_retro is None:
                u = score(zs, c, self.w_pred[t])
            elif dm is None:
                u = RetroScore.apply(zs, c, self.w_pred[t], self.w_retro[t])
            else:  # official asymmetric form: L(u) with c detached + L(u′) with z detached
                u = score(zs, c.detach(), self.w_pred[t])
                zm = gather_futures(z_flat.detach(), dm.index[:, own].to(grid.device))
                u_mirror = score(zm, c, self.w_retro[t].t())         # u′ = cᵀ W_retro z
                total = total + self._hinge_sum(u_mirror, dm, own, p, len(steps))
            total = total + self._hinge_sum(u, d, own, p, len(steps))
        return total

    # ---- explicit form (no autograd) ---------------------------------------------------
    @torch.no_grad()
    def explicit_backward(self, h: Tensor, batch: ViewBatch) -> tuple[Tensor, Tensor]:
        """Loss and ∂L/∂h computed from activities and γ only; adds ∂L/∂W to ``.grad``.

        Per step: the future z gets γ·(W_pred c) (the dendritic prediction), the context c
        gets γ·(W_retro z) (W_predᵀ z for 'transpose'), W_pred gets γ z cᵀ — each term
        weighted by the loss's constant mean factors; with retro_score 'separate' the
        context's γ′ comes from the mirror score u′ = cᵀ W_retro z. The per-patch mean's
        backward spreads the patch error evenly over the stage's spatial output.
        """
        self._check_batch(batch)
        grid = vector_grid(patch_vectors(h, batch), batch)
        steps = steps_for(batch, grid.shape[1], self.cfg.steps)
        grid_all = self.replicas.rows(grid)  # every replica's images (data parallel)
        draws = self.draw(grid_all.shape[0], self.positions(grid, steps))
        loss, grad_grid, grad_w, grad_b = self.explicit_from(grid, steps, draws, grid_all)
        for p, g in ((self.w_pred, grad_w), (self.w_retro, grad_b)):
            if isinstance(p, nn.Parameter) and g is not None:
                p.grad = g if p.grad is None else p.grad + g
        grad_v = self._grid_to_rows(grad_grid, batch)
        return loss, spread_to_output(grad_v, h.shape, batch).to(h.dtype)

    @staticmethod
    def _grid_to_rows(grad_grid: Tensor, batch: ViewBatch) -> Tensor:
        if batch.kind == "pairs":
            return grad_grid.permute(1, 0, 2, 3).reshape(2 * batch.n, -1)
        return grad_grid.reshape(-1, grad_grid.shape[-1])

    def _modulation(self, u: Tensor, d: StepDraws, own: slice, p: int, n_steps: int) -> tuple[Tensor, Tensor]:
        """(weighted hinge sum, weight·γ = −∂L/∂u) of one step's scores (this replica's images)."""
        weight = self._own_weights(d, own, p, n_steps, u)
        hinge = torch.cat([torch.relu(1.0 - u[:1]), torch.relu(1.0 + u[1:])])
        return (weight * hinge).sum(), weight * clapp_gamma(u, d.use[:, own, None].expand_as(u))

    def explicit_from(self, grid: Tensor, steps, draws: PassDraws, grid_all: Tensor | None = None):
        """(loss, ∂L/∂grid, ∂L/∂W_pred, ∂L/∂W_retro or None), all from γ-gated Hebbian products.
        Data parallel (``grid_all``: every replica's images): the futures' errors are summed
        over the replicas and each keeps its own rows (``replicas.sum_to_own``)."""
        grid_all = grid if grid_all is None else grid_all
        n, rows, cols, ch = grid.shape
        own = self.replicas.own(n)
        grad_grid = torch.zeros_like(grid)                          # the contexts' errors
        grad_futures = torch.zeros_like(grid_all)                   # every replica's futures'
        grad_w = torch.zeros_like(self.w_pred)
        grad_b = torch.zeros_like(self.w_pred) if self.w_retro is not None else None
        loss = grid.new_zeros(())
        mirror = draws.mirror if draws.mirror is not None else [None] * len(steps)
        for (t, off), d, dm in zip(steps, draws.steps, mirror):
            c = context_future(grid, off)[0]
            z_flat = context_future(grid_all, off)[1].reshape(-1, ch)
            p = c.shape[1]
            idx = d.index[:, own].to(grid.device)
            w = self.w_pred[t]
            pred = c @ w.t()                                         # W_pred c  (n, P, D)
            zs = gather_futures(z_flat, idx)                         # (1 + J, n, P, D)
            u = (zs * pred).sum(-1)                                  # (1 + J, n, P)
            step_loss, mod = self._modulation(u, d, own, p, len(steps))   # mod = −∂L/∂u
            loss = loss + step_loss
            # future side: each future that served (positive or negative) gets mod·W_pred c
            dz = torch.zeros_like(z_flat).index_add_(0, idx.flatten(), (mod.unsqueeze(-1) * pred).flatten(0, 2))
            zg = (mod.unsqueeze(-1) * zs).sum(0)                     # Σ_j γ z  (n, P, D)
            hebb = zg.reshape(-1, ch).t() @ c.reshape(-1, ch)        # Σ γ z cᵀ
            grad_w[t] -= hebb
            if dm is None:  # one score: the context's signal is gated by the same γ
                dc = zg @ (w if self.w_retro is None else self.w_retro[t].t())  # Σ_j γ W_retro z
                if grad_b is not None:
                    grad_b[t] -= hebb.t()
            else:  # mirror loss L(u′), u′ = cᵀ W_retro z: its own draws, γ′ and Hebbian product
                zm = gather_futures(z_flat, dm.index[:, own].to(grid.device))
                u_m = (zm * (c @ self.w_retro[t])).sum(-1)           # u′ = cᵀ W_retro z
                m_loss, mod_m = self._modulation(u_m, dm, own, p, len(steps))
                loss = loss + m_loss
                zg_m = (mod_m.unsqueeze(-1) * zm).sum(0)              # Σ_j γ′ z  (n, P, D)
                dc = zg_m @ self.w_retro[t].t()
                grad_b[t] -= c.reshape(-1, ch).t() @ zg_m.reshape(-1, ch)   # Σ γ′ c zᵀ
            g_view = grad_grid[:, : rows - off].view(n, -1, ch)
            g_view -= dc.view_as(g_view)
            f_view = grad_futures[:, off:]
            f_view -= dz.view(-1, rows - off, cols, ch)
        grad_grid += self.replicas.sum_to_own(grad_futures)
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
