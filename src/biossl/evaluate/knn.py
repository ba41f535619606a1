"""Cosine k-nearest-neighbour classifier on frozen features.

Default vote: the weighted vote of InstDisc (Wu et al. 2018), used by most SSL papers:
each of the k neighbours votes for its label with weight exp(cos_sim / 0.07), so close
neighbours count more and ties are practically impossible. ``temperature=None`` gives a
plain majority vote (ties go to the lowest class index).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

KNN_TEMPERATURE = 0.07
"""Temperature of the InstDisc weighted vote."""
_CHUNK_ELEMENTS = 1 << 25
"""Auto chunk: at most this many similarities (128 MiB in float32) at once."""


def knn_predict(train_x: Tensor, train_y: Tensor, test_x: Tensor, num_classes: int,
                k: int = 20, temperature: float | None = KNN_TEMPERATURE,
                chunk: int | None = None) -> Tensor:
    """Predicted labels (N_test,) for test_x (N_test, D) from train_x (N_train, D), train_y (N_train,).

    Computed on train_x's device, ``chunk`` test rows at a time so the (chunk, N_train)
    similarity block bounds the memory (default: ~2^25 similarities per chunk).
    """
    n_train = train_x.shape[0]
    if n_train == 0 or n_train != train_y.shape[0]:
        raise ValueError(f"knn: {n_train} train features for {train_y.shape[0]} labels")
    k = min(k, n_train)
    dev = train_x.device
    if chunk is None:
        chunk = max(1, _CHUNK_ELEMENTS // n_train)
    bank = F.normalize(train_x.float(), dim=1)
    labels = train_y.to(dev).long()
    preds = []
    for i in range(0, test_x.shape[0], chunk):
        q = F.normalize(test_x[i:i + chunk].to(dev).float(), dim=1)
        sim, nn_idx = (q @ bank.T).topk(k, dim=1)          # (c, k)
        weight = torch.ones_like(sim) if temperature is None else (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=dev)
        votes.scatter_add_(1, labels[nn_idx], weight)
        preds.append(votes.argmax(1))
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device=dev)


@torch.no_grad()
def knn_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor,
                 k: int = 20, num_classes: int | None = None,
                 temperature: float | None = KNN_TEMPERATURE, chunk: int | None = None) -> float:
    """Top-1 accuracy (%) of the cosine kNN classifier (see :func:`knn_predict`)."""
    if test_x.shape[0] == 0:
        return float("nan")
    if num_classes is None:
        num_classes = int(max(train_y.max(), test_y.max())) + 1
    pred = knn_predict(train_x, train_y, test_x, num_classes, k, temperature, chunk)
    return 100.0 * int((pred == test_y.to(pred.device)).sum()) / test_x.shape[0]
