"""Linear probes on frozen features: the full-label probe and the few-label probe.

Both train one ``Linear(D → classes)`` layer (with bias) with cross-entropy and Adam on
features the caller has already standardised (:func:`biossl.evaluate.features.standardize`).
The weights start at zero; everything random (minibatch order, label selection) is
drawn from a CPU generator seeded with ``seed``, so a probe is reproducible across runs and devices.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

PROBE_BATCH = 1024
"""Minibatch size of every probe (EvalConfig: 'minibatches of 1024 features')."""
MIN_FEW_LABEL_PASSES = 100
"""The few-label probe sees its small training set at least this many times."""


def train_linear(x: Tensor, y: Tensor, num_classes: int, epochs: int = 30, lr: float = 1e-3,
                 batch_size: int = PROBE_BATCH, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Fit a linear classifier; x (N, D) float, y (N,) int → (W (K, D), b (K,)) on x's device.

    The budget is ``epochs · ⌈N / batch_size⌉`` Adam steps: a small N gives few steps.
    """
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"train_linear: {x.shape[0]} features for {y.shape[0]} labels")
    n, d = x.shape
    dev = x.device
    g = torch.Generator().manual_seed(seed)
    # Zero init: the problem is convex, so the start does not matter at convergence, and
    # a short (under-trained) probe is not biased by a random initial classifier.
    w = torch.zeros(num_classes, d, device=dev, requires_grad=True)
    b = torch.zeros(num_classes, device=dev, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    y = y.to(dev).long()
    with torch.enable_grad():  # callers may sit inside no_grad (e.g. an eval hook)
        for _ in range(epochs):
            perm = torch.randperm(n, generator=g).to(dev)
            for i in range(0, n, batch_size):
                idx = perm[i:i + batch_size]
                loss = F.cross_entropy(F.linear(x[idx], w, b), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return w.detach(), b.detach()


@torch.no_grad()
def accuracy(w: Tensor, b: Tensor, x: Tensor, y: Tensor, chunk: int = 8192) -> float:
    """Top-1 accuracy (%) of the linear classifier (w, b) on x (N, D), y (N,)."""
    if x.shape[0] == 0:
        return float("nan")
    correct = 0
    for i in range(0, x.shape[0], chunk):
        pred = F.linear(x[i:i + chunk].to(w.device), w, b).argmax(1)
        correct += int((pred == y[i:i + chunk].to(w.device)).sum())
    return 100.0 * correct / x.shape[0]


def linear_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor,
                 num_classes: int, epochs: int = 30, lr: float = 1e-3,
                 batch_size: int = PROBE_BATCH, seed: int = 0) -> float:
    """Test accuracy (%) of a linear layer trained on all of (train_x (N, D), train_y (N,))."""
    w, b = train_linear(train_x, train_y, num_classes, epochs, lr, batch_size, seed)
    return accuracy(w, b, test_x, test_y)


def select_per_class(labels: Tensor, per_class: int, num_classes: int, seed: int = 0) -> Tensor:
    """Indices (per_class · num_classes,) of ``per_class`` random examples of every class.

    Batched: a seeded random permutation, a stable sort by label, and each element's
    rank inside its class; the first ``per_class`` of every class are kept. Returned in
    increasing index order. Raises ValueError if a class has fewer than ``per_class``.
    """
    labels = labels.detach().cpu().long()
    counts = torch.bincount(labels, minlength=num_classes)
    if counts.numel() > num_classes:
        raise ValueError(f"labels go up to {labels.max().item()}, num_classes={num_classes}")
    if per_class < 1 or bool((counts < per_class).any()):
        raise ValueError(f"few-label selection: need {per_class} examples per class, "
                         f"the smallest class has {int(counts.min())}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(labels.numel(), generator=g)
    order = torch.argsort(labels[perm], stable=True)   # by class, random within a class
    sorted_lab = labels[perm][order]
    starts = torch.cumsum(counts, 0) - counts          # first position of each class
    rank = torch.arange(labels.numel()) - starts[sorted_lab]
    return perm[order[rank < per_class]].sort().values


def few_label_epochs(n_train: int, n_few: int, epochs: int,
                     batch_size: int = PROBE_BATCH) -> int:
    """Passes of the few-label probe over its ``n_few`` examples.

    A small set gives few optimizer steps per pass, so at the full probe's epoch count
    it would stay under-trained. The few-label probe therefore takes as many Adam steps
    as the full probe takes on ``n_train`` examples (``epochs · ⌈n_train / batch⌉``),
    and at least :data:`MIN_FEW_LABEL_PASSES` passes.
    """
    full_steps = epochs * math.ceil(n_train / batch_size)
    few_steps_per_pass = math.ceil(n_few / batch_size)
    return max(MIN_FEW_LABEL_PASSES, epochs, math.ceil(full_steps / few_steps_per_pass))


def few_label_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor,
                    num_classes: int, per_class: int = 100, epochs: int = 30, lr: float = 1e-3,
                    batch_size: int = PROBE_BATCH, seed: int = 0) -> float:
    """Test accuracy (%) of the linear probe trained on ``per_class`` labels per class.

    The labelled subset is drawn by :func:`select_per_class` (seeded); the probe runs for
    :func:`few_label_epochs` passes (equal optimizer steps to the full probe, ≥ 100).
    Standardisation statistics may come from the whole train split: they need no labels.
    """
    idx = select_per_class(train_y, per_class, num_classes, seed).to(train_x.device)
    ep = few_label_epochs(train_x.shape[0], idx.numel(), epochs, batch_size)
    return linear_probe(train_x[idx], train_y.to(train_x.device)[idx], test_x, test_y,
                        num_classes, ep, lr, batch_size, seed)
