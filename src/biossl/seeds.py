"""One seed derivation: the run's seed → an independent seed per purpose.

Every random stream of a run is ``derive(train.seed, PURPOSE, *index)``: a hash of the run
seed, the purpose's name and its indices, so streams never overlap, adding a new stream
leaves every other stream unchanged, and a stream's draws do not depend on the order in
which components are built. A data-parallel run (biossl.distributed) adds the rank as an
index to the one stream that must differ per process (views) and leaves it out of those
that must agree: weights, feedback, data order, the schedule's draws and the objectives'
draws, which are made over the global batch on every process alike.

Purposes (the only ones a run uses; :data:`PURPOSES`):

* ``weights``: the encoder's and the objectives' initial weights (the global torch seed
  while they are built).
* ``data-order``, epoch: the permutation of the training images in that epoch.
* ``views``: the view recipe's generator (crops, flips, deformations, saccade positions);
  data parallel: index rank (a resume with another number of processes: rank, global step).
* ``schedule``: the schedule's own draws (the random layer-wise stage draw).
* ``feedback``: the random feedback weights B (rf, urf, sign).
* ``objective``, stage: an objective's draws (CLAPP's negatives and coin, InfoNCE's
  negatives); stage 0 for every stage unless the objective draws per stage.
* ``inverse-noise``: difference target propagation's corruption noise.
"""
from __future__ import annotations

import hashlib

import torch

PURPOSES = ("weights", "data-order", "views", "schedule", "feedback", "objective",
            "inverse-noise")


def hash63(text: str) -> int:
    """A 63-bit seed from a text (sha256): the one hash every derived seed uses."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def derive(seed: int, purpose: str, *index: int) -> int:
    """A 63-bit seed for ``purpose`` (one of :data:`PURPOSES`) and its indices."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown seed purpose {purpose!r}; known: {', '.join(PURPOSES)}")
    return hash63("/".join([str(int(seed)), purpose, *(str(int(i)) for i in index)]))


def generator(seed: int, purpose: str, *index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator on ``device`` seeded with :func:`derive`."""
    g = torch.Generator(device=device)
    g.manual_seed(derive(seed, purpose, *index))
    return g
