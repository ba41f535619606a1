"""How far a feedback rule's update is from back-propagation, measured every so often.

* ``angle/<group>``: angle (degrees) between the rule's gradient for a parameter group
  (a stage, a head) and the true BP gradient of the same loss on the same batch at the same
  weights, obtained by a second forward + backward with B := W (weight transport switched
  on for the measurement only). 0° means the rule follows the gradient exactly; < 90° means
  it still descends the loss.
* ``fb_norm_ratio/<layer>``: ‖B‖ / ‖W‖ per feedback layer, and ``fb_angle/<layer>``: the
  angle between B and W (URF drives it down as W moves; RF keeps B fixed).

The gradient angle costs one extra forward + backward, so it runs only every
``every`` steps (0: never); the norm ratios are computed when asked for.
"""
from __future__ import annotations

import math
from typing import Callable, ContextManager, Mapping, Sequence

import torch
from torch import Tensor, nn

from biossl.feedback.layers import FeedbackLayer


def angle_deg(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    """Angle between two lists of tensors, each flattened and concatenated (NaN if one is 0)."""
    dot = na = nb = 0.0
    for x, y in zip(a, b, strict=True):
        x, y = x.detach().double().flatten(), y.detach().double().flatten()
        dot += float(x @ y)
        na += float(x @ x)
        nb += float(y @ y)
    if na == 0.0 or nb == 0.0:
        return math.nan
    return math.degrees(math.acos(max(-1.0, min(1.0, dot / math.sqrt(na * nb)))))


def feedback_report(named: Mapping[str, FeedbackLayer]) -> dict[str, float]:
    """‖B‖/‖W‖ and the angle between B and W for each feedback layer (by module name)."""
    out: dict[str, float] = {}
    for name, layer in named.items():
        w, b = layer.weight.detach(), layer.feedback
        out[f"fb_norm_ratio/{name}"] = float(b.norm() / w.norm().clamp_min(1e-30))
        out[f"fb_angle/{name}"] = angle_deg([b], [w])
    return out


def named_feedback_layers(module: nn.Module) -> dict[str, FeedbackLayer]:
    return {n: m for n, m in module.named_modules() if isinstance(m, FeedbackLayer)}


class GradientAngleProbe:
    """Every ``every`` steps, compares the gradients a rule just computed with true BP.

    Before an update, :meth:`due` says whether to measure it; call :meth:`measure` after
    the rule wrote its update into ``.grad`` and before the optimizer step, then :meth:`tick`.
    """

    def __init__(self, every: int):
        if every < 0:
            raise ValueError("diagnostics_every must be ≥ 0")
        self.every = every
        self.steps = 0
        self.last: dict[str, float] = {}

    def due(self) -> bool:
        """Whether the next update is one to measure."""
        return bool(self.every) and self.steps % self.every == 0

    def tick(self) -> None:
        """Count an update (updates that change no forward weight are not counted)."""
        self.steps += 1

    def measure(self, groups: Mapping[str, Sequence[nn.Parameter]], loss_fn: Callable[[], Tensor],
                exact: Callable[[], ContextManager]) -> None:
        """``groups``: named parameter lists whose ``.grad`` holds the rule's gradient;
        ``loss_fn``: the same loss on the same batch (a fresh graph through the forward
        weights); ``exact``: the context in which its backward is true back-propagation."""
        self.last.update(compare_gradients(groups, loss_fn, exact))

    def state(self) -> dict:
        # the last angles too: a resumed run logs what the uninterrupted one logs
        return {"steps": self.steps, "last": dict(self.last)}

    def load_state(self, state: dict) -> None:
        self.steps = state.get("steps", 0)
        self.last = dict(state.get("last", {}))


def compare_gradients(groups: Mapping[str, Sequence[nn.Parameter]], loss_fn: Callable[[], Tensor],
                      exact: Callable[[], ContextManager]) -> dict[str, float]:
    """``angle/<group>`` between each group's ``.grad`` and its back-propagation gradient."""
    params = [p for ps in groups.values() for p in ps]
    rule = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    with exact():
        true = torch.autograd.grad(loss_fn(), params, allow_unused=True)
    true = [t if t is not None else torch.zeros_like(p) for t, p in zip(true, params)]
    out, k = {}, 0
    for name, ps in groups.items():
        n = len(ps)
        out[f"angle/{name}"] = angle_deg(rule[k:k + n], true[k:k + n])
        k += n
    return out
