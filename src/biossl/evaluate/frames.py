"""Frame-level features and probe: per-stage features on a dataset's label grid of F frames
(speech: one phone label per 10 ms), next to the pooled per-sample features.

Alignment. A stage's output (n, C, T_s) over a sample of T input steps is average-pooled to
the F label frames with adaptive average pooling: frame f averages the positions
t ∈ [⌊f·T_s/F⌋, ⌈(f+1)·T_s/F⌉), i.e. position t is taken to sit at input time t·T/T_s.
When T_s is a multiple of F this is the plain mean over T_s/F positions per frame (the
GIM encoder's top stage, total stride 160 at 16 kHz, gives exactly one position per
10 ms frame; its lower stages 2, 4, 8 … positions); otherwise neighbouring frames share
a boundary position; when T_s < F a position is repeated. Conv padding shifts a position
by a few input samples at most, and a position's receptive field reaches beyond its frame,
as in GIM's own phone probe. Any stage whose output is (n, C, T_s) works.

One forward pass per batch gives every stage's pooled vector and the selected frames'
vectors (:func:`extract_stage_features`); only the selected frames (at most
``EvalConfig.max_frames`` per split) are kept, so the memory is bounded by that cap
rather than by the split's length.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from biossl.evaluate.features import standardize
from biossl.evaluate.probe import PROBE_BATCH, linear_probe

StageFn = Callable[[Tensor], list[Tensor]]
"""A batch of dataset samples (n, …) on the CPU → every stage's output (n, C_s, T_s)."""


def frame_pool(h: Tensor, frames: int) -> Tensor:
    """Stage output (n, C, T_s) → per-frame features (n, F, C) (see the module doc)."""
    if h.dim() != 3:
        raise ValueError(f"frame probe: a stage output must be (n, C, T) on a time axis, got "
                         f"{tuple(h.shape)}; frame labels need a sequence encoder")
    return F.adaptive_avg_pool1d(h.float(), frames).transpose(1, 2)


def select_frames(frame_labels: Tensor, max_frames: int | None, seed: int) -> Tensor:
    """Flat indices into ``frame_labels.reshape(-1)`` of the frames a probe uses: the labelled
    ones (≠ −1), at most ``max_frames`` of them drawn uniformly (CPU generator seeded with
    ``seed``), in increasing order."""
    valid = (frame_labels.reshape(-1) >= 0).nonzero().squeeze(1)
    if max_frames is not None and valid.numel() > max_frames:
        g = torch.Generator().manual_seed(seed)
        valid = valid[torch.randperm(valid.numel(), generator=g)[:max_frames]].sort().values
    return valid


@dataclass
class StageFeatures:
    """One split's features from one forward pass, per stage s (bottom to top)."""
    pooled: list[Tensor]
    """(N, C_s): each sample's stage output averaged over time."""
    frames: list[Tensor]
    """(M, C_s): the selected frames' features (:func:`frame_pool`), in index order."""
    frame_y: Tensor
    """(M,) int64: the selected frames' labels."""


def extract_stage_features(stages: StageFn, samples: Tensor, frame_labels: Tensor | None,
                           selected: Tensor | None, batch_size: int = 1000, progress: bool = True,
                           out_device: torch.device | str = "cpu", desc: str = "features") -> StageFeatures:
    """Run ``stages`` over ``samples`` (N, …) in batches; keep each stage's time-pooled vector
    of every sample and its frame features at the flat ``selected`` indices of
    ``frame_labels`` (N, F) (from :func:`select_frames`). Without frame labels (None) only
    the pooled vectors are kept (``frames`` empty)."""
    n = samples.shape[0]
    if frame_labels is None:
        frame_labels, selected = torch.zeros(n, 1, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    nf = frame_labels.shape[1]
    if frame_labels.shape[0] != n:
        raise ValueError(f"frame probe: {n} samples for {frame_labels.shape[0]} rows of frame labels")
    if n == 0:
        raise ValueError("frame probe: no samples")
    selected = selected.cpu()
    frame_y = frame_labels.reshape(-1)[selected].long().to(out_device)
    pooled: list[Tensor] | None = None
    frames: list[Tensor] = []
    bar = tqdm(total=n, unit="sample", desc=desc, leave=False,
               disable=not progress or not sys.stderr.isatty())
    try:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            # the selected frames of this batch: a contiguous run of the sorted indices
            lo, hi = torch.searchsorted(selected, torch.tensor([start * nf, stop * nf])).tolist()
            local = selected[lo:hi] - start * nf
            with torch.inference_mode():
                got = []
                for s, h in enumerate(stages(samples[start:stop])):
                    if h.dim() != 3 or h.shape[0] != stop - start:
                        raise ValueError(f"frame probe: stage {s + 1} gave {tuple(h.shape)} for "
                                         f"{stop - start} samples; expected (n, C, T)")
                    per_frame = frame_pool(h, nf).reshape(-1, h.shape[1])   # (n·F, C)
                    got.append((h.float().mean(-1), per_frame[local.to(h.device)]))
            if pooled is None:
                # allocated outside inference mode: the probes train on these features
                pooled = [torch.empty(n, p.shape[1], device=out_device) for p, _ in got]
                frames = [torch.empty(selected.numel(), p.shape[1], device=out_device) for p, _ in got]
            for s, (p, f) in enumerate(got):
                pooled[s][start:stop].copy_(p)
                frames[s][lo:hi].copy_(f)
            bar.update(stop - start)
    finally:
        bar.close()
    return StageFeatures(pooled, frames, frame_y)


def frame_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
                epochs: int, lr: float, seed: int = 0, device: torch.device | str | None = None) -> float:
    """Frame accuracy (%) of a linear probe on train-standardised frame features (M, C)."""
    device = device if device is not None else train_x.device
    a, b = standardize(train_x.to(device), test_x.to(device))
    return linear_probe(a, train_y.to(device), b, test_y.to(device), num_classes, epochs, lr, seed=seed)


def frame_protocol(frame_name: str, num_frames: int, n_train: int, n_test: int, epochs: int,
                   lr: float, max_frames: int | None) -> str:
    """Names the frame probe's alignment, budget and frame counts."""
    cap = f"≤ {max_frames} per split, seeded" if max_frames is not None else "all"
    return (f"{frame_name} frames: stage outputs adaptive-avg-pooled to the {num_frames}-frame label "
            f"grid, standardized (train stats), linear: Adam {lr:g}, {epochs} ep, batch {PROBE_BATCH}, "
            f"{n_train} train / {n_test} test labelled frames ({cap})")
