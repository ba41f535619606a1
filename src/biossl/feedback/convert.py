"""Turn any module tree (an encoder, an objective's head) into its feedback version.

Every ``nn.Linear`` and ``nn.Conv1d/2d/3d`` is swapped in place for a
:class:`FeedbackLinear` / :class:`FeedbackConv` that shares its W and bias, so no model
code is duplicated and no encoder or objective needs to know about feedback.
"""
from __future__ import annotations

import torch
from torch import nn

from biossl.feedback.layers import LAYER_MODES, FeedbackConv, FeedbackLayer, FeedbackLinear, canonical_mode

FEEDBACK_MODES = ("bp",) + LAYER_MODES
"""Modes a rule can ask for: ``bp`` (B := W, nothing converted), ``rf`` (alias ``fa``),
``urf``, ``sign``."""

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def check_mode(mode: str) -> str:
    """The canonical mode name ('fa' → 'rf'); ValueError naming the allowed ones otherwise."""
    if mode == "bp":
        return mode
    try:
        return canonical_mode(mode)
    except ValueError:
        raise ValueError(f"unknown feedback {mode!r}; choose one of {', '.join(FEEDBACK_MODES)} "
                         f"(or 'fa', an alias of 'rf')") from None


def to_feedback(module: nn.Module, mode: str, generator: torch.Generator | None = None) -> nn.Module:
    """Swap every linear / conv layer of ``module`` (in place) for its feedback version.

    Args:
        module: any module tree; a bare nn.Linear / nn.Conv*d is returned converted.
        mode: 'bp' (returns ``module`` unchanged), 'rf'/'fa', 'urf' or 'sign'.
        generator: draws the random feedback weights B (independent of W).
    Returns: the converted module (the same object unless ``module`` itself was a layer).
    Layers that already are feedback layers are left as they are.
    """
    mode = check_mode(mode)
    if mode == "bp":
        return module
    if isinstance(module, (nn.Linear, *_CONVS)):
        return _convert(module, mode, generator)
    # Collect first, then replace: never mutate the tree while iterating over it.
    targets = [(parent, name, child) for parent in module.modules()
               for name, child in parent.named_children()
               if isinstance(child, (nn.Linear, *_CONVS)) and not isinstance(child, FeedbackLayer)]
    for parent, name, child in targets:
        setattr(parent, name, _convert(child, mode, generator))
    return module


def _convert(m: nn.Module, mode: str, generator: torch.Generator | None) -> FeedbackLayer:
    if isinstance(m, nn.Linear):
        return FeedbackLinear.from_linear(m, mode, generator)
    return FeedbackConv.from_conv(m, mode, generator)
