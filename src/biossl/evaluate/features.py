"""Frozen-encoder features: one globally pooled vector per image and stage.

The evaluation protocol (DESIGN.md, "Evaluation") reads every stage's output,
global-average-pools it to one C-dim vector per image, and standardises it with
train-split statistics. This module does exactly that and nothing else.
"""
from __future__ import annotations

import sys

import torch
from torch import Tensor
from tqdm.auto import tqdm

from biossl.encoders.base import StageStack
from biossl.views.base import ViewRecipe


def _encoder_device(encoder: StageStack) -> torch.device:
    p = next(encoder.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def extract_features(encoder: StageStack, images_uint8: Tensor, recipe: ViewRecipe,
                     batch_size: int = 1000, device: torch.device | str | None = None,
                     progress: bool = True, out_device: torch.device | str = "cpu",
                     desc: str = "features") -> list[Tensor]:
    """Pooled per-stage features of ``images_uint8``.

    Args:
        encoder: stage stack, already on ``device``; run in eval mode, its mode restored after.
        images_uint8: (N, C, H, W) uint8 images (any device; moved batch by batch).
        recipe: its :meth:`~ViewRecipe.eval_batch` makes the deterministic encoder input;
            ``ViewBatch.pooled`` does the global average pool (for a patch-grid recipe it
            also averages over the grid, so there is still one vector per image).
        batch_size: images per forward pass.
        device: where the encoder runs (default: the encoder's parameters' device).
        progress: show a tqdm bar (also hidden when stderr is not a terminal).
        out_device: where the returned features live (default CPU, so a full split of
            features never has to fit next to the encoder on the accelerator).

    Returns:
        One float32 tensor (N, C_s) per stage s, bottom to top.
    """
    device = torch.device(device) if device is not None else _encoder_device(encoder)
    n = images_uint8.shape[0]
    if n == 0:
        raise ValueError("extract_features: no images")
    was_training = encoder.training
    encoder.eval()
    feats: list[Tensor] | None = None
    bar = tqdm(total=n, unit="img", desc=desc, leave=False,
               disable=not progress or not sys.stderr.isatty())
    try:
        for start in range(0, n, batch_size):
            xb = images_uint8[start:start + batch_size].to(device, non_blocking=True)
            with torch.inference_mode():
                vb = recipe.eval_batch(xb)
                pooled = [vb.pooled(h).float() for h in encoder(vb.x)]
            if feats is None:
                # Allocated outside inference mode: inference tensors cannot be saved for
                # backward, and the probes train on these features.
                feats = [torch.empty(n, p.shape[1], device=out_device) for p in pooled]
            for buf, p in zip(feats, pooled):
                buf[start:start + p.shape[0]].copy_(p)
            bar.update(xb.shape[0])
    finally:
        bar.close()
        encoder.train(was_training)
    return feats


def standardize(train: Tensor, test: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Z-score both splits with the *train* split's per-feature mean and std.

    train: (N_train, D), test: (N_test, D) → same shapes, float32. Test statistics are
    never used (no information from the test split leaks into the probe).
    A feature whose train std is below ``eps`` (e.g. a channel that is dead on the
    train split) is only centred, not scaled: dividing by ~0 would blow up whatever
    small activity it has on the test split.
    """
    train, test = train.float(), test.float()
    mean = train.mean(0, keepdim=True)
    std = train.std(0, correction=0, keepdim=True)
    std = torch.where(std > eps, std, torch.ones_like(std))
    return (train - mean) / std, (test - mean) / std
