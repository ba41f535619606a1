"""The trained encoder of a run directory, without the rule that trained it: the encoder is
built from the run's config and gets the forward weights stored in the checkpoint.

The checkpoint's model state (``state["rule"]``) holds the encoder under the key prefix
``encoder.``, next to the objectives, inverses and optimizer state a probe never needs.
With random (rf), updated random (urf) or sign feedback the encoder's conv / linear layers
were converted to feedback layers, which keep the same weight and bias keys and add a
``feedback`` buffer B that only the backward pass reads: those are skipped. Anything else
that does not fit (a missing or unexpected key, another shape) is an error naming the key.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from biossl.config import ConfigError, build_config
from biossl.rundir import config_changes, load_run_config

ENCODER_PREFIX = "encoder."
"""Where the encoder's tensors sit in the checkpoint's model state."""
FEEDBACK_BUFFER = "feedback"
"""The name of a feedback layer's B (biossl.feedback.layers), beside its ``weight``."""


def model_state(checkpoint: dict) -> dict:
    """The model part of a training checkpoint (the rule's state dict)."""
    return checkpoint["rule"]


def encoder_state(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The checkpoint's encoder entries, keyed as the encoder's own state dict."""
    return {k[len(ENCODER_PREFIX):]: v for k, v in model_state(checkpoint).items()
            if k.startswith(ENCODER_PREFIX)}


def _is_feedback(key: str, expected: dict) -> bool:
    """B of a feedback layer: ``….feedback`` beside a forward ``….weight`` the encoder has."""
    parent, _, name = key.rpartition(".")
    return name == FEEDBACK_BUFFER and f"{parent}.weight" in expected


def _mismatches(saved: dict, expected: dict) -> list[str]:
    problems = [f"missing {k}" for k in expected if k not in saved]
    problems += [f"unexpected {k}" for k in saved if k not in expected and not _is_feedback(k, expected)]
    for k, want in expected.items():
        got = saved.get(k)
        if torch.is_tensor(want) and torch.is_tensor(got) and got.shape != want.shape:
            problems.append(f"{k} has shape {tuple(got.shape)} in the checkpoint, "
                            f"{tuple(want.shape)} in the encoder")
    return problems


def load_trained_weights(encoder: nn.Module, checkpoint: dict, run_dir: str | Path) -> nn.Module:
    """Copy the checkpoint's forward weights into ``encoder`` (built from the run's config);
    returns it. Raises ConfigError naming ``run_dir``, the keys and the fix when they differ."""
    saved = encoder_state(checkpoint)
    expected = encoder.state_dict()
    problems = _mismatches(saved, expected)
    if problems:
        shown = "; ".join(problems[:6]) + (f" (+{len(problems) - 6} more)" if len(problems) > 6 else "")
        changed = config_changes(build_config(checkpoint["config"]), load_run_config(run_dir))
        if changed:
            edits = "; ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in changed.items())
            fix = f"its config.yaml was edited since training ({edits}); put those values back to probe it"
        else:
            fix = ("the checkpoint was not written for this encoder (another biossl version, or "
                   "edited); retrain the run with this version")
        raise ConfigError(f"the checkpoint in {run_dir} does not fit the encoder its config builds "
                          f"({shown}): {fix}")
    encoder.load_state_dict({k: saved[k] for k in expected}, strict=True)
    return encoder
